// Upload of images or a zip (split, labels from folder names), its progress bar, then the import
// job's stage and progress and its report. A text project takes .csv, .jsonl, .txt or a zip of
// them instead (DESIGN 4c), and the form says which columns or fields it reads.
// Depends on: ../api.js, ../dom.js. Tells index.js an import finished through `onImported`.

import { ApiError, get, upload } from "../api.js";
import { fill, h, progressBar, statusPill } from "../dom.js";

const JOB_DONE = new Set(["succeeded", "failed", "canceled"]);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function importReport(job, kind) {
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
      r.labeled ? ` ${r.labeled} ${kind === "text" ? "came with their labels" : "labelled from folder names"}.` : ""),
    rejectedCount > rejected.length ? h("p", { class: "small muted" }, `Showing the first ${rejected.length} rejected files.`) : null,
    rejected.length
      ? h("div", { class: "table-wrap" }, h("table", { id: "rejected" },
        h("caption", { class: "small muted", style: { textAlign: "left" } }, "Rejected files"),
        h("thead", null, h("tr", null, h("th", { scope: "col" }, "File"), h("th", { scope: "col" }, "Reason"))),
        h("tbody", null, rejected.map((x) => h("tr", null, h("td", { class: "mono" }, x.name), h("td", null, x.reason))))))
      : null);
}

// What each kind of project takes, as the file picker's filter and the form's words.
const ACCEPTS = {
  image: { accept: "image/*,.zip,application/zip", label: "Images or a .zip", example: "class/file.png" },
  text: { accept: ".csv,.jsonl,.txt,.zip,text/csv,text/plain,application/zip", label: "Texts: .csv, .jsonl, .txt or a .zip of them", example: "class/file.txt" },
};

function formatsHint() {
  return h("p", { class: "small muted", id: "upload-formats" },
    h("code", null, ".csv"), ": a header row with a ", h("code", null, "text"), " column, optional ",
    h("code", null, "name"), " and ", h("code", null, "label"), " · ",
    h("code", null, ".jsonl"), ": one object a line with ", h("code", null, "text"), ", optional ",
    h("code", null, "name"), ", ", h("code", null, "label"), " · ",
    h("code", null, ".txt"), ": the whole file is one text · UTF-8 only.");
}

export function createUpload({ pid, life, onImported, kind = "image" }) {
  const what = ACCEPTS[kind] || ACCEPTS.image;
  const fileInput = h("input", {
    type: "file", id: "upload-file", name: "file", multiple: true, accept: what.accept, required: true,
    "aria-describedby": kind === "text" ? "upload-formats" : undefined,
  });
  const splitSelect = h("select", { id: "upload-split", name: "split" }, h("option", { value: "pool" }, "pool (to label)"), h("option", { value: "test" }, "test (held out)"));
  const foldersBox = h("input", { type: "checkbox", id: "upload-folders", name: "labels_from_folders" });
  const uploadBtn = h("button", { type: "submit", class: "btn btn-primary" }, "Upload");
  const uploadState = h("div", { id: "upload-state", class: "stack", "aria-live": "polite" });
  const form = h("form", { class: "stack", id: "upload-form" },
    h("div", { class: "field" }, h("label", { for: "upload-file" }, what.label), fileInput),
    kind === "text" ? formatsHint() : null,
    h("div", { class: "form-row" },
      h("div", { class: "field" }, h("label", { for: "upload-split" }, "Split"), splitSelect),
      h("label", { class: "check" }, foldersBox, "Labels from folder names (", h("code", null, what.example), ")")),
    h("div", null, uploadBtn),
    uploadState);

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!fileInput.files.length) return;
    const body = new FormData();
    for (const f of fileInput.files) body.append("file", f, f.name);
    body.append("split", splitSelect.value);
    body.append("labels_from_folders", foldersBox.checked ? "true" : "false");
    const sendBar = h("progress", { max: "100", value: "0", id: "upload-progress", "aria-label": "upload progress" });
    const sendText = h("span", { class: "small muted" }, "Sending…");
    fill(uploadState, h("div", null, h("div", { class: "small" }, "Upload"), sendBar, sendText));
    uploadBtn.disabled = true;
    let job;
    try {
      job = await upload(`/api/projects/${pid}/items`, body, (loaded, total) => {
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
    form.reset();
    await followImport(job);
  });

  async function followImport(job) {
    const jobBox = h("div", { id: "import-job" });
    uploadState.append(jobBox);
    while (!life.stopped) {
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
    if (life.stopped) return;
    uploadState.append(importReport(job, kind));
    onImported();
  }

  return { el: form };
}
