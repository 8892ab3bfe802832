// Sign-in.

import { ApiError, post, setCsrf } from "../api.js";
import { h } from "../dom.js";

export function renderLogin(main, ctx) {
  if (ctx.session.user) {
    ctx.navigate("#/projects");
    return null;
  }
  const error = h("p", { class: "error-text", role: "alert", id: "login-error" });
  const username = h("input", { type: "text", id: "username", name: "username", autocomplete: "username", required: true, autofocus: true });
  const password = h("input", { type: "password", id: "password", name: "password", autocomplete: "current-password", required: true });
  const submit = h("button", { type: "submit", class: "btn btn-primary" }, "Sign in");
  const form = h("form", { class: "card stack", "aria-describedby": "login-error" },
    h("div", { class: "field" }, h("label", { for: "username" }, "Username"), username),
    h("div", { class: "field" }, h("label", { for: "password" }, "Password"), password),
    error,
    h("div", { class: "row" }, submit));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.textContent = "";
    submit.disabled = true;
    try {
      const res = await post("/api/auth/login", { username: username.value.trim(), password: password.value });
      setCsrf(res.csrf_token);
      ctx.signedIn(res.user);
    } catch (err) {
      error.textContent = err instanceof ApiError && err.status === 401
        ? "Wrong username or password."
        : err instanceof ApiError && err.status === 429
          ? "Too many attempts; wait a minute and try again."
          : `Could not sign in: ${err.message}`;
      password.select();
    } finally {
      submit.disabled = false;
    }
  });
  main.append(h("div", { class: "login" }, h("h1", null, "SVP Label"), form));
  username.focus();
  return null;
}
