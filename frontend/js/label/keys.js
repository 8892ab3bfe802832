// The labelling view's keyboard: which key means which class, the class filter, and what every
// other key does (undo, skip, grid moves). Keys act through the page's view and acts.

import { GRID_SIZE } from "./queue.js";

export const KEYS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0"];

export function isTyping(target) {
  return target instanceof HTMLElement
    && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName));
}

/**
 * Keys 1-9, 0 stand for the first ten classes; when the classes are themselves the digits
 * (say 0-9), each digit key means its own class instead, so "3" labels "3".
 */
export function classKeys(classes) {
  const digitNames = classes.length <= KEYS.length && classes.every((c) => KEYS.includes(c));
  const keyOf = (i) => (digitNames ? classes[i] : i < KEYS.length ? KEYS[i] : null);
  const classOfKey = (key) => (digitNames ? (classes.includes(key) ? key : null) : classes[KEYS.indexOf(key)] ?? null);
  return { keyOf, classOfKey };
}

/** Listen to the keyboard for the page; returns what stops listening. */
export function bindKeys(page) {
  const { state, classes, view, acts } = page;
  const { filter, classButtons, gridBox } = view;

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
        acts.applyClass(first.dataset.class);
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
    view.renderGrid();
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
        view.renderGrid();
      }
      return;
    }
    if (isTyping(e.target)) return;
    if (e.repeat) return; // a held key must not label a run of images
    const key = e.key;
    const byKey = KEYS.includes(key) ? page.keys.classOfKey(key) : null;
    if (byKey !== null) {
      e.preventDefault();
      acts.applyClass(byKey);
    } else if (key === "Enter") {
      if (e.target instanceof HTMLButtonElement) return; // let a focused button do its own thing
      e.preventDefault();
      acts.applyClass(null);
    } else if (key === "s" || key === "S") {
      e.preventDefault();
      acts.skip();
    } else if (key === "z" || key === "Z" || key === "Backspace") {
      e.preventDefault();
      acts.undo();
    } else if (key === "g" || key === "G") {
      e.preventDefault();
      view.setMode(state.mode === "grid" ? "single" : "grid");
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
        view.renderGrid();
      }
    } else if (key === "Escape" && state.mode === "grid") {
      state.selected.clear();
      view.renderGrid();
    }
  }
  document.addEventListener("keydown", onKey);
  return () => document.removeEventListener("keydown", onKey);
}
