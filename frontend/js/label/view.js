// The labelling view's page: its layout, the item on stage or the grid, the class buttons with
// the proxy's suggestion, the act buttons and the shortcuts switch, progress and sync state, and
// what it says when there is nothing to do.
// Depends on: ../dom.js, ./item.js, ./keymap.js, ./suggest.js, and the queue and acts it is given
// (its buttons call them). Only ./keys.js and ../views/label.js call it.

import { fill, h } from "../dom.js";
import { isText, itemElement, itemName, preload, tileElement, tileText } from "./item.js";
import { KEYS, setShortcuts, shortcutsOn } from "./keymap.js";
import { GRID_SIZE, SINGLE_AHEAD } from "./queue.js";
import { guessOf } from "./suggest.js";

/** Run `fn` once the current frame has been painted (rAF runs before paint; the message after). */
function afterPaint(fn) {
  requestAnimationFrame(() => {
    const ch = new MessageChannel();
    ch.port1.onmessage = () => fn();
    ch.port2.postMessage(null);
  });
}

const percent = (confidence) => `${Math.round(confidence * 100)}%`;

/**
 * A button's click handler that, after a mouse click, gives focus back to the page: the keys act
 * nowhere on a button, and a mouse user expects them to work after clicking one. A keyboard
 * press (click with detail 0) keeps focus where the user put it.
 */
function clicked(fn) {
  return (e) => {
    if (e.detail > 0) e.currentTarget.blur();
    fn(e);
  };
}

