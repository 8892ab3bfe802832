// The projects the user can see, with what their role lets them do in each.

import { ApiError, get, post } from "../api.js";
import { h } from "../dom.js";

const canEngineer = (role) => role === "engineer" || role === "admin";

function projectCard(p) {
  const labelled = p.counts.labeled;
  const items = p.counts ? p.counts.items : p.items;
  const rounds = p.counts ? p.counts.rounds : p.rounds;
  return h("article", { class: "card project-card", "data-project": p.id },
    h("h2", null, p.name),
    p.description ? h("p", { class: "muted small" }, p.description) : null,
    h("div", { class: "counts" },
      h("div", { class: "count" }, h("b", null, items), h("span", null, "items")),
      h("div", { class: "count" }, h("b", null, labelled), h("span", null, "labelled")),
      h("div", { class: "count" }, h("b", null, rounds), h("span", null, "rounds"))),
    h("p", { class: "small muted" }, `${p.kind === "text" ? "Texts" : "Images"} · ${p.classes.length} classes · you are ${p.role === "admin" ? "an admin" : `an ${p.role}`}`),
    h("div", { class: "row" },
      h("a", { class: "btn btn-primary", href: `#/projects/${p.id}/label` }, "Label"),
      canEngineer(p.role) ? h("a", { class: "btn", href: `#/projects/${p.id}` }, "Open project") : null));
}

function newProjectForm(onCreated) {
  const name = h("input", { type: "text", id: "new-name", required: true, maxlength: "200" });
  const classes = h("textarea", { id: "new-classes", required: true, placeholder: "cat, dog, bird" });
  // The kind is fixed once the project is made (the server refuses a change): said beside it.
  const kind = h("select", { id: "new-kind", name: "kind", "aria-describedby": "new-kind-hint" },
    h("option", { value: "image" }, "Images"),
    h("option", { value: "text" }, "Texts"));
  const kindHint = h("span", { class: "hint", id: "new-kind-hint" }, "fixed once the project is made; texts come as .csv, .jsonl, .txt or a .zip of them");
  const error = h("p", { class: "error-text", role: "alert" });
  const form = h("form", { class: "card stack", id: "new-project" },
    h("h2", null, "New project"),
    h("div", { class: "field" }, h("label", { for: "new-name" }, "Name"), name),
    h("div", { class: "field" }, h("label", { for: "new-kind" }, "What is labelled ", kindHint), kind),
    h("div", { class: "field" },
      h("label", { for: "new-classes" }, "Classes ", h("span", { class: "hint" }, "in order, separated by commas or new lines")),
      classes),
    error,
    h("button", { type: "submit", class: "btn btn-primary" }, "Create project"));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.textContent = "";
    const list = classes.value.split(/[\n,]/).map((c) => c.trim()).filter(Boolean);
    try {
      const p = await post("/api/projects", { name: name.value.trim(), classes: list, kind: kind.value });
      onCreated(p);
    } catch (err) {
      error.textContent = err instanceof ApiError ? err.detail : err.message;
    }
  });
  return form;
}

export async function renderProjects(main, ctx) {
  const user = ctx.session.user;
  main.append(h("h1", null, "Projects"));
  const projects = await get("/api/projects");
  if (!projects.length) {
    main.append(h("p", { class: "notice" }, canEngineer(user.role)
      ? "No projects yet. Create one below."
      : "You are not a member of any project yet. Ask an engineer to add you."));
  } else {
    main.append(h("div", { class: "project-list" }, projects.map(projectCard)));
  }
  if (canEngineer(user.role)) {
    main.append(h("div", { style: { maxWidth: "34rem", marginTop: "1.5rem" } },
      newProjectForm((p) => ctx.navigate(`#/projects/${p.id}`))));
  }
  return null;
}
