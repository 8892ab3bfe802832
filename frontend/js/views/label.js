// The annotator's labelling view: the batch one image at a time or as a grid, keys for classes,
// the proxy's suggestion pre-selected, undo, skip, prefetching, and an outbox that survives reloads.

import { ApiError, NetworkError, del, get, post } from "../api.js";
import { fill, h, toast } from "../dom.js";
import { Outbox, newKey } from "../outbox.js";

const KEYS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0"];
// Items leased ahead of the one on screen; their images are fetched and decoded in advance.
const SINGLE_AHEAD = 11;
const GRID_SIZE = 24;
// Ask the server for more once this many of the items held are gone.
const REFILL_GAP = 4;
const MAX_LEASE = 100;
const EMPTY_POLL_MS = 10000;
const PROGRESS_POLL_MS = 15000;

/** Run `fn` once the current frame has been painted (rAF runs before paint; the message after). */
function afterPaint(fn) {
  requestAnimationFrame(() => {
    const ch = new MessageChannel();
    ch.port1.onmessage = () => fn();
    ch.port2.postMessage(null);
  });
}

function isTyping(target) {
  return target instanceof HTMLElement
    && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}

function preload(entry) {
  if (entry.img) return entry;
  const img = new Image();
  img.alt = `Item ${entry.name || entry.item_id}`;
  img.decoding = "async";
  img.draggable = false;
  img.dataset.itemId = String(entry.item_id);
  img.src = entry.image_url || `/api/items/${entry.item_id}/image`;
  entry.img = img;
  entry.ready = img.decode().then(
    () => {
      // Small images are scaled up with hard pixel edges instead of a blur.
      if (img.naturalWidth < 256 && img.naturalHeight < 256) img.classList.add("pixelated");
      entry.decoded = true;
    },
    () => {
      entry.broken = true;
    },
  );
  return entry;
}

