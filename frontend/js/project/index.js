// The engineer's project view (#/projects/:id): puts the sections together. Each section is its
// own module in this folder and knows none of the others; this file is the only one that wires
// them (a round that stops refreshes the counts, a loaded list of rounds feeds the curve and the
// batch). Modules here depend on ../api.js, ../dom.js and the like, never on each other, except
// points.js (what the curve plots), which rounds.js and curve.js share.

import { get } from "../api.js";
import { h, section } from "../dom.js";
import { createBatch } from "./batch.js";
import { createCounts } from "./counts.js";
import { createCurve } from "./curve.js";
import { createExports } from "./exports.js";
import { createMembers } from "./members.js";
import { createRounds } from "./rounds.js";
import { createUpload } from "./upload.js";

// Counts move as annotators label; a light refresh keeps them honest.
const REFRESH_MS = 20000;

/** What a view's sections share to stop with it: `stopped`, and what to run at the end. */
function lifetime() {
  const stops = [];
  return {
    stopped: false,
    onStop(fn) {
      stops.push(fn);
    },
    stop() {
      this.stopped = true;
      for (const fn of stops) fn();
    },
  };
}

export async function renderProject(main, ctx, pidText) {
  const pid = Number(pidText);
  const project = await get(`/api/projects/${pid}`);
  const engineer = project.role === "engineer" || project.role === "admin";
  main.append(h("div", { class: "row", style: { marginBottom: "1rem" } },
    h("div", null,
      h("h1", { style: { marginBottom: "0.2rem" } }, project.name, " ",
        h("span", { class: "kind-badge", id: "project-kind" }, project.kind === "text" ? "texts" : "images")),
      h("p", { class: "muted small", style: { margin: 0 } }, project.description || `${project.classes.length} classes: ${project.classes.join(", ")}`)),
    h("span", { class: "spacer" }),
    h("a", { class: "btn btn-primary", href: `#/projects/${pid}/label` }, "Label this project")));
  if (!engineer) {
    main.append(h("p", { class: "notice" }, "You label in this project; the project view is for its engineers."));
    return null;
  }

  const life = lifetime();
  const counts = createCounts({ pid });
  const refresh = async () => counts.render(await get(`/api/projects/${pid}`));
  const batch = createBatch();
  const curve = createCurve({ pid });
  const upload = createUpload({ pid, life, kind: project.kind, onImported: () => refresh().catch(() => {}) });
  const rounds = await createRounds({
    pid,
    settings: project.settings,
    kind: project.kind,
    life,
    onRounds: (list) => {
      curve.setRounds(list);
      batch.follow(list);
    },
    onShowBatch: (r) => batch.show(r),
    onSettled: () => refresh().catch(() => {}),
  });
  const members = createMembers({ pid, me: ctx.session.user.username });

  main.append(h("div", { class: "stack" },
    counts.stats,
    h("div", { class: "grid-2" },
      section("Class balance", "balance", counts.balance),
      section(project.kind === "text" ? "Upload texts" : "Upload images", "upload", upload.el)),
    section("Rounds", "rounds-section", rounds.form, rounds.table),
    h("div", { class: "grid-2" },
      section("Learning curve", "curve", curve.box, curve.note),
      section("Batch", "batch-section", batch.el)),
    h("div", { class: "grid-2" },
      section("Export labels", "export-section", createExports({ pid, kind: project.kind })),
      section("Members", "members", members.el))));

  await Promise.all([counts.render(project), rounds.load(), members.load().catch(() => {}), curve.loadEvaluations()]);
  const timer = setInterval(() => {
    if (document.visibilityState === "visible") refresh().catch(() => {});
  }, REFRESH_MS);
  life.onStop(() => clearInterval(timer));
  return () => life.stop();
}
