// Small DOM helpers: build elements without innerHTML, so names from the server are never markup.

/**
 * h("button", {class: "btn", onclick: fn}, "text", child) -> HTMLButtonElement.
 * Attributes: `class`, `dataset`, `style` (object), `on*` (listeners), booleans, anything else as an attribute.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "dataset") Object.assign(el.dataset, value);
      else if (key === "style" && typeof value === "object") Object.assign(el.style, value);
      else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
      else if (key === "value") el.value = value;
      else if (key === "checked" || key === "selected" || key === "disabled" || key === "multiple") el[key] = Boolean(value);
      else if (value === true) el.setAttribute(key, "");
      else el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** Replace an element's children. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A status pill, e.g. `running`. */
export function statusPill(status) {
  return h("span", { class: `status status-${status}` }, status);
}

/** A progress bar with its percentage spelled out for screen readers and eyes. */
export function progressBar(fraction, label) {
  const pct = Math.round(Math.max(0, Math.min(1, fraction || 0)) * 100);
  return h("div", { class: "progress-cell" },
    h("progress", { max: "100", value: String(pct), "aria-label": label || "progress" }),
    h("span", { class: "small muted" }, `${pct}%`));
}

/** A timestamp as the local short date and time, or a dash. */
export function when(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toLocaleString(undefined, { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

/** A short-lived message in the corner; `bad` for errors. */
export function toast(message, { bad = false, ms = 4500 } = {}) {
  const box = document.getElementById("toasts");
  const t = h("div", { class: bad ? "toast bad" : "toast", role: bad ? "alert" : "status" }, message);
  box.append(t);
  setTimeout(() => t.remove(), ms);
}

/** Percent with no decimals, or a dash. */
export function pct(x) {
  return typeof x === "number" && Number.isFinite(x) ? `${Math.round(x * 100)}%` : "—";
}

/** A card with its heading, labelled by it: one section of a page. */
export function section(title, id, ...children) {
  return h("section", { class: "card", id, "aria-labelledby": `${id}-title` }, h("h2", { id: `${id}-title` }, title), ...children);
}

/** Text for screen readers only: a header for a column of buttons, say. */
export function visuallyHidden(text) {
  return h("span", { class: "visually-hidden" }, text);
}