export async function renderLabel(main, ctx, pidText) {
  const pid = Number(pidText);
  const user = ctx.session.user;
  main.classList.add("label-page");
  const project = await get(`/api/projects/${pid}`);
  const classes = project.classes;
  // Keys 1-9, 0 stand for the first ten classes; when the classes are themselves the digits
  // (say 0-9), each digit key means its own class instead, so "3" labels "3".
  const digitNames = classes.length <= KEYS.length && classes.every((c) => KEYS.includes(c));
  const keyOf = (i) => (digitNames ? classes[i] : i < KEYS.length ? KEYS[i] : null);
  const classOfKey = (key) => (digitNames ? (classes.includes(key) ? key : null) : classes[KEYS.indexOf(key)] ?? null);

  const state = {
    round: null,
    queue: [], // leased entries, the one on screen first
    handled: new Set(), // items labelled (or being labelled) on this page
    // Skipped on this tab (kept over a reload): the server passes them over for this user a while.
    skipped: new Set(JSON.parse(sessionStorage.getItem(`svp.skipped.${pid}`) || "[]")),
    acts: [], // undo stack: {items: [{entry, key, labelId, undo}], }
    fetching: null,
    exhausted: false,
    mode: localStorage.getItem("svp.label-mode") === "grid" ? "grid" : "single",
    selected: new Set(),
    anchor: 0,
    focus: 0,
    done: null, // labelled items of the round's batch, from the server plus acts since
    total: null,
    offline: !navigator.onLine,
    pending: 0,
    stopped: false,
    lastShown: null,
  };
  const timers = [];

  // ---- layout ----
  const progressText = h("output", { id: "progress-text", "aria-live": "polite" }, "…");
  const progressEl = h("progress", { max: "1", value: "0", "aria-label": "labelled in this round" });
  const syncState = h("span", { class: "sync-state", id: "sync-state", role: "status" });
  const singleBtn = h("button", { type: "button", "aria-pressed": "true" }, "One by one");
  const gridBtn = h("button", { type: "button", "aria-pressed": "false" }, "Grid");
  const head = h("div", { class: "label-head" },
    h("div", null,
      h("h1", null, project.name),
      h("div", { class: "small muted", id: "round-name" }, "")),
    h("div", { class: "label-progress" }, progressEl, progressText),
    h("div", { class: "mode-switch", role: "group", "aria-label": "View" }, singleBtn, gridBtn),
    syncState);

  const stage = h("div", { class: "stage", id: "stage", "aria-live": "polite" });
  const caption = h("div", { class: "stage-caption" });
  const gridBox = h("div", { class: "label-grid", id: "label-grid", role: "listbox", "aria-multiselectable": "true", "aria-label": "Images to label" });
  const viewBox = h("div", null);

  const classButtons = classes.map((name, i) => h("button", {
    type: "button",
    class: "class-btn",
    "data-class": name,
    "aria-keyshortcuts": keyOf(i) ?? undefined,
    onclick: () => applyClass(name),
  }, h("kbd", { "aria-hidden": "true" }, keyOf(i) ?? "·"), h("span", { class: "name" }, name), h("span", { class: "conf" })));
  const filter = h("input", {
    type: "search",
    id: "class-filter",
    placeholder: "Type to filter classes",
    autocomplete: "off",
    "aria-label": "Filter classes",
  });
  const classPanel = h("section", { class: "classes", "aria-label": "Classes" },
    classes.length > KEYS.length ? h("div", { class: "field" }, h("label", { for: "class-filter", class: "small" }, "Filter classes (press /)"), filter) : null,
    h("div", { class: "classes-list" }, classButtons),
    h("div", { class: "key-help", id: "key-help" }));

  main.append(head, h("div", { class: "label-body" }, viewBox, classPanel));

  // ---- sending labels ----
  const outbox = new Outbox({
    user: user.username,
    onSent: (entry, label, ms) => {
      const act = findAct(entry.key);
      window.dispatchEvent(new CustomEvent("svp:label-sent", { detail: { key: entry.key, ms } }));
      if (!act) return;
      act.labelId = label.id;
      if (act.undo) undoSent(act);
    },
    onRejected: (entry, err) => {
      const act = findAct(entry.key);
      toast(`The label “${entry.label}” was refused: ${err.message}`, { bad: true, ms: 8000 });
      if (act && !act.undo) {
        state.handled.delete(entry.item_id);
        bumpDone(-1);
      }
    },
    onState: ({ offline, pending }) => {
      state.offline = offline;
      state.pending = pending;
      renderSync();
    },
  });

  // Acts not yet acknowledged, by key, whether or not they are still on the undo stack: an act
  // undone while its request was on the way is found here when the answer comes.
  const unacked = new Map();
  function findAct(key) {
    const act = unacked.get(key) || null;
    unacked.delete(key);
    return act;
  }

  function renderSync() {
    const offline = state.offline || !navigator.onLine;
    syncState.classList.toggle("offline", offline);
    if (offline) {
      syncState.textContent = state.pending
        ? `Offline — ${state.pending} label${state.pending === 1 ? "" : "s"} saved here, sent when the connection returns`
        : "Offline — labels are kept here and sent when the connection returns";
    } else {
      syncState.textContent = state.pending ? `Sending ${state.pending}…` : "All labels saved";
    }
    const banner = document.getElementById("banner");
    banner.hidden = !offline;
    banner.textContent = offline ? "You are offline. Labels you make are kept on this device and sent when the connection returns." : "";
  }

  // ---- progress ----
  function bumpDone(n) {
    if (state.done !== null) state.done = Math.max(0, state.done + n);
    renderProgress();
  }

  function renderProgress() {
    if (!state.round) {
      progressText.textContent = "no open round";
      progressEl.value = 0;
      return;
    }
    const total = state.total ?? state.round.batch_size;
    const done = Math.min(state.done ?? 0, total);
    progressText.textContent = `${done} of ${total}`;
    progressEl.max = Math.max(total, 1);
    progressEl.value = done;
  }

  /** The labelling round and how much of its batch is labelled, from the server. */
  async function refreshRound() {
    const rounds = await get(`/api/projects/${pid}/rounds`);
    const list = Array.isArray(rounds) ? rounds : rounds.items || [];
    list.sort((a, b) => b.number - a.number);
    state.latest = list[0] || null;
    // A batch whose every item is labelled completes its round: that is "done", not "no round".
    state.round = list.find((r) => r.status === "labeling")
      || (state.latest && state.latest.status === "completed" ? state.latest : null);
    fill(document.getElementById("round-name") || h("div"),
      state.round ? `Round ${state.round.number} · ${state.round.strategy}` : "");
    if (state.round) {
      const labelled = await batchLabelled(state.round);
      state.total = labelled.total;
      // Acts still in the outbox are not on the server yet but are done as far as the user sees.
      state.done = labelled.local ? labelled.done : labelled.done + outbox.entries()
        .filter((e) => e.project_id === pid && !(labelled.ids && labelled.ids.has(e.item_id))).length;
    }
    renderProgress();
  }

  /**
   * How many of the round's batch are labelled: a count on the round, else the batch entries'
   * `labeled` flags, else the project's labelled count less the one the round began with,
   * else (none of these offered) the acts made on this page.
   */
  async function batchLabelled(round) {
    if (round.status === "completed") return { done: round.batch_size, total: round.batch_size, ids: null };
    const counted = round.labeled ?? round.labelled ?? round.batch_labeled;
    if (typeof counted === "number") return { done: counted, total: round.batch_size, ids: null };
    const rows = await get(`/api/rounds/${round.id}/selection`);
    const flagged = rows.length && rows.some((r) => "labeled" in r || "label" in r);
    if (!flagged) {
      // The round recorded how many items were labelled when it began: labels since then are
      // (nearly always) labels of its batch.
      const before = round.metrics && round.metrics.labeled;
      if (typeof before === "number") {
        const now = await get(`/api/projects/${pid}`);
        const labelled = (now.counts ? now.counts.labeled : now.labeled) - before;
        return { done: Math.max(0, Math.min(labelled, rows.length || round.batch_size)), total: rows.length || round.batch_size, ids: null };
      }
      return { done: state.done ?? 0, total: rows.length || round.batch_size, ids: new Set(), local: true };
    }
    const ids = new Set(rows.filter((r) => r.labeled || r.label).map((r) => r.item_id));
    return { done: ids.size, total: rows.length || round.batch_size, ids };
  }

  // ---- the queue ----
  function wanted() {
    return state.mode === "grid" ? GRID_SIZE + 8 : SINGLE_AHEAD + 1;
  }

  async function topUp() {
    if (state.fetching || state.stopped) return state.fetching;
    if (state.queue.length > wanted() - REFILL_GAP) return null;
    state.fetching = (async () => {
      try {
        // The server answers the caller's own live leases first, then new ones up to n. Own
        // leases are the queue plus items labelled here whose labels are still on their way, so
        // asking for the target plus those tops the queue up to the target.
        const unsent = outbox.entries().filter((e) => e.project_id === pid).length;
        const n = Math.min(MAX_LEASE, Math.max(wanted(), state.queue.length + 1) + unsent);
        const got = await post(`/api/projects/${pid}/queue/next?n=${n}`);
        const have = new Set(state.queue.map((e) => e.item_id));
        let added = 0;
        for (const entry of got) {
          if (have.has(entry.item_id) || state.handled.has(entry.item_id) || state.skipped.has(entry.item_id)) continue;
          if (outbox.holds(entry.item_id)) continue;
          state.queue.push(preload(entry));
          have.add(entry.item_id);
          added += 1;
        }
        state.exhausted = added === 0;
        return added;
      } catch (err) {
        if (state.stopped) return 0;
        if (err instanceof NetworkError) {
          state.offline = true;
          renderSync();
        } else if (!(err instanceof ApiError && err.status === 401)) {
          toast(`Could not fetch the next images: ${err.message}`, { bad: true });
        }
        return 0;
      } finally {
        state.fetching = null;
      }
    })();
    return state.fetching;
  }

  /** Keep the queue topped up; show the end-of-batch state when the server has nothing more. */
  async function ensure() {
    if (state.queue.length <= wanted() - REFILL_GAP) {
      await topUp();
      if (state.stopped) return;
      if (state.queue.length === 0) {
        await refreshRound().catch(() => {});
        if (state.queue.length === 0) showEmpty();
      } else if (!state.lastShown || state.mode === "grid") {
        render();
      }
    }
  }

  // ---- rendering ----
  function highlightSuggestion(entry) {
    const suggestion = entry && entry.suggestion && entry.suggestion.label;
    for (const btn of classButtons) {
      const on = suggestion && btn.dataset.class === suggestion;
      btn.classList.toggle("suggested", Boolean(on));
      btn.querySelector(".conf").textContent = on && typeof entry.suggestion.confidence === "number"
        ? `${Math.round(entry.suggestion.confidence * 100)}%` : "";
      if (on) btn.setAttribute("aria-description", "suggested: press Enter to accept");
      else btn.removeAttribute("aria-description");
    }
  }

  function keyHelp() {
    const help = document.getElementById("key-help");
    const k = (x) => h("kbd", null, x);
    fill(help, state.mode === "grid"
      ? [k("click"), " select · ", k("shift"), "+click range · ", k("Ctrl"), "+", k("A"), " all · ",
        k("1"), "–", k("0"), " label selected · ", k("Enter"), " accept suggestions · ", k("S"), " skip · ", k("Z"), " undo"]
      : [k("1"), "–", k("0"), " label · ", k("Enter"), " accept suggestion · ", k("S"), " skip · ",
        k("Z"), " or ", k("⌫"), " undo · ", k("G"), " grid"]);
  }

  function render() {
    if (state.stopped) return;
    singleBtn.setAttribute("aria-pressed", String(state.mode === "single"));
    gridBtn.setAttribute("aria-pressed", String(state.mode === "grid"));
    keyHelp();
    if (state.queue.length === 0) {
      // Until the server says it has nothing more, an empty queue means "loading", not "done".
      if (state.fetching || !state.exhausted) {
        state.lastShown = null;
        stage.replaceChildren(h("div", { class: "stage-empty" }, "Loading the next images…"));
        fill(viewBox, stage, caption);
      } else showEmpty();
      return;
    }
    if (state.mode === "single") renderSingle();
    else renderGrid();
  }

  function renderSingle() {
    const entry = state.queue[0];
    if (viewBox.firstChild !== stage) fill(viewBox, stage, caption);
    // The prefetched, decoded image element itself goes on stage: nothing to fetch or decode.
    stage.replaceChildren(entry.img);
    const suggestion = entry.suggestion && entry.suggestion.label;
    fill(caption,
      h("span", null, entry.name || `item ${entry.item_id}`),
      h("span", null, suggestion
        ? ["Suggestion: ", h("b", null, suggestion), typeof entry.suggestion.confidence === "number" ? ` (${Math.round(entry.suggestion.confidence * 100)}%) — Enter accepts` : ""]
        : "No suggestion"));
    highlightSuggestion(entry);
    state.lastShown = entry;
    for (const next of state.queue.slice(1, SINGLE_AHEAD + 1)) preload(next);
    const shownAt = entry;
    const prefetched = Boolean(entry.decoded);
    entry.ready.then(() => afterPaint(() => {
      if (state.lastShown !== shownAt) return;
      window.dispatchEvent(new CustomEvent("svp:shown", { detail: { itemId: entry.item_id, t: performance.now(), prefetched } }));
    }));
  }

  function tileFor(entry, index) {
    const selected = state.selected.has(entry.item_id);
    const s = entry.suggestion && entry.suggestion.label;
    const tile = h("div", {
      class: "tile",
      role: "option",
      tabindex: index === state.focus ? "0" : "-1",
      "aria-selected": String(selected),
      "data-item-id": entry.item_id,
      "aria-label": `${entry.name || entry.item_id}${s ? `, suggested ${s}` : ""}`,
    }, entry.img,
    h("div", { class: "tile-caption" },
      h("span", null, s || "—"),
      h("span", null, s && typeof entry.suggestion.confidence === "number" ? `${Math.round(entry.suggestion.confidence * 100)}%` : "")));
    tile.addEventListener("click", (e) => onTileClick(e, index));
    tile.addEventListener("focus", () => { state.focus = index; });
    return tile;
  }

  function renderGrid() {
    const shown = state.queue.slice(0, GRID_SIZE);
    shown.forEach(preload);
    state.focus = Math.min(state.focus, shown.length - 1);
    const hadFocus = gridBox.contains(document.activeElement);
    fill(gridBox, shown.map(tileFor));
    if (viewBox.firstChild !== gridBox) fill(viewBox, gridBox);
    highlightSuggestion(null);
    state.lastShown = shown[0] || null;
    if (hadFocus) gridBox.children[state.focus]?.focus();
  }

  function onTileClick(e, index) {
    const shown = state.queue.slice(0, GRID_SIZE);
    const id = shown[index].item_id;
    if (e.shiftKey) {
      const [a, b] = [Math.min(state.anchor, index), Math.max(state.anchor, index)];
      if (!(e.ctrlKey || e.metaKey)) state.selected.clear();
      for (const entry of shown.slice(a, b + 1)) state.selected.add(entry.item_id);
    } else if (e.ctrlKey || e.metaKey) {
      if (state.selected.has(id)) state.selected.delete(id);
      else state.selected.add(id);
      state.anchor = index;
    } else {
      const only = state.selected.size === 1 && state.selected.has(id);
      state.selected.clear();
      if (!only) state.selected.add(id);
      state.anchor = index;
    }
    state.focus = index;
    renderGrid();
    gridBox.children[index]?.focus();
  }

  function showEmpty() {
    state.lastShown = null;
    highlightSuggestion(null);
    let message;
    if (state.round) {
      const total = state.total ?? state.round.batch_size;
      const done = state.round.status === "completed" ? total : state.done ?? 0;
      const complete = done >= total;
      const skipped = complete ? 0 : state.skipped.size;
      const minutes = Math.round((project.settings?.lease_seconds ?? 600) / 60);
      message = h("div", { class: "stage-empty", id: "batch-state", "data-state": complete ? "done" : "held" },
        h("h2", null, complete ? "This batch is done" : "Nothing left for you in this batch"),
        h("p", null, complete
          ? `All ${total} images of round ${state.round.number} are labelled. Thank you!`
          : `${done} of ${total} are labelled.`),
        !complete ? h("p", null, skipped
          ? `You skipped ${skipped}: skipped images go to other annotators first, and come back to you after about ${minutes} minute${minutes === 1 ? "" : "s"}.`
          : "The rest are held by other annotators right now.") : null,
        h("button", { type: "button", class: "btn", onclick: checkAgain }, "Check for more"));
    } else {
      const latest = state.latest;
      message = h("div", { class: "stage-empty", id: "batch-state", "data-state": "no-round" },
        h("h2", null, "No round is open for labelling"),
        h("p", null, latest && (latest.status === "queued" || latest.status === "running")
          ? `Round ${latest.number} is being prepared (${latest.stage || latest.status}). Its batch appears here when it is ready.`
          : "An engineer starts the next round; its batch appears here by itself."),
        h("button", { type: "button", class: "btn", onclick: checkAgain }, "Check now"));
    }
    stage.replaceChildren(message);
    fill(caption);
    fill(viewBox, stage, caption);
  }

  async function checkAgain() {
    state.exhausted = false;
    await topUp();
    await refreshRound().catch(() => {});
    if (state.queue.length) render();
    else showEmpty();
  }

  // ---- acts ----
  function targets() {
    if (state.queue.length === 0) return [];
    if (state.mode === "single") return [state.queue[0]];
    const shown = state.queue.slice(0, GRID_SIZE);
    const chosen = shown.filter((e) => state.selected.has(e.item_id));
    return chosen.length ? chosen : [shown[state.focus] || shown[0]];
  }

  function flash(name) {
    const btn = classButtons.find((b) => b.dataset.class === name);
    if (!btn) return;
    btn.classList.add("flash");
    setTimeout(() => btn.classList.remove("flash"), 180);
  }

  /** Label the item on screen (or the grid's selection) with `name`, or each with its suggestion. */
  function applyClass(name) {
    const items = targets();
    if (!items.length) return;
    const group = { items: [] };
    for (const entry of items) {
      const label = name ?? (entry.suggestion && entry.suggestion.label);
      if (!label) continue;
      const key = newKey();
      const act = { entry, key, label, labelId: null, undo: false };
      group.items.push(act);
      unacked.set(key, act);
      state.handled.add(entry.item_id);
    }
    if (!group.items.length) {
      toast("No suggestion for this image: press a class key.");
      return;
    }
    state.acts.push(group);
    if (state.acts.length > 200) state.acts.shift();
    const gone = new Set(group.items.map((a) => a.entry.item_id));
    state.queue = state.queue.filter((e) => !gone.has(e.item_id));
    for (const id of gone) state.selected.delete(id);
    if (name) flash(name);
    bumpDone(group.items.length);
    // The queue ran dry: say "loading" while the server is asked, never a premature "done".
    if (state.queue.length === 0) state.exhausted = false;
    // Show the next image first, then hand the labels to the outbox: the user never waits.
    render();
    for (const act of group.items) outbox.add({ key: act.key, item_id: act.entry.item_id, label: act.label, project_id: pid });
    ensure();
  }

  function skip() {
    const items = targets();
    if (!items.length) return;
    const gone = new Set(items.map((e) => e.item_id));
    for (const id of gone) {
      state.skipped.add(id);
      sessionStorage.setItem(`svp.skipped.${pid}`, JSON.stringify([...state.skipped].slice(-500)));
      state.selected.delete(id);
      post(`/api/projects/${pid}/queue/skip`, { item_id: id }).catch(() => {
        // The lease lapses by itself if this does not arrive.
      });
    }
    state.queue = state.queue.filter((e) => !gone.has(e.item_id));
    if (state.queue.length === 0) state.exhausted = false;
    render();
    ensure();
  }

  async function undoSent(act) {
    try {
      await del(`/api/labels/${act.labelId}`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) return;
      toast(`Could not undo the label “${act.label}”: ${err.message}`, { bad: true });
    }
  }

  async function undo() {
    const group = state.acts.pop();
    if (!group) {
      toast("Nothing to undo.");
      return;
    }
    for (const act of group.items) {
      if (act.labelId) {
        try {
          await del(`/api/labels/${act.labelId}`);
        } catch (err) {
          if (!(err instanceof ApiError && err.status === 404)) {
            state.acts.push(group);
            toast(err instanceof NetworkError ? "Cannot undo while offline." : `Could not undo: ${err.message}`, { bad: true });
            return;
          }
        }
      } else if (outbox.cancel(act.key)) {
        unacked.delete(act.key);
      } else {
        // On its way right now: undo it as soon as the server has it.
        act.undo = true;
      }
    }
    const back = group.items.map((a) => a.entry);
    for (const entry of back) state.handled.delete(entry.item_id);
    state.queue = [...back, ...state.queue.filter((e) => !back.includes(e))];
    state.selected = new Set(state.mode === "grid" ? back.map((e) => e.item_id) : []);
    bumpDone(-back.length);
    render();
    toast(`Undone: ${group.items.map((a) => a.label).join(", ")}`, { ms: 1800 });
  }

  function setMode(mode) {
    state.mode = mode;
    localStorage.setItem("svp.label-mode", mode);
    state.selected.clear();
    state.focus = 0;
    state.anchor = 0;
    render();
    ensure();
  }

  singleBtn.addEventListener("click", () => setMode("single"));
  gridBtn.addEventListener("click", () => setMode("grid"));

  // ---- keys ----
  function applyFilter() {
    const q = filter.value.trim().toLowerCase();
    for (const btn of classButtons) btn.hidden = q !== "" && !btn.dataset.class.toLowerCase().includes(q);
  }
  filter.addEventListener("input", applyFilter);
  filter.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      const first = classButtons.find((b) => !b.hidden);
      if (first) {
        filter.value = "";
        applyFilter();
        filter.blur();
        applyClass(first.dataset.class);
      }
    } else if (e.key === "Escape") {
      filter.value = "";
      applyFilter();
      filter.blur();
    }
  });

  function moveFocus(delta, extend) {
    const shown = state.queue.slice(0, GRID_SIZE);
    if (!shown.length) return;
    const next = Math.max(0, Math.min(shown.length - 1, state.focus + delta));
    state.focus = next;
    if (extend) {
      state.selected.clear();
      const [a, b] = [Math.min(state.anchor, next), Math.max(state.anchor, next)];
      for (const entry of shown.slice(a, b + 1)) state.selected.add(entry.item_id);
    } else {
      state.anchor = next;
    }
    renderGrid();
    gridBox.children[next]?.focus();
  }

  function gridColumns() {
    const first = gridBox.children[0];
    if (!first) return 1;
    const top = first.offsetTop;
    let n = 0;
    for (const el of gridBox.children) {
      if (el.offsetTop !== top) break;
      n += 1;
    }
    return Math.max(1, n);
  }

  function onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey) {
      if (state.mode === "grid" && (e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "a" && !isTyping(e.target)) {
        e.preventDefault();
        for (const entry of state.queue.slice(0, GRID_SIZE)) state.selected.add(entry.item_id);
        renderGrid();
      }
      return;
    }
    if (isTyping(e.target)) return;
    if (e.repeat) return; // a held key must not label a run of images
    const key = e.key;
    const byKey = KEYS.includes(key) ? classOfKey(key) : null;
    if (byKey !== null) {
      e.preventDefault();
      applyClass(byKey);
    } else if (key === "Enter") {
      if (e.target instanceof HTMLButtonElement) return; // let a focused button do its own thing
      e.preventDefault();
      applyClass(null);
    } else if (key === "s" || key === "S") {
      e.preventDefault();
      skip();
    } else if (key === "z" || key === "Z" || key === "Backspace") {
      e.preventDefault();
      undo();
    } else if (key === "g" || key === "G") {
      e.preventDefault();
      setMode(state.mode === "grid" ? "single" : "grid");
    } else if (key === "/" && classes.length > KEYS.length) {
      e.preventDefault();
      filter.focus();
    } else if (state.mode === "grid" && key.startsWith("Arrow")) {
      e.preventDefault();
      const cols = gridColumns();
      const delta = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -cols, ArrowDown: cols }[key];
      moveFocus(delta, e.shiftKey);
    } else if (state.mode === "grid" && key === " ") {
      e.preventDefault();
      const entry = state.queue[state.focus];
      if (entry) {
        if (state.selected.has(entry.item_id)) state.selected.delete(entry.item_id);
        else state.selected.add(entry.item_id);
        state.anchor = state.focus;
        renderGrid();
      }
    } else if (key === "Escape" && state.mode === "grid") {
      state.selected.clear();
      renderGrid();
    }
  }
  document.addEventListener("keydown", onKey);
  const onNetChange = () => {
    state.offline = !navigator.onLine;
    renderSync();
    if (navigator.onLine && state.queue.length === 0) checkAgain();
  };
  window.addEventListener("online", onNetChange);
  window.addEventListener("offline", onNetChange);

  // ---- start ----
  keyHelp();
  renderSync();
  stage.replaceChildren(h("div", { class: "stage-empty" }, "Loading the batch…"));
  fill(viewBox, stage, caption);
  // Labels left in the outbox by an earlier page go first, with their original keys.
  outbox.pump();
  await refreshRound().catch((err) => {
    if (!(err instanceof NetworkError)) throw err;
  });
  await topUp();
  if (state.queue.length) {
    await state.queue[0].ready;
    render();
  } else {
    showEmpty();
  }
  ensure();

  timers.push(setInterval(() => {
    if (state.queue.length === 0 && !state.fetching) checkAgain();
  }, EMPTY_POLL_MS));
  timers.push(setInterval(() => {
    if (state.queue.length && document.visibilityState === "visible") refreshRound().catch(() => {});
  }, PROGRESS_POLL_MS));

  return () => {
    state.stopped = true;
    outbox.stop();
    for (const t of timers) clearInterval(t);
    document.removeEventListener("keydown", onKey);
    window.removeEventListener("online", onNetChange);
    window.removeEventListener("offline", onNetChange);
    const banner = document.getElementById("banner");
    banner.hidden = true;
  };
}
