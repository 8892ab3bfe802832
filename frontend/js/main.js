// The single-page shell: who is signed in, the hash router, the top bar.

import { ApiError, get, onUnauthenticated, post, setCsrf } from "./api.js";
import { fill, h, toast } from "./dom.js";
import { renderAdmin } from "./views/admin.js";
import { renderLabel } from "./views/label.js";
import { renderLogin } from "./views/login.js";
import { renderProject } from "./project/index.js";
import { renderProjects } from "./views/projects.js";

const main = document.getElementById("main");
const session = { user: null };
let cleanup = null;

const ROUTES = [
  { re: /^#\/login$/, view: renderLogin, open: true },
  { re: /^#\/projects$/, view: renderProjects, nav: "projects" },
  { re: /^#\/projects\/(\d+)$/, view: renderProject, nav: "projects" },
  { re: /^#\/projects\/(\d+)\/label$/, view: renderLabel, nav: "projects" },
  { re: /^#\/admin$/, view: renderAdmin, nav: "admin" },
];

function navigate(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function showTopbar() {
  const bar = document.getElementById("topbar");
  const user = session.user;
  bar.hidden = !user;
  if (!user) return;
  document.getElementById("who-name").textContent = user.username;
  document.getElementById("who-role").textContent = user.role;
  bar.querySelector('[data-nav="admin"]').hidden = user.role !== "admin";
}

function markNav(nav) {
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === nav) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

let routed = null; // the hash of the view on screen

/** Focus an element of the page (the skip link's target), scrolled below the sticky bar. */
function focusTarget(el) {
  el.focus({ preventScroll: true });
  el.scrollIntoView({ block: "start" });
}

async function route() {
  // A hash that is no route ("#main": the skip link, or an anchor typed by hand) is a place in
  // the page on screen, not a page to go to: focus it and put the route's hash back.
  if (location.hash && !location.hash.startsWith("#/") && routed) {
    const target = document.getElementById(decodeURIComponent(location.hash.slice(1)));
    history.replaceState(null, "", routed);
    if (target) focusTarget(target);
    return;
  }
  const hash = location.hash.startsWith("#/") ? location.hash : "#/projects";
  routed = hash;
  const match = ROUTES.map((r) => [r, hash.match(r.re)]).find(([, m]) => m);
  if (cleanup) {
    try {
      cleanup();
    } catch (err) {
      console.error(err);
    }
    cleanup = null;
  }
  if (!match) {
    navigate("#/projects");
    return;
  }
  const [r, m] = match;
  if (!r.open && !session.user) {
    sessionStorage.setItem("svp.after-login", hash);
    navigate("#/login");
    return;
  }
  markNav(r.nav);
  fill(main);
  main.className = "";
  const ctx = { session, navigate, signedIn, main };
  try {
    cleanup = (await r.view(main, ctx, ...m.slice(1))) || null;
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return;
    fill(main, h("div", { class: "notice bad", role: "alert" },
      err instanceof ApiError && err.status === 404 ? "Not found, or not yours to see." : `Could not load this page: ${err.message}`));
  }
  // Move focus to the page so keyboard and screen-reader users start at its top.
  if (!main.contains(document.activeElement)) main.focus({ preventScroll: true });
}

function signedIn(user) {
  session.user = user;
  showTopbar();
  const next = sessionStorage.getItem("svp.after-login");
  sessionStorage.removeItem("svp.after-login");
  navigate(next && next !== "#/login" ? next : "#/projects");
}

async function signOut() {
  try {
    await post("/api/auth/logout");
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) toast(`Sign-out failed: ${err.message}`, { bad: true });
  }
  setCsrf(null);
  session.user = null;
  showTopbar();
  navigate("#/login");
}

onUnauthenticated(() => {
  if (!session.user) return;
  session.user = null;
  setCsrf(null);
  showTopbar();
  sessionStorage.setItem("svp.after-login", location.hash);
  toast("Your session ended; please sign in again.");
  navigate("#/login");
});

document.getElementById("sign-out").addEventListener("click", signOut);
// The skip link moves focus to the content; it must not change the hash the router reads.
document.querySelector(".skip-link").addEventListener("click", (e) => {
  e.preventDefault();
  focusTarget(main);
});
window.addEventListener("hashchange", route);

async function boot() {
  try {
    session.user = await get("/api/me");
  } catch {
    session.user = null;
  }
  showTopbar();
  if (session.user && (!location.hash || location.hash === "#/login")) location.hash = "#/projects";
  else route();
}

boot();
