// The project's members: add or change a role by username, remove.
// Depends on: ../api.js, ../dom.js.

import { del, get, put } from "../api.js";
import { fill, h, toast, visuallyHidden } from "../dom.js";

export function createMembers({ pid, me }) {
  const body = h("tbody", null);
  const name = h("input", { type: "text", id: "member-name", required: true, autocomplete: "off" });
  const role = h("select", { id: "member-role" }, h("option", { value: "annotator" }, "annotator"), h("option", { value: "engineer" }, "engineer"));
  const error = h("p", { class: "error-text", role: "alert" });
  const form = h("form", { class: "form-row", id: "member-form" },
    h("div", { class: "field" }, h("label", { for: "member-name" }, "Username"), name),
    h("div", { class: "field" }, h("label", { for: "member-role" }, "Role"), role),
    h("button", { type: "submit", class: "btn" }, "Add or change"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.textContent = "";
    try {
      await put(`/api/projects/${pid}/members`, { username: name.value.trim(), role: role.value });
      form.reset();
      load();
    } catch (err) {
      error.textContent = err.message;
    }
  });

  async function remove(m) {
    try {
      await del(`/api/projects/${pid}/members/${m.user_id}`);
      load();
    } catch (err) {
      toast(err.message, { bad: true });
    }
  }

  async function load() {
    const members = await get(`/api/projects/${pid}/members`);
    fill(body, members.map((m) => h("tr", { "data-member": m.username },
      h("td", null, m.username), h("td", null, m.role),
      h("td", { class: "right" }, m.username === me ? null : h("button", {
        type: "button", class: "btn btn-small btn-quiet", "aria-label": `Remove ${m.username}`, onclick: () => remove(m),
      }, "Remove")))));
  }

  const el = [
    h("div", { class: "table-wrap" }, h("table", { id: "members-table" },
      h("thead", null, h("tr", null, h("th", { scope: "col" }, "User"), h("th", { scope: "col" }, "Role"), h("th", { scope: "col" }, visuallyHidden("Actions")))),
      body)),
    form,
    error,
  ];
  return { el, load };
}
