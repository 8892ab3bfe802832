// The engineer's project view: counts and class balance, upload with its import report, rounds
// (start, live progress, batch), the learning curve, exports and members.

import { ApiError, allPages, del, get, post, put, upload } from "../api.js";
import { drawLearningCurve } from "../chart.js";
import { enumOf } from "../schema.js";
import { fill, h, pct, progressBar, statusPill, toast, when } from "../dom.js";

// Friendly names for the strategies the API lists (/openapi.json); a new one shows by its name.
const STRATEGY_NAMES = {
  auto: "Auto (typical first, then uncertain across clusters)",
  typiclust: "Typical points (TypiClust)",
  margin_clusters: "Margin across clusters",
  least_confidence: "Least confidence",
  entropy: "Entropy",
  margin: "Margin",
  kcenter: "k-centre (core-set)",
  random: "Random",
};
const ACTIVE = new Set(["queued", "running"]);
const JOB_DONE = new Set(["succeeded", "failed", "canceled"]);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const numberOrNull = (x) => (typeof x === "number" ? x : null);

/**
 * The labels a round's proxy trained on and its accuracy on the test split, from its metrics
 * (empty until the round has selected; the accuracy is null without a labelled test split).
 */
function roundPoint(r) {
  return { labels: numberOrNull(r.metrics.labeled), acc: numberOrNull(r.metrics.proxy_test_accuracy) };
}

/** The labels a succeeded evaluation trained the target on and its test accuracy. */
function evaluationPoint(job) {
  return { labels: job.result.labels, acc: job.result.accuracy };
}

/** What a round is doing: its job's stage while it runs, then what its status means. */
function stageText(status, stage) {
  if (ACTIVE.has(status)) return stage || (status === "queued" ? "waiting for a worker" : "starting");
  return { labeling: "batch ready", completed: "labelled", failed: "—", canceled: "—" }[status] || "—";
}

function section(title, id, ...children) {
  return h("section", { class: "card", id, "aria-labelledby": `${id}-title` }, h("h2", { id: `${id}-title` }, title), ...children);
}

