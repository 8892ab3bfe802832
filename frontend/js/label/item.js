// How an item appears in the labelling view: the one place that turns a queue entry into what is
// shown, on the stage (one by one) and in a grid tile alike. An image is fetched and decoded
// ahead; a text item (the server sends `text` and no `image_url`) is its text, set as
// textContent and never as markup, so `<b>` in a review is the four characters it is.
// Depends on nothing.

/** Whether a queue or batch entry is a text item (DESIGN 4c: text, no image). */
export function isText(entry) {
  return typeof entry.text === "string" && !entry.image_url;
}

/** What a grid tile or the stage's caption calls the item. */
export function itemName(entry) {
  return entry.name || `item ${entry.item_id}`;
}

// A tile shows the first lines only (six, clamped in app.css): about as many characters as fit.
const TILE_CHARS = 240;

/** What a text tile shows of its text, on one line: the start of the tile's accessible name,
 *  which must hold all of its visible words (WCAG 2.5.3). */
export function tileText(entry) {
  return entry.text.slice(0, TILE_CHARS).replace(/\s+/g, " ").trim();
}

function textPanel(entry) {
  // A div, not a <p>: the text keeps its own line breaks (white-space: pre-wrap in app.css). It
  // scrolls inside the stage when long, so it takes focus (Tab, then the arrows scroll it) and
  // says what it is; the keys still act on it (it is no control).
  const box = document.createElement("div");
  box.className = "text-item";
  box.tabIndex = 0;
  box.setAttribute("role", "region");
  box.setAttribute("aria-label", `Text of ${itemName(entry)}`);
  box.dataset.itemId = String(entry.item_id);
  box.textContent = entry.text;
  return box;
}

function textTile(entry) {
  const box = document.createElement("div");
  box.className = "text-tile";
  box.dataset.itemId = String(entry.item_id);
  box.textContent = entry.text.slice(0, TILE_CHARS);
  return box;
}

/**
 * The entry's element, made once and kept on the entry (`entry.el`), with `entry.ready` settling
 * once it can be shown at once: an image is fetched and decoded ahead, so showing it costs a frame;
 * a text is ready as soon as it is made.
 */
export function itemElement(entry) {
  if (entry.el) return entry.el;
  if (isText(entry)) {
    entry.el = textPanel(entry);
    entry.decoded = true;
    entry.ready = Promise.resolve();
    return entry.el;
  }
  const img = new Image();
  img.alt = `Item ${entry.name || entry.item_id}`;
  img.decoding = "async";
  img.draggable = false;
  img.dataset.itemId = String(entry.item_id);
  img.src = entry.image_url;
  entry.el = img;
  entry.ready = img.decode().then(
    () => {
      // Small images are scaled up with hard pixel edges instead of a blur.
      if (img.naturalWidth < 256 && img.naturalHeight < 256) img.classList.add("pixelated");
      entry.decoded = true;
    },
    () => {
      entry.broken = true;
    },
  );
  return img;
}

/**
 * What a grid tile shows of the entry: the image itself (the same decoded element as on the
 * stage), or the first lines of a text (the stage's panel scrolls and takes focus, which a tile,
 * itself an option of the grid, must not hold inside it).
 */
export function tileElement(entry) {
  if (!isText(entry)) return itemElement(entry);
  if (!entry.tileEl) entry.tileEl = textTile(entry);
  return entry.tileEl;
}

/** Start preparing an entry's element (once); returns the entry. */
export function preload(entry) {
  itemElement(entry);
  return entry;
}
