// How an item appears in the labelling view: the one place that turns a queue entry into what is
// shown, on the stage (one by one) and in a grid tile alike. Today every item is an image; another
// kind of item (text) gets its own branch in itemElement and nothing else changes.
// Depends on nothing.

/** What a grid tile or the stage's caption calls the item. */
export function itemName(entry) {
  return entry.name || `item ${entry.item_id}`;
}

/**
 * The entry's element, made once and kept on the entry (`entry.el`), with `entry.ready` settling
 * once it can be shown at once: an image is fetched and decoded ahead, so showing it costs a frame.
 */
export function itemElement(entry) {
  if (entry.el) return entry.el;
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

/** Start preparing an entry's element (once); returns the entry. */
export function preload(entry) {
  itemElement(entry);
  return entry;
}