export async function renderProject(main, ctx, pidText) {
  const pid = Number(pidText);
  let project = await get(`/api/projects/${pid}`);
  const engineer = project.role === "engineer" || project.role === "admin";
  main.append(h("div", { class: "row", style: { marginBottom: "1rem" } },
    h("div", null,
      h("h1", { style: { marginBottom: "0.2rem" } }, project.name),
      h("p", { class: "muted small", style: { margin: 0 } }, project.description || `${project.classes.length} classes: ${project.classes.join(", ")}`)),
    h("span", { class: "spacer" }),
    h("a", { class: "btn btn-primary", href: `#/projects/${pid}/label` }, "Label this project")));
  if (!engineer) {
    main.append(h("p", { class: "notice" }, "You label in this project; the project view is for its engineers."));
    return null;
  }

  const sources = new Map(); // round id -> EventSource
  const timers = [];
  let stopped = false;

  // ---- counts and balance ----
  const stats = h("div", { class: "stats", id: "counts" });
  const balance = h("div", { id: "class-balance" });
  function renderStats() {
    const c = project.counts;
    fill(stats,
      [["items", c.items], ["labelled", c.labeled], ["unlabelled", c.unlabeled], ["rounds", c.rounds]].map(([name, n]) =>
        h("div", { class: "stat", "data-count": name }, h("b", null, n), h("span", null, name))));
  }
  async function renderBalance() {
    const counts = new Map(project.classes.map((c) => [c, 0]));
    let note = "";
    try {
      const { rows, complete } = await allPages(`/api/projects/${pid}/items`, { status: "labeled" }, 20000);
      for (const item of rows) if (item.label) counts.set(item.label, (counts.get(item.label) || 0) + 1);
      if (!complete) note = `Counted over the first ${rows.length} labelled items.`;
    } catch (err) {
      fill(balance, h("p", { class: "muted" }, `Class balance unavailable: ${err.message}`));
      return;
    }
    const max = Math.max(1, ...counts.values());
    fill(balance,
      h("div", { class: "bars", role: "table", "aria-label": "Labels per class" },
        [...counts].map(([name, n]) => [
          h("span", { role: "rowheader" }, name),
          h("div", { "aria-hidden": "true" }, h("div", { class: "bar", style: { width: `${(100 * n) / max}%` } })),
          h("span", { class: "num", role: "cell" }, n)])),
      note ? h("p", { class: "small muted" }, note) : null);
  }
  async function refreshProject() {
    project = await get(`/api/projects/${pid}`);
    renderStats();
    renderBalance();
  }

  // ---- upload ----
  const fileInput = h("input", { type: "file", id: "upload-file", name: "file", multiple: true, accept: "image/*,.zip,application/zip", required: true });
  const splitSelect = h("select", { id: "upload-split", name: "split" }, h("option", { value: "pool" }, "pool (to label)"), h("option", { value: "test" }, "test (held out)"));
  const foldersBox = h("input", { type: "checkbox", id: "upload-folders", name: "labels_from_folders" });
  const uploadBtn = h("button", { type: "submit", class: "btn btn-primary" }, "Upload");
  const uploadState = h("div", { id: "upload-state", class: "stack", "aria-live": "polite" });
  const uploadForm = h("form", { class: "stack", id: "upload-form" },
    h("div", { class: "field" }, h("label", { for: "upload-file" }, "Images or a .zip"), fileInput),
    h("div", { class: "form-row" },
      h("div", { class: "field" }, h("label", { for: "upload-split" }, "Split"), splitSelect),
      h("label", { class: "check" }, foldersBox, "Labels from folder names (", h("code", null, "class/file.png"), ")")),
    h("div", null, uploadBtn),
    uploadState);

  uploadForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!fileInput.files.length) return;
    const form = new FormData();
    for (const f of fileInput.files) form.append("file", f, f.name);
    form.append("split", splitSelect.value);
    form.append("labels_from_folders", foldersBox.checked ? "true" : "false");
    const sendBar = h("progress", { max: "100", value: "0", id: "upload-progress", "aria-label": "upload progress" });
    const sendText = h("span", { class: "small muted" }, "Sending…");
    fill(uploadState, h("div", null, h("div", { class: "small" }, "Upload"), sendBar, sendText));
    uploadBtn.disabled = true;
    let job;
    try {
      job = await upload(`/api/projects/${pid}/items`, form, (loaded, total) => {
        sendBar.value = Math.round((100 * loaded) / total);
        sendText.textContent = `${(loaded / 1048576).toFixed(1)} of ${(total / 1048576).toFixed(1)} MiB`;
      });
      sendBar.value = 100;
      sendText.textContent = "Sent.";
    } catch (err) {
      uploadBtn.disabled = false;
      uploadState.append(h("p", { class: "notice bad", role: "alert" }, `Upload failed: ${err.message}`));
      return;
    }
    uploadBtn.disabled = false;
    uploadForm.reset();
    await followImport(job);
  });

  async function followImport(job) {
    const jobBox = h("div", { id: "import-job" });
    uploadState.append(jobBox);
    while (!stopped) {
      fill(jobBox,
        h("div", { class: "small" }, `Import job #${job.id}: `, statusPill(job.status), job.stage ? ` ${job.stage}` : ""),
        progressBar(job.progress, "import progress"));
      if (JOB_DONE.has(job.status)) break;
      await sleep(500);
      try {
        job = await get(`/api/jobs/${job.id}`);
      } catch (err) {
        if (err instanceof ApiError) {
          jobBox.append(h("p", { class: "notice bad" }, `Cannot follow the import: ${err.message}`));
          return;
        }
      }
    }
    if (stopped) return;
    uploadState.append(importReport(job));
    refreshProject();
  }

  function importReport(job) {
    if (job.status !== "succeeded") {
      return h("div", { class: "notice bad", id: "import-report", role: "alert" }, `The import ${job.status}: ${job.error || "no reason given"}`);
    }
    const r = job.result;
    const rejected = r.rejected;
    // The server lists the first rejected files by name and counts them all.
    const rejectedCount = r.rejected_count;
    return h("div", { id: "import-report", class: "stack" },
      h("p", { class: rejectedCount ? "notice warn" : "notice ok" },
        `Added ${r.added}, duplicates ${r.duplicates}, rejected ${rejectedCount}.`,
        r.labeled ? ` ${r.labeled} labelled from folder names.` : ""),
      rejectedCount > rejected.length ? h("p", { class: "small muted" }, `Showing the first ${rejected.length} rejected files.`) : null,
      rejected.length
        ? h("div", { class: "table-wrap" }, h("table", { id: "rejected" },
          h("caption", { class: "small muted", style: { textAlign: "left" } }, "Rejected files"),
          h("thead", null, h("tr", null, h("th", null, "File"), h("th", null, "Reason"))),
          h("tbody", null, rejected.map((x) => h("tr", null, h("td", { class: "mono" }, x.name), h("td", null, x.reason))))))
        : null);
  }

  // ---- rounds ----
  const settings = project.settings;
  const [strategyNames, proxyNames] = await Promise.all([enumOf("RoundCreate", "strategy"), enumOf("ProxyConfig", "arch")]);
  const strategy = h("select", { id: "round-strategy", name: "strategy" },
    strategyNames.map((v) => h("option", { value: v, selected: v === settings.strategy }, STRATEGY_NAMES[v] || v)));
  const batchSize = h("input", { type: "number", id: "round-batch", min: "1", max: "100000", value: String(settings.batch_size), required: true });
  const proxy = h("select", { id: "round-proxy" }, proxyNames.map((p) => h("option", { value: p, selected: p === settings.default_proxy },
    p === "linear" ? `linear on ${settings.backbone || "a backbone"}` : p)));
  const epochs = h("input", { type: "number", id: "round-epochs", min: "1", max: "500", value: String(settings.proxy_epochs), required: true });
  // A linear head trains in seconds on frozen embeddings: it has no epochs to set.
  const syncEpochs = () => { epochs.disabled = proxy.value === "linear"; };
  proxy.addEventListener("change", syncEpochs);
  syncEpochs();
  const supersede = h("input", { type: "checkbox", id: "round-supersede" });
  const seed = h("input", { type: "number", id: "round-seed", min: "0", placeholder: "random" });
  const roundError = h("p", { class: "error-text", role: "alert" });
  const startBtn = h("button", { type: "submit", class: "btn btn-primary" }, "Start round");
  const roundForm = h("form", { id: "round-form", class: "stack" },
    h("div", { class: "form-row" },
      h("div", { class: "field" }, h("label", { for: "round-strategy" }, "Strategy"), strategy),
      h("div", { class: "field" }, h("label", { for: "round-batch" }, "Batch size"), batchSize),
      h("div", { class: "field" }, h("label", { for: "round-proxy" }, "Proxy"), proxy),
      h("div", { class: "field" }, h("label", { for: "round-epochs" }, "Epochs"), epochs),
      h("div", { class: "field" }, h("label", { for: "round-seed" }, "Seed"), seed)),
    h("label", { class: "small" }, supersede, " Close a batch still being labelled (its open items return to the pool)"),
    roundError,
    h("div", null, startBtn));
  roundForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    roundError.textContent = "";
    startBtn.disabled = true;
    try {
      const body = {
        strategy: strategy.value,
        batch_size: Number(batchSize.value),
        proxy: proxy.value === "linear" ? { arch: "linear" } : { arch: proxy.value, epochs: Number(epochs.value) },
        supersede: supersede.checked,
      };
      if (seed.value !== "") body.seed = Number(seed.value);
      await post(`/api/projects/${pid}/rounds`, body);
      await loadRounds();
    } catch (err) {
      roundError.textContent = err instanceof ApiError && err.status === 409
        ? `Not now: ${err.detail}` : err.message;
    } finally {
      startBtn.disabled = false;
    }
  });

  const roundsBody = h("tbody", null);
  const roundsTable = h("div", { class: "table-wrap" }, h("table", { id: "rounds" },
    h("thead", null, h("tr", null,
      h("th", null, "#"), h("th", null, "Status"), h("th", null, "Strategy"), h("th", { class: "num" }, "Batch"),
      h("th", null, "Stage"), h("th", null, "Progress"), h("th", { class: "num" }, "Labels"), h("th", { class: "num" }, "Proxy acc."),
      h("th", null, "Started"), h("th", null, ""))),
    roundsBody));
  let rounds = [];
  let shownBatch = null;

  function roundRow(r) {
    const point = roundPoint(r);
    const tr = h("tr", { "data-round": r.id, "data-status": r.status },
      h("td", null, r.number),
      h("td", { class: "round-status" }, statusPill(r.status)),
      h("td", null, r.strategy),
      h("td", { class: "num" }, r.batch_size),
      h("td", { class: "round-stage" }, stageText(r.status, r.stage)),
      h("td", { class: "round-progress" }, progressBar(r.progress, `round ${r.number} progress`)),
      h("td", { class: "num" }, point.labels ?? "—"),
      h("td", { class: "num" }, pct(point.acc)),
      h("td", { class: "nowrap small" }, when(r.started_at || r.created_at)),
      h("td", { class: "nowrap" },
        ["labeling", "completed"].includes(r.status)
          ? h("button", { type: "button", class: "btn btn-small", onclick: () => showBatch(r) }, "Batch") : null,
        ["queued", "running", "labeling"].includes(r.status)
          ? h("button", { type: "button", class: "btn btn-small btn-danger", onclick: () => cancelRound(r) }, "Cancel") : null));
    if (r.error && r.status === "failed") {
      return [tr, h("tr", { class: "round-error" }, h("td", { colspan: "10", class: "error-text small" }, `Round ${r.number} failed: ${r.error}`))];
    }
    return tr;
  }

  async function cancelRound(r) {
    if (!confirm(`Cancel round ${r.number}?`)) return;
    try {
      await post(`/api/rounds/${r.id}/cancel`);
    } catch (err) {
      toast(`Could not cancel: ${err.message}`, { bad: true });
    }
    loadRounds();
  }

  function follow(r) {
    if (sources.has(r.id) || !ACTIVE.has(r.status)) return;
    const es = new EventSource(`/api/rounds/${r.id}/events`);
    sources.set(r.id, es);
    es.onmessage = (ev) => {
      let data;
      try {
        data = JSON.parse(ev.data);
      } catch {
        return;
      }
      const row = roundsBody.querySelector(`tr[data-round="${r.id}"]`);
      if (row) {
        row.dataset.status = data.status;
        fill(row.querySelector(".round-status"), statusPill(data.status));
        fill(row.querySelector(".round-stage"), stageText(data.status, data.stage));
        fill(row.querySelector(".round-progress"), progressBar(data.progress, `round ${r.number} progress`));
      }
      if (!ACTIVE.has(data.status)) {
        // The server closes the stream now; close ours too so it does not reconnect.
        es.close();
        sources.delete(r.id);
        loadRounds();
        refreshProject();
      }
    };
    es.onerror = () => {
      if (es.readyState === EventSource.CLOSED) sources.delete(r.id);
    };
  }

  async function loadRounds() {
    rounds = await get(`/api/projects/${pid}/rounds`);
    fill(roundsBody, rounds.length ? rounds.map(roundRow) : h("tr", null, h("td", { colspan: "10", class: "muted" }, "No rounds yet.")));
    for (const r of rounds) follow(r);
    drawCurve();
    const open = rounds.find((r) => r.status === "labeling") || rounds.find((r) => r.status === "completed");
    if (open && (!shownBatch || shownBatch.id === open.id || !rounds.some((r) => r.id === shownBatch.id))) showBatch(open);
  }

  // ---- batch ----
  const batchBox = h("div", { id: "batch" }, h("p", { class: "muted" }, "The batch of the latest round appears here."));
  async function showBatch(r) {
    shownBatch = r;
    let entries;
    try {
      entries = await get(`/api/rounds/${r.id}/selection`);
    } catch (err) {
      fill(batchBox, h("p", { class: "error-text" }, err.message));
      return;
    }
    fill(batchBox,
      h("p", { class: "small muted" }, `Round ${r.number}: ${entries.length} items, ranked by ${r.strategy} score.`),
      h("div", { class: "thumbs" }, entries.slice(0, 200).map((e) => h("figure", { class: "thumb", "data-item-id": e.item_id },
        h("img", { src: e.image_url, alt: e.name, width: "96", height: "96" }),
        h("figcaption", null,
          h("div", { class: "mono" }, `#${e.rank} · ${e.score.toFixed(3)}`),
          h("div", null, e.suggestion && e.suggestion.label ? `${e.suggestion.label} ${pct(e.suggestion.confidence)}` : "—"))))),
      entries.length > 200 ? h("p", { class: "small muted" }, `Showing the first 200 of ${entries.length}.`) : null);
  }

  // ---- learning curve ----
  const chartBox = h("div", { class: "chart-box", id: "learning-curve" });
  const chartNote = h("p", { class: "chart-legend-note" });
  let evaluations = [];
  async function loadEvaluations() {
    try {
      evaluations = await get(`/api/projects/${pid}/evaluations`);
    } catch {
      evaluations = [];
    }
    drawCurve();
  }
  function drawCurve() {
    // One line per strategy: the curve is how a team compares them on its own data.
    const byStrategy = new Map();
    for (const r of [...rounds].sort((a, b) => a.number - b.number)) {
      const p = roundPoint(r);
      if (p.labels === null || p.acc === null) continue;
      const name = `${r.strategy} (${r.proxy.arch})`;
      if (!byStrategy.has(name)) byStrategy.set(name, []);
      byStrategy.get(name).push(p);
    }
    const targetPoints = evaluations.filter((j) => j.status === "succeeded").map(evaluationPoint).filter((p) => p.labels !== null && p.acc !== null);
    const lines = [...byStrategy].map(([name, points]) => ({ name, points }));
    if (targetPoints.length) lines.push({ name: "target", points: targetPoints, target: true });
    if (!lines.length) {
      fill(chartBox, h("p", { class: "muted" }, "The curve appears once a round has measured its proxy on the labelled test split."));
      chartNote.textContent = "";
      return;
    }
    drawLearningCurve(chartBox, lines);
    const proxyCount = [...byStrategy.values()].reduce((n, pts) => n + pts.length, 0);
    chartNote.textContent = `${proxyCount} round${proxyCount === 1 ? "" : "s"} with a proxy accuracy${targetPoints.length ? `, ${targetPoints.length} target evaluation${targetPoints.length === 1 ? "" : "s"}` : ""}. Accuracy is on the labelled test split.`;
  }

  // ---- export ----
  const exportBox = h("div", { class: "row", id: "export" },
    ["csv", "jsonl", "imagefolder"].map((f) => h("a", {
      class: "btn", href: `/api/projects/${pid}/export?format=${f}`, download: "", "data-format": f,
    }, f === "imagefolder" ? "Image folders (.zip)" : f.toUpperCase())));

  // ---- members ----
  const membersBody = h("tbody", null);
  const memberName = h("input", { type: "text", id: "member-name", required: true, autocomplete: "off" });
  const memberRole = h("select", { id: "member-role" }, h("option", { value: "annotator" }, "annotator"), h("option", { value: "engineer" }, "engineer"));
  const memberError = h("p", { class: "error-text", role: "alert" });
  const memberForm = h("form", { class: "form-row", id: "member-form" },
    h("div", { class: "field" }, h("label", { for: "member-name" }, "Username"), memberName),
    h("div", { class: "field" }, h("label", { for: "member-role" }, "Role"), memberRole),
    h("button", { type: "submit", class: "btn" }, "Add or change"));
  memberForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    memberError.textContent = "";
    try {
      await put(`/api/projects/${pid}/members`, { username: memberName.value.trim(), role: memberRole.value });
      memberForm.reset();
      loadMembers();
    } catch (err) {
      memberError.textContent = err.message;
    }
  });
  async function loadMembers() {
    const members = await get(`/api/projects/${pid}/members`);
    fill(membersBody, members.map((m) => h("tr", null,
      h("td", null, m.username), h("td", null, m.role),
      h("td", { class: "right" }, m.username === ctx.session.user.username ? null : h("button", {
        type: "button", class: "btn btn-small btn-quiet", "aria-label": `Remove ${m.username}`,
        onclick: async () => {
          try {
            await del(`/api/projects/${pid}/members/${m.user_id}`);
            loadMembers();
          } catch (err) {
            toast(err.message, { bad: true });
          }
        },
      }, "Remove")))));
  }

  main.append(h("div", { class: "stack" },
    stats,
    h("div", { class: "grid-2" },
      section("Class balance", "balance", balance),
      section("Upload images", "upload", uploadForm)),
    section("Rounds", "rounds-section", roundForm, roundsTable),
    h("div", { class: "grid-2" },
      section("Learning curve", "curve", chartBox, chartNote),
      section("Batch", "batch-section", batchBox)),
    h("div", { class: "grid-2" },
      section("Export labels", "export-section", h("p", { class: "small muted" }, "Every labelled item with its current label."), exportBox),
      section("Members", "members", h("div", { class: "table-wrap" }, h("table", null,
        h("thead", null, h("tr", null, h("th", null, "User"), h("th", null, "Role"), h("th", null, ""))), membersBody)), memberForm, memberError))));

  renderStats();
  renderBalance();
  await Promise.all([loadRounds(), loadMembers().catch(() => {}), loadEvaluations()]);
  // Counts move as annotators label; a light refresh keeps them honest.
  timers.push(setInterval(() => {
    if (document.visibilityState === "visible") refreshProject().catch(() => {});
  }, 20000));

  return () => {
    stopped = true;
    for (const es of sources.values()) es.close();
    for (const t of timers) clearInterval(t);
  };
}
