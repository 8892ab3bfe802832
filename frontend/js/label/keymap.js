// Which key means which class, where keys may act at all, and whether single-key shortcuts are on.
// Depends on nothing.

export const KEYS = ["1", "2", "3", "4", "5", "6", "7", "8", "9", "0"];

const SHORTCUTS_KEY = "svp.single-key-shortcuts";

const NOT_TEXT = new Set(["checkbox", "radio", "button", "submit", "reset", "file", "range", "color"]);

/** Whether an element takes typed text or choices (Escape there clears or closes it). */
export function isTyping(target) {
  if (!(target instanceof HTMLElement)) return false;
  if (target.tagName === "INPUT") return !NOT_TEXT.has(target.type);
  return target.isContentEditable || ["TEXTAREA", "SELECT"].includes(target.tagName);
}

// Controls whose keys already mean something: Enter follows a link or presses a button, Space
// ticks a box, a letter types. A shortcut never acts there; tiles of the grid are meant for keys.
const CONTROLS = "a[href], button, input, select, textarea, summary, label, [contenteditable]:not([contenteditable='false']), [role='button'], [role='link'], [role='checkbox'], [role='switch']";

/** Whether the labelling view's keys may act on a key pressed with focus on `target`. */
export function keysActOn(target) {
  return !(target instanceof Element && target.closest(CONTROLS));
}

/** Whether single-key shortcuts (digits, S, Z, G, /) are on; remembered in this browser. */
export function shortcutsOn() {
  return localStorage.getItem(SHORTCUTS_KEY) !== "off";
}

/** Turn single-key shortcuts on or off (WCAG 2.1.4: a speech-input user may need them off). */
export function setShortcuts(on) {
  if (on) localStorage.removeItem(SHORTCUTS_KEY);
  else localStorage.setItem(SHORTCUTS_KEY, "off");
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
