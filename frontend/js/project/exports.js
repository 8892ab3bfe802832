// Export links: every labelled item with its current label as CSV, JSONL or image folders.
// Depends on: ../dom.js.

import { h } from "../dom.js";

const FORMATS = { csv: "CSV", jsonl: "JSONL", imagefolder: "Image folders (.zip)" };

export function createExports({ pid }) {
  return [
    h("p", { class: "small muted" }, "Every labelled item with its current label."),
    h("div", { class: "row", id: "export" },
      Object.entries(FORMATS).map(([f, name]) => h("a", {
        class: "btn", href: `/api/projects/${pid}/export?format=${f}`, download: "", "data-format": f,
      }, name))),
  ];
}
