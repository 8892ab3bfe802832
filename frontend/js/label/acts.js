// The labelling view's acts: label (a class, or each image's suggestion), skip and undo, handing
// labels to the outbox that carries them to the server, never lost and never doubled.
// Depends on: ../api.js, ../dom.js, ../outbox.js, ./queue.js, ./suggest.js. It never calls the
// view or the keys: it says what changed through `notify(what, arg)` ("items" after an act, "flash"
// with a class name), which ../views/label.js passes to the view. The outbox's answers come back
// through `sent` and `rejected`, wired by ../views/label.js.

import { ApiError, NetworkError, del, post } from "../api.js";
import { toast } from "../dom.js";
import { newKey } from "../outbox.js";
import { GRID_SIZE } from "./queue.js";
import { guessOf } from "./suggest.js";

// Acts kept for undo.
const MAX_ACTS = 200;

export function createActs({ pid, state, outbox, queue, notify }) {
  // Acts not yet acknowledged, by key, whether or not they are still on the undo stack: an act
  // undone while its request was on the way is found here when the answer comes.
  const unacked = new Map();
  function findAct(key) {
    const act = unacked.get(key) || null;
    unacked.delete(key);
    return act;
  }

  /** The outbox stored a label: note its id, and undo it if the user undid it on the way. */
  function sent(entry, label, ms) {
    const act = findAct(entry.key);
    window.dispatchEvent(new CustomEvent("svp:label-sent", { detail: { key: entry.key, ms } }));
    // Once nothing is waiting, the server's count of the batch is exact: take it. (While labels
    // are on their way the page counts them itself, and cannot tell whether the server's
    // answer to a round request already included one that was in flight.)
    if (outbox.pendingCount() === 0) queue.refreshRound().catch(() => {});
    if (!act) return;
    act.labelId = label.id;
    if (act.undo) undoSent(act);
  }

  /** The server refused a label for good: say why, and let its item be offered again. */
  function rejected(entry, err) {
    const act = findAct(entry.key);
    toast(`The label “${entry.label}” was refused: ${err.message}`, { bad: true, ms: 8000 });
    // A refused label from an earlier page: its item may be offered again.
    if (!act) state.handled.delete(entry.item_id);
    else if (!act.undo) {
      state.handled.delete(entry.item_id);
      queue.bumpDone(-1);
    }
  }

  /** The item on screen, or the grid's selection (the focused image when nothing is selected). */
  function targets() {
    if (state.queue.length === 0) return [];
    if (state.mode === "single") return [state.queue[0]];
    const shown = state.queue.slice(0, GRID_SIZE);
    const chosen = shown.filter((e) => state.selected.has(e.item_id));
    return chosen.length ? chosen : [shown[state.focus] || shown[0]];
  }

  /** Label the item on screen (or the grid's selection) with `name`, or each with its suggestion. */
  function applyClass(name) {
    const items = targets();
    if (!items.length) return;
    const group = { items: [] };
    for (const entry of items) {
      // Enter takes only a pre-selected guess; a low-confidence one needs its class key.
      const guess = guessOf(entry);
      const label = name ?? (guess && guess.preselected ? guess.label : null);
      if (!label) continue;
      const key = newKey();
      const act = { entry, key, label, labelId: null, undo: false };
      group.items.push(act);
      unacked.set(key, act);
      state.handled.add(entry.item_id);
    }
    if (!group.items.length) {
      toast("No confident suggestion for this item: press a class key.");
      return;
    }
    state.acts.push(group);
    if (state.acts.length > MAX_ACTS) state.acts.shift();
    const gone = new Set(group.items.map((a) => a.entry.item_id));
    state.queue = state.queue.filter((e) => !gone.has(e.item_id));
    for (const id of gone) state.selected.delete(id);
    if (name) notify("flash", name);
    queue.bumpDone(group.items.length);
    // The queue ran dry: say "loading" while the server is asked, never a premature "done".
    if (state.queue.length === 0) state.exhausted = false;
    // Show the next image first, then hand the labels to the outbox: the user never waits.
    notify("items");
    for (const act of group.items) outbox.add({ key: act.key, item_id: act.entry.item_id, label: act.label, project_id: pid });
    queue.ensure();
  }

  function skip() {
    const items = targets();
    if (!items.length) return;
    const gone = new Set(items.map((e) => e.item_id));
    for (const id of gone) {
      state.skipped.add(id);
      sessionStorage.setItem(`svp.skipped.${pid}`, JSON.stringify([...state.skipped].slice(-500)));
      state.selected.delete(id);
      post(`/api/projects/${pid}/queue/skip`, { item_id: id }).catch(() => {
        // The lease lapses by itself if this does not arrive.
      });
    }
    state.queue = state.queue.filter((e) => !gone.has(e.item_id));
    if (state.queue.length === 0) state.exhausted = false;
    notify("items");
    queue.ensure();
  }

  async function undoSent(act) {
    try {
      await del(`/api/labels/${act.labelId}`);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) return;
      toast(`Could not undo the label “${act.label}”: ${err.message}`, { bad: true });
    }
  }

  async function undo() {
    const group = state.acts.pop();
    if (!group) {
      toast("Nothing to undo.");
      return;
    }
    for (const act of group.items) {
      if (act.labelId) {
        try {
          await del(`/api/labels/${act.labelId}`);
        } catch (err) {
          if (!(err instanceof ApiError && err.status === 404)) {
            state.acts.push(group);
            toast(err instanceof NetworkError ? "Cannot undo while offline." : `Could not undo: ${err.message}`, { bad: true });
            return;
          }
        }
      } else if (outbox.cancel(act.key)) {
        unacked.delete(act.key);
      } else {
        // On its way right now: undo it as soon as the server has it.
        act.undo = true;
      }
    }
    const back = group.items.map((a) => a.entry);
    for (const entry of back) state.handled.delete(entry.item_id);
    state.queue = [...back, ...state.queue.filter((e) => !back.includes(e))];
    state.selected = new Set(state.mode === "grid" ? back.map((e) => e.item_id) : []);
    queue.bumpDone(-back.length);
    notify("items");
    toast(`Undone: ${group.items.map((a) => a.label).join(", ")}`, { ms: 1800 });
  }

  return { applyClass, skip, undo, sent, rejected };
}
