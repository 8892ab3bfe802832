// The batch of a round as thumbnails (or, for a text project, the first lines of each text) with
// rank, score and the proxy's suggestion.
// Depends on: ../api.js, ../dom.js.

import { get } from "../api.js";
import { fill, h, pct } from "../dom.js";

const SHOWN = 200;

/** An entry's rank and score, then its suggestion, each in a `tag` element. */
function facts(e, tag) {
  return [
    h(tag, { class: "mono" }, `#${e.rank} · ${e.score.toFixed(3)}`),
    h(tag, null, e.suggestion && e.suggestion.label ? `${e.suggestion.label} ${pct(e.suggestion.confidence)}` : "—"),
  ];
}

// A text batch is read, not glanced at: the first lines of each text (textContent, never markup).
const textEntry = (e) => h("figure", { class: "text-thumb", "data-item-id": e.item_id },
  h("blockquote", { title: e.name }, e.text),
  h("figcaption", null, facts(e, "span")));

const imageEntry = (e) => h("figure", { class: "thumb", "data-item-id": e.item_id },
  h("img", { src: e.image_url, alt: e.name, width: "96", height: "96" }),
  h("figcaption", null, facts(e, "div")));

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
    const first = entries.slice(0, SHOWN);
    const texts = first.some((e) => typeof e.text === "string" && !e.image_url);
    fill(el,
      h("p", { class: "small muted" }, `Round ${r.number}: ${entries.length} items, ranked by ${r.strategy} score.`),
      h("div", { class: texts ? "text-thumbs" : "thumbs" }, first.map(texts ? textEntry : imageEntry)),
      entries.length > SHOWN ? h("p", { class: "small muted" }, `Showing the first ${SHOWN} of ${entries.length}.`) : null);
  }

  /** Show the open batch (or the last completed one) unless the user chose another that still exists. */
  function follow(rounds) {
    const open = rounds.find((r) => r.status === "labeling") || rounds.find((r) => r.status === "completed");
    if (open && (!shown || shown.id === open.id || !rounds.some((r) => r.id === shown.id))) show(open);
  }

  return { el, show, follow };
}
