// The start-a-round form and the rounds table: status, stage and progress live from each running
// round's event stream, labels and proxy accuracy from its metrics, cancel.
// Depends on: ../api.js, ../dom.js, ../schema.js, ./points.js. Tells index.js through callbacks:
// `onRounds(rounds)` after each load, `onShowBatch(round)` for a row's Batch button, `onSettled()`
// when a running round stops.

import { ApiError, get, post } from "../api.js";
import { fill, h, pct, progressBar, statusPill, toast, visuallyHidden, when } from "../dom.js";
import { enumOf } from "../schema.js";
import { roundPoint } from "./points.js";

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
// The proxies that train on texts (the server refuses the others with the reason, app/projects/
// kinds.py); an image project offers every other one the API lists.
const TEXT_PROXIES = new Set(["linear", "fasttext"]);
const fitsKind = (kind) => (p) => (kind === "text" ? TEXT_PROXIES.has(p) : p !== "fasttext");
const COLUMNS = 10;

/** What a round is doing: its job's stage while it runs, then what its status means. */
function stageText(status, stage) {
  if (ACTIVE.has(status)) return stage || (status === "queued" ? "waiting for a worker" : "starting");
  return { labeling: "batch ready", completed: "labelled", failed: "—", canceled: "—" }[status] || "—";
}

export async function createRounds({ pid, settings, kind = "image", life, onRounds, onShowBatch, onSettled }) {
  const sources = new Map(); // round id -> EventSource
  life.onStop(() => {
    for (const es of sources.values()) es.close();
  });

  // ---- the form ----
  const [strategyNames, proxyNames] = await Promise.all([enumOf("RoundCreate", "strategy"), enumOf("ProxyConfig", "arch")]);
  const strategy = h("select", { id: "round-strategy", name: "strategy" },
    strategyNames.map((v) => h("option", { value: v, selected: v === settings.strategy }, STRATEGY_NAMES[v] || v)));
  const batchSize = h("input", { type: "number", id: "round-batch", min: "1", max: "100000", value: String(settings.batch_size), required: true });
  const proxy = h("select", { id: "round-proxy" }, proxyNames.filter(fitsKind(kind)).map((p) => h("option", { value: p, selected: p === settings.default_proxy },
    p === "linear" ? `linear on ${settings.backbone || "a backbone"}` : p)));
  const epochs = h("input", { type: "number", id: "round-epochs", min: "1", max: "500", value: String(settings.proxy_epochs), required: true });
  // A linear head trains in seconds on frozen embeddings: it has no epochs to set. fastText has
  // its own default (many cheap passes), from the project's settings.
  const syncEpochs = () => {
    epochs.disabled = proxy.value === "linear";
    const own = proxy.value === "fasttext" ? settings.fasttext_epochs : settings.proxy_epochs;
    if (own) epochs.value = String(own);
  };
  proxy.addEventListener("change", syncEpochs);
  syncEpochs();
  const supersede = h("input", { type: "checkbox", id: "round-supersede" });
  const seed = h("input", { type: "number", id: "round-seed", min: "0", placeholder: "random" });
  const roundError = h("p", { class: "error-text", role: "alert" });
  const startBtn = h("button", { type: "submit", class: "btn btn-primary" }, "Start round");
  const form = h("form", { id: "round-form", class: "stack" },
    h("div", { class: "form-row" },
      h("div", { class: "field" }, h("label", { for: "round-strategy" }, "Strategy"), strategy),
      h("div", { class: "field" }, h("label", { for: "round-batch" }, "Batch size"), batchSize),
      h("div", { class: "field" }, h("label", { for: "round-proxy" }, "Proxy"), proxy),
      h("div", { class: "field" }, h("label", { for: "round-epochs" }, "Epochs"), epochs),
      h("div", { class: "field" }, h("label", { for: "round-seed" }, "Seed"), seed)),
    h("label", { class: "check small" }, supersede, " Close a batch still being labelled (its open items return to the pool)"),
    roundError,
    h("div", null, startBtn));
  form.addEventListener("submit", async (e) => {
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
      await load();
    } catch (err) {
      roundError.textContent = err instanceof ApiError && err.status === 409
        ? `Not now: ${err.detail}` : err.message;
    } finally {
      startBtn.disabled = false;
    }
  });

  // ---- the table ----
  const body = h("tbody", null);
  const th = (text, cls) => h("th", { scope: "col", class: cls }, text);
  const table = h("div", { class: "table-wrap" }, h("table", { id: "rounds" },
    h("thead", null, h("tr", null,
      th("#"), th("Status"), th("Strategy"), th("Batch", "num"), th("Stage"), th("Progress"), th("Labels", "num"),
      th("Proxy acc.", "num"), th("Started"), th(visuallyHidden("Actions")))),
    body));

  function row(r) {
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
          ? h("button", { type: "button", class: "btn btn-small", "aria-label": `Batch of round ${r.number}`, onclick: () => onShowBatch(r) }, "Batch") : null,
        ["queued", "running", "labeling"].includes(r.status)
          ? h("button", { type: "button", class: "btn btn-small btn-danger", "aria-label": `Cancel round ${r.number}`, onclick: () => cancel(r) }, "Cancel") : null));
    if (r.error && r.status === "failed") {
      return [tr, h("tr", { class: "round-error" }, h("td", { colspan: String(COLUMNS), class: "error-text small" }, `Round ${r.number} failed: ${r.error}`))];
    }
    return tr;
  }

  async function cancel(r) {
    if (!confirm(`Cancel round ${r.number}?`)) return;
    try {
      await post(`/api/rounds/${r.id}/cancel`);
    } catch (err) {
      toast(`Could not cancel: ${err.message}`, { bad: true });
    }
    load();
  }

  function follow(r) {
    if (sources.has(r.id) || !ACTIVE.has(r.status) || life.stopped) return;
    const es = new EventSource(`/api/rounds/${r.id}/events`);
    sources.set(r.id, es);
    es.onmessage = (ev) => {
      let data;
      try {
        data = JSON.parse(ev.data);
      } catch {
        return;
      }
      const tr = body.querySelector(`tr[data-round="${r.id}"]`);
      if (tr) {
        tr.dataset.status = data.status;
        fill(tr.querySelector(".round-status"), statusPill(data.status));
        fill(tr.querySelector(".round-stage"), stageText(data.status, data.stage));
        fill(tr.querySelector(".round-progress"), progressBar(data.progress, `round ${r.number} progress`));
      }
      if (!ACTIVE.has(data.status)) {
        // The server closes the stream now; close ours too so it does not reconnect.
        es.close();
        sources.delete(r.id);
        load();
        onSettled();
      }
    };
    es.onerror = () => {
      if (es.readyState === EventSource.CLOSED) sources.delete(r.id);
    };
  }

  async function load() {
    const rounds = await get(`/api/projects/${pid}/rounds`);
    fill(body, rounds.length ? rounds.map(row) : h("tr", null, h("td", { colspan: String(COLUMNS), class: "muted" }, "No rounds yet.")));
    for (const r of rounds) follow(r);
    onRounds(rounds);
  }

  return { form, table, load };
}
