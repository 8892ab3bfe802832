// The labelling view's keyboard: the class filter, and what each key does (a class, accept the
// suggestion, undo, skip, grid moves). Keys act only where they are meant to: never on a link,
// button, select or input, where a key already means something (see keysActOn); the single-key
// ones only while the user has them on.
// Depends on: ./keymap.js, ./queue.js, and the view and acts it is given. Only
// ../views/label.js calls it.

import { KEYS, isTyping, keysActOn, shortcutsOn } from "./keymap.js";
import { GRID_SIZE } from "./queue.js";

/** Listen to the keyboard for the page; returns what stops listening. */
export function bindKeys({ state, classes, keys, view, acts, main }) {
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

  function toggleFocused() {
    const entry = state.queue[state.focus];
    if (!entry) return;
    if (state.selected.has(entry.item_id)) state.selected.delete(entry.item_id);
    else state.selected.add(entry.item_id);
    state.anchor = state.focus;
    view.renderGrid();
  }

  /** The single-character shortcuts (WCAG 2.1.4: these are the ones that can be turned off). */
  function onCharacter(e) {
    const key = e.key;
    const byKey = KEYS.includes(key) ? keys.classOfKey(key) : null;
    if (byKey !== null) acts.applyClass(byKey);
    else if (key === "s" || key === "S") acts.skip();
    else if (key === "z" || key === "Z") acts.undo();
    else if (key === "g" || key === "G") view.setMode(state.mode === "grid" ? "single" : "grid");
    else if (key === "/" && classes.length > KEYS.length) filter.focus();
    else return false;
    return true;
  }

  function onKey(e) {
    if (e.defaultPrevented) return;
    if (!keysActOn(e.target)) {
      // Escape from a control in the view gives the keys back: focus returns to the page.
      if (e.key === "Escape" && !isTyping(e.target) && main.contains(e.target)) main.focus();
      return;
    }
    if (e.ctrlKey || e.metaKey || e.altKey) {
      if (state.mode === "grid" && (e.ctrlKey || e.metaKey) && e.key.toLowerCase() === "a") {
        e.preventDefault();
        for (const entry of state.queue.slice(0, GRID_SIZE)) state.selected.add(entry.item_id);
        view.renderGrid();
      }
      return;
    }
    if (e.repeat) return; // a held key must not label a run of images
    const key = e.key;
    if (key.length === 1 && key !== " ") {
      if (shortcutsOn() && onCharacter(e)) e.preventDefault();
      return;
    }
    if (key === "Enter") {
      e.preventDefault();
      acts.applyClass(null);
    } else if (key === "Backspace") {
      e.preventDefault();
      acts.undo();
    } else if (state.mode === "grid" && key.startsWith("Arrow")) {
      e.preventDefault();
      const cols = gridColumns();
      const delta = { ArrowLeft: -1, ArrowRight: 1, ArrowUp: -cols, ArrowDown: cols }[key];
      moveFocus(delta, e.shiftKey);
    } else if (state.mode === "grid" && key === " ") {
      e.preventDefault();
      toggleFocused();
    } else if (key === "Escape" && state.mode === "grid") {
      state.selected.clear();
      view.renderGrid();
    }
  }
  document.addEventListener("keydown", onKey);
  return () => document.removeEventListener("keydown", onKey);
}
