// The admin's monitor: every job (with retry and cancel, and a failed one's error), the workers
// and the broker, and users with their roles.

import { ApiError, get, patch, post } from "../api.js";
import { fill, h, progressBar, section, statusPill, toast, visuallyHidden, when } from "../dom.js";

const KINDS = ["import", "round", "coreset", "evaluate"];
const STATUSES = ["queued", "running", "succeeded", "failed", "canceled"];
const ROLES = ["annotator", "engineer", "admin"];
const POLL_MS = 2000;

export async function renderAdmin(main, ctx) {
  if (ctx.session.user.role !== "admin") {
    main.append(h("div", { class: "notice bad", role: "alert", id: "forbidden" },
      h("h1", null, "Admins only"),
      h("p", null, "The job monitor and user management are for admins. ",
        h("a", { href: "#/projects" }, "Back to your projects"), ".")));
    return null;
  }
  const timers = [];
  const projectNames = new Map();
  try {
    for (const p of await get("/api/projects")) projectNames.set(p.id, p.name);
  } catch {
    // names are a nicety; ids still show
  }

  // ---- health ----
  const healthBox = h("div", { id: "health" });
  async function loadHealth() {
    let health;
    let httpStatus = 200;
    try {
      const res = await fetch("/api/health", { cache: "no-store" });
      httpStatus = res.status;
      health = await res.json();
    } catch {
      fill(healthBox, h("p", { class: "notice bad" }, "The server cannot be reached."));
      return;
    }
    const workers = health.workers;
    const dbOk = health.database === "ok";
    const broker = health.broker;
    const brokerOk = broker.startsWith("ok") || broker === "inline";
    fill(healthBox,
      h("div", { class: "stats" },
        h("div", { class: "stat", "data-health": "database" }, h("b", null, statusPill(dbOk ? "ok" : "failed")), h("span", null, `database: ${health.database}`)),
        h("div", { class: "stat", "data-health": "broker" }, h("b", null, statusPill(brokerOk ? "ok" : broker === "unknown" ? "unknown" : "failed")), h("span", null, `broker: ${health.broker}`)),
        h("div", { class: "stat", "data-health": "workers" }, h("b", null, workers.length), h("span", null, workers.length === 1 ? "worker alive" : "workers alive"))),
      workers.length
        ? h("div", { class: "table-wrap" }, h("table", { id: "workers" },
          h("thead", null, h("tr", null, h("th", null, "Worker"), h("th", null, "Host"), h("th", { class: "num" }, "PID"), h("th", null, "Last seen"))),
          h("tbody", null, workers.map((w) => h("tr", null,
            h("td", { class: "mono" }, w.name), h("td", null, w.hostname ?? "—"), h("td", { class: "num" }, w.pid ?? "—"), h("td", null, when(w.last_seen)))))))
        : h("p", { class: httpStatus === 200 ? "notice warn" : "notice bad" }, "No worker is alive: rounds and imports wait in the queue."));
  }

  // ---- jobs ----
  const statusFilter = h("select", { id: "job-status" }, h("option", { value: "" }, "any status"), STATUSES.map((s) => h("option", { value: s }, s)));
  const kindFilter = h("select", { id: "job-kind" }, h("option", { value: "" }, "any kind"), KINDS.map((k) => h("option", { value: k }, k)));
  const jobsBody = h("tbody", null);
  const jobsNote = h("p", { class: "small muted", "aria-live": "polite" });
  async function loadJobs() {
    const q = new URLSearchParams();
    if (statusFilter.value) q.set("status", statusFilter.value);
    if (kindFilter.value) q.set("kind", kindFilter.value);
    let jobs;
    try {
      jobs = await get(`/api/jobs${q.size ? `?${q}` : ""}`);
    } catch (err) {
      jobsNote.textContent = `Could not load jobs: ${err.message}`;
      return;
    }
    jobsNote.textContent = `${jobs.length} job${jobs.length === 1 ? "" : "s"} · refreshed ${new Date().toLocaleTimeString()}`;
    // Keep an open error <details> open across refreshes.
    const open = new Set([...jobsBody.querySelectorAll("details[open]")].map((d) => d.dataset.job));
    fill(jobsBody, jobs.length ? jobs.map((j) => jobRow(j, open)) : h("tr", null, h("td", { colspan: "9", class: "muted" }, "No jobs.")));
  }
  function jobRow(j, open) {
    const project = j.project_id == null ? "—" : projectNames.get(j.project_id) || `#${j.project_id}`;
    const actions = [];
    if (j.status === "failed" || j.status === "canceled") {
      actions.push(h("button", { type: "button", class: "btn btn-small", onclick: () => act(j, "retry"), "aria-label": `Retry job ${j.id}` }, "Retry"));
    }
    if (j.status === "queued" || j.status === "running") {
      actions.push(h("button", { type: "button", class: "btn btn-small btn-danger", onclick: () => act(j, "cancel"), "aria-label": `Cancel job ${j.id}` }, "Cancel"));
    }
    const rows = [h("tr", { "data-job": j.id, "data-status": j.status },
      h("td", { class: "num" }, j.id),
      h("td", null, j.kind),
      h("td", null, project),
      h("td", null, statusPill(j.status),
        j.cancel_requested && !["canceled", "failed", "succeeded"].includes(j.status) ? h("div", { class: "small muted" }, "stopping…") : null,
        j.attempts > 1 ? h("div", { class: "small muted" }, `attempt ${j.attempts}`) : null),
      h("td", null, j.stage || "—"),
      h("td", null, progressBar(j.progress, `job ${j.id} progress`)),
      h("td", { class: "mono small" }, j.worker || "—"),
      h("td", { class: "small nowrap" },
        h("div", null, "created ", when(j.created_at)),
        j.started_at ? h("div", null, "started ", when(j.started_at)) : null,
        j.finished_at ? h("div", null, "finished ", when(j.finished_at)) : null),
      h("td", { class: "nowrap" }, actions))];
    if (j.error) {
      // A traceback ends with the exception and its message: that line says what went wrong.
      const lines = j.error.split("\n").filter((l) => l.trim());
      const firstLine = (lines[0] || "").startsWith("Traceback") ? lines[lines.length - 1] : lines[0] || j.error;
      rows.push(h("tr", { class: "job-error", "data-job-error": j.id },
        h("td", { colspan: "9" },
          h("details", { "data-job": j.id, open: open.has(String(j.id)) },
            h("summary", { class: "error-text" }, `Error: ${firstLine.slice(0, 200)}`),
            h("pre", { class: "mono small", style: { whiteSpace: "pre-wrap", margin: "0.4rem 0 0" } }, j.error)))));
    }
    return rows;
  }
  async function act(job, what) {
    try {
      await post(`/api/jobs/${job.id}/${what}`);
      toast(what === "retry" ? `Job ${job.id} sent again.` : `Job ${job.id}: cancel requested.`);
    } catch (err) {
      toast(`Could not ${what} job ${job.id}: ${err.message}`, { bad: true });
    }
    loadJobs();
  }
  statusFilter.addEventListener("change", loadJobs);
  kindFilter.addEventListener("change", loadJobs);

  // ---- users ----
  const usersBody = h("tbody", null);
  async function loadUsers() {
    const users = await get("/api/users");
    fill(usersBody, users.map((u) => {
      const role = h("select", { "aria-label": `Role of ${u.username}`, disabled: u.id === ctx.session.user.id },
        ROLES.map((r) => h("option", { value: r, selected: r === u.role }, r)));
      role.addEventListener("change", () => update(u, { role: role.value }));
      const active = h("input", { type: "checkbox", checked: u.active, "aria-label": `${u.username} may sign in`, disabled: u.id === ctx.session.user.id });
      active.addEventListener("change", () => update(u, { active: active.checked }));
      return h("tr", { "data-user": u.username }, h("td", null, u.username), h("td", null, role), h("td", null, active), h("td", { class: "small" }, when(u.created_at)));
    }));
  }
  async function update(u, body) {
    try {
      await patch(`/api/users/${u.id}`, body);
      toast(`${u.username} updated.`);
    } catch (err) {
      toast(`Could not update ${u.username}: ${err.message}`, { bad: true });
    }
    loadUsers();
  }
  const newName = h("input", { type: "text", id: "user-name", required: true, autocomplete: "off", pattern: "[A-Za-z0-9_.@-]+" });
  const newPass = h("input", { type: "password", id: "user-password", required: true, minlength: "8", autocomplete: "new-password" });
  const newRole = h("select", { id: "user-role" }, ROLES.map((r) => h("option", { value: r }, r)));
  const userError = h("p", { class: "error-text", role: "alert" });
  const userForm = h("form", { class: "form-row", id: "user-form" },
    h("div", { class: "field" }, h("label", { for: "user-name" }, "Username"), newName),
    h("div", { class: "field" }, h("label", { for: "user-password" }, "Password ", h("span", { class: "hint" }, "8+ characters")), newPass),
    h("div", { class: "field" }, h("label", { for: "user-role" }, "Role"), newRole),
    h("button", { type: "submit", class: "btn" }, "Add user"));
  userForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    userError.textContent = "";
    try {
      await post("/api/users", { username: newName.value.trim(), password: newPass.value, role: newRole.value });
      userForm.reset();
      loadUsers();
    } catch (err) {
      userError.textContent = err instanceof ApiError ? err.detail : err.message;
    }
  });

  main.append(h("h1", null, "Monitor"), h("div", { class: "stack" },
    section("Workers and broker", "health-section", healthBox),
    section("Jobs", "jobs-section",
      h("div", { class: "form-row filters", style: { marginBottom: "0.6rem" } },
        h("div", { class: "field" }, h("label", { for: "job-status" }, "Status"), statusFilter),
        h("div", { class: "field" }, h("label", { for: "job-kind" }, "Kind"), kindFilter)),
      h("div", { class: "table-wrap" }, h("table", { id: "jobs" },
        h("thead", null, h("tr", null,
          h("th", { class: "num" }, "Job"), h("th", null, "Kind"), h("th", null, "Project"), h("th", null, "Status"),
          h("th", null, "Stage"), h("th", null, "Progress"), h("th", null, "Worker"), h("th", null, "Times"), h("th", null, visuallyHidden("Actions")))),
        jobsBody)),
      jobsNote),
    section("Users and roles", "users-section",
      h("div", { class: "table-wrap" }, h("table", { id: "users" },
        h("thead", null, h("tr", null, h("th", null, "User"), h("th", null, "Role"), h("th", null, "Active"), h("th", null, "Created"))),
        usersBody)),
      userForm, userError)));

  await Promise.all([loadHealth(), loadJobs(), loadUsers()]);
  timers.push(setInterval(() => {
    if (document.visibilityState !== "visible") return;
    loadJobs();
    loadHealth();
  }, POLL_MS));
  return () => timers.forEach(clearInterval);
}
