// The batch of a round as thumbnails with rank, score and the proxy's suggestion.
// Depends on: ../api.js, ../dom.js.

import { get } from "../api.js";
import { fill, h, pct } from "../dom.js";

const SHOWN = 200;

export function createBatch() {
  const el = h("div", { id: "batch" }, h("p", { class: "muted" }, "The batch of the latest round appears here."));
  let shown = null;

  async function show(r) {
    shown = r;
    let entries;
    try {
      entries = await get(`/api/rounds/${r.id}/selection`);
    } catch (err) {
      fill(el, h("p", { class: "error-text" }, err.message));
      return;
    }
    fill(el,
      h("p", { class: "small muted" }, `Round ${r.number}: ${entries.length} items, ranked by ${r.strategy} score.`),
      h("div", { class: "thumbs" }, entries.slice(0, SHOWN).map((e) => h("figure", { class: "thumb", "data-item-id": e.item_id },
        h("img", { src: e.image_url, alt: e.name, width: "96", height: "96" }),
        h("figcaption", null,
          h("div", { class: "mono" }, `#${e.rank} · ${e.score.toFixed(3)}`),
          h("div", null, e.suggestion && e.suggestion.label ? `${e.suggestion.label} ${pct(e.suggestion.confidence)}` : "—"))))),
      entries.length > SHOWN ? h("p", { class: "small muted" }, `Showing the first ${SHOWN} of ${entries.length}.`) : null);
  }

  /** Show the open batch (or the last completed one) unless the user chose another that still exists. */
  function follow(rounds) {
    const open = rounds.find((r) => r.status === "labeling") || rounds.find((r) => r.status === "completed");
    if (open && (!shown || shown.id === open.id || !rounds.some((r) => r.id === shown.id))) show(open);
  }

  return { el, show, follow };
}