export function createView({ main, project, state, keys, queue, acts }) {
  const { classes } = project;
  const { keyOf } = keys;
  // What the batch is made of, in the words the page uses for it.
  const texts = project.kind === "text";
  const noun = texts ? "texts" : "images";

  // ---- layout ----
  const progressText = h("output", { id: "progress-text", "aria-live": "polite" }, "…");
  const progressEl = h("progress", { max: "1", value: "0", "aria-label": "labelled in this round" });
  const syncState = h("span", { class: "sync-state", id: "sync-state", role: "status" });
  const singleBtn = h("button", { type: "button", "aria-pressed": "true" }, "One by one");
  const gridBtn = h("button", { type: "button", "aria-pressed": "false" }, "Grid");
  const roundName = h("div", { class: "small muted", id: "round-name" }, "");
  const head = h("div", { class: "label-head" },
    h("div", null, h("h1", null, project.name), roundName),
    h("div", { class: "label-progress" }, progressEl, progressText),
    h("div", { class: "mode-switch", role: "group", "aria-label": "View" }, singleBtn, gridBtn),
    syncState);

  const stage = h("div", { class: "stage", id: "stage", "aria-live": "polite" });
  const caption = h("div", { class: "stage-caption" });
  const gridBox = h("div", { class: "label-grid", id: "label-grid", role: "listbox", "aria-multiselectable": "true", "aria-label": texts ? "Texts to label" : "Images to label" });
  gridBox.classList.toggle("texts", texts);
  const viewBox = h("div", null);

  const classButtons = classes.map((name, i) => h("button", {
    type: "button",
    class: "class-btn",
    "data-class": name,
    "aria-keyshortcuts": keyOf(i) ?? undefined,
    onclick: clicked(() => acts.applyClass(name)),
  }, h("kbd", { "aria-hidden": "true" }, keyOf(i) ?? "·"), h("span", { class: "name" }, name), h("span", { class: "conf" })));
  const actButton = (act, text, key, fn) => h("button", {
    type: "button", class: "btn btn-small", "data-act": act, "aria-keyshortcuts": key, onclick: clicked(fn),
  }, text);
  const actButtons = h("div", { class: "act-buttons", role: "group", "aria-label": "Acts" },
    actButton("accept", "Accept suggestion", "Enter", () => acts.applyClass(null)),
    actButton("skip", "Skip", "S", () => acts.skip()),
    actButton("undo", "Undo", "Z", () => acts.undo()));
  const shortcutsBox = h("input", { type: "checkbox", id: "single-key-shortcuts", checked: shortcutsOn() });
  shortcutsBox.addEventListener("change", () => {
    setShortcuts(shortcutsBox.checked);
    keyHelp();
  });
  const filter = h("input", {
    type: "search",
    id: "class-filter",
    placeholder: "Type to filter classes",
    autocomplete: "off",
    "aria-label": "Filter classes",
  });
  const keyHelpBox = h("div", { class: "key-help", id: "key-help" });
  const classPanel = h("section", { class: "classes", "aria-label": "Classes" },
    classes.length > KEYS.length ? h("div", { class: "field" }, h("label", { for: "class-filter", class: "small" }, "Filter classes (press /)"), filter) : null,
    h("div", { class: "classes-list" }, classButtons),
    actButtons,
    h("label", { class: "check small", for: "single-key-shortcuts" }, shortcutsBox, "Single-key shortcuts"),
    keyHelpBox);

  main.append(head, h("div", { class: "label-body" }, viewBox, classPanel));

  // ---- sync state and progress ----
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
    // The end-of-batch message says how many are labelled too: keep it in step.
    const message = stage.querySelector("#batch-state");
    if (message && message.dataset.done !== undefined && message.dataset.done !== String(done)) showEmpty();
  }

  function renderRoundName() {
    fill(roundName, state.round ? `Round ${state.round.number} · ${state.round.strategy}` : "");
  }

  // ---- the stage and the grid ----
  function highlightSuggestion(entry) {
    const guess = guessOf(entry);
    for (const btn of classButtons) {
      const mine = guess && btn.dataset.class === guess.label;
      const on = mine && guess.preselected;
      btn.classList.toggle("suggested", Boolean(on));
      btn.classList.toggle("hinted", Boolean(mine && !on));
      btn.querySelector(".conf").textContent = mine && guess.confidence !== null ? percent(guess.confidence) : "";
      if (on) btn.setAttribute("aria-description", "suggested: press Enter to accept");
      else if (mine) btn.setAttribute("aria-description", "a low-confidence guess: press its key to choose it");
      else btn.removeAttribute("aria-description");
    }
  }

  function keyHelp() {
    const k = (x) => h("kbd", null, x);
    if (!shortcutsOn()) {
      fill(keyHelpBox, "Single-key shortcuts are off: ", k("Enter"), " accepts the suggestion, ", k("⌫"), " undoes",
        state.mode === "grid" ? [", arrows and ", k("Space"), " select"] : "", "; the buttons do the rest.");
      return;
    }
    fill(keyHelpBox, state.mode === "grid"
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
        stage.classList.remove("stage-text");
        stage.replaceChildren(h("div", { class: "stage-empty" }, `Loading the next ${noun}…`));
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
    // A text's panel scrolls: whoever was reading the last one with the keyboard reads on here.
    const reading = stage.contains(document.activeElement);
    const el = itemElement(entry);
    stage.classList.toggle("stage-text", isText(entry));
    stage.replaceChildren(el);
    if (reading && isText(entry)) el.focus({ preventScroll: true });
    const guess = guessOf(entry);
    const conf = guess && guess.confidence !== null ? ` (${percent(guess.confidence)})` : "";
    fill(caption,
      // A text's length says at once whether the panel scrolls.
      h("span", null, itemName(entry), isText(entry) ? ` · ${(entry.text_chars ?? entry.text.length).toLocaleString()} characters` : ""),
      h("span", { class: "suggestion-text" }, !guess ? "No suggestion"
        : guess.preselected ? ["Suggestion: ", h("b", null, guess.label), conf, " — Enter accepts"]
          : ["Unsure guess: ", h("b", null, guess.label), conf, " — press a class key"]));
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
    const guess = guessOf(entry);
    const conf = guess && guess.confidence !== null ? percent(guess.confidence) : "";
    // The name says what the tile shows: the suggestion with its confidence, and whether Enter
    // would take it. A text tile's name is its visible words in their order (its first lines,
    // then the caption's), so a speech-input user can say what they see (WCAG 2.5.3).
    const words = guess ? `${guess.label}${conf ? ` ${conf}` : ""}` : "";
    const how = guess && guess.preselected ? "suggested" : "unsure guess";
    const name = isText(entry)
      ? `${tileText(entry)} ${guess ? `${words}, ${how}` : "no suggestion"}`
      : `${itemName(entry)}${guess ? `, ${how}: ${words}` : ", no suggestion"}`;
    const tile = h("div", {
      class: "tile",
      role: "option",
      tabindex: index === state.focus ? "0" : "-1",
      "aria-selected": String(selected),
      "data-item-id": entry.item_id,
      "aria-label": name,
    }, tileElement(entry),
    // A space between a text and its caption, so their words stay apart when read as one.
    " ",
    // The caption's words appear in the name in the same order (WCAG 2.5.3, label in name).
    h("div", { class: "tile-caption" },
      h("span", null, guess ? guess.label : "no suggestion"), conf ? " " : null,
      h("span", null, conf)));
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

  function showLoading() {
    stage.classList.remove("stage-text");
    stage.replaceChildren(h("div", { class: "stage-empty" }, "Loading the batch…"));
    fill(viewBox, stage, caption);
  }

  function showEmpty() {
    state.lastShown = null;
    highlightSuggestion(null);
    const checkAgain = () => queue.checkAgain();
    let message;
    if (state.round) {
      const total = state.total ?? state.round.batch_size;
      const done = state.round.status === "completed" ? total : state.done ?? 0;
      const complete = done >= total;
      const skipped = complete ? 0 : state.skipped.size;
      const minutes = Math.round(project.settings.lease_seconds / 60);
      message = h("div", { class: "stage-empty", id: "batch-state", "data-state": complete ? "done" : "held", "data-done": String(Math.min(done, total)) },
        h("h2", null, complete ? "This batch is done" : "Nothing left for you in this batch"),
        h("p", null, complete
          ? `All ${total} ${noun} of round ${state.round.number} are labelled. Thank you!`
          : `${done} of ${total} are labelled.`),
        !complete ? h("p", null, skipped
          ? `You skipped ${skipped}: skipped ${noun} go to other annotators first, and come back to you after about ${minutes} minute${minutes === 1 ? "" : "s"}.`
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
    stage.classList.remove("stage-text");
    stage.replaceChildren(message);
    fill(caption);
    fill(viewBox, stage, caption);
  }

  function flash(name) {
    const btn = classButtons.find((b) => b.dataset.class === name);
    if (!btn) return;
    btn.classList.add("flash");
    setTimeout(() => btn.classList.remove("flash"), 180);
  }

  function setMode(mode) {
    state.mode = mode;
    localStorage.setItem("svp.label-mode", mode);
    state.selected.clear();
    state.focus = 0;
    state.anchor = 0;
    render();
    queue.ensure();
  }
  singleBtn.addEventListener("click", clicked(() => setMode("single")));
  gridBtn.addEventListener("click", clicked(() => setMode("grid")));

  return {
    filter, classButtons, gridBox,
    renderSync, renderProgress, renderRoundName, keyHelp, render, renderGrid, showLoading, showEmpty, flash, setMode,
  };
}
