// Export links: every labelled item with its current label as CSV, JSONL or class folders (of
// images, or of .txt files for a text project, whose CSV and JSONL also carry the text).
// Depends on: ../dom.js.

import { h } from "../dom.js";

const FORMATS = { csv: "CSV", jsonl: "JSONL", imagefolder: "Image folders (.zip)" };
const TEXT_FORMATS = { ...FORMATS, imagefolder: "Text folders (.zip)" };

export function createExports({ pid, kind = "image" }) {
  const formats = kind === "text" ? TEXT_FORMATS : FORMATS;
  return [
    h("p", { class: "small muted" }, "Every labelled item with its current label."),
    h("div", { class: "row", id: "export" },
      Object.entries(formats).map(([f, name]) => h("a", {
        class: "btn", href: `/api/projects/${pid}/export?format=${f}`, download: "", "data-format": f,
      }, name))),
  ];
}
