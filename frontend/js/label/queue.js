// The labelling view's queue: items leased from the server ahead of the one on screen, their
// elements prepared in advance, and the round whose batch they come from with its progress.
// Depends on: ../api.js, ../dom.js, ./item.js, and the outbox it is given (read only: labels on
// their way). It never calls the view, the acts or the keys: it says what changed through
// `notify(what)` ("sync", "round", "items", "empty"), which ../views/label.js passes to the view.

import { ApiError, NetworkError, get, post } from "../api.js";
import { toast } from "../dom.js";
import { preload } from "./item.js";

// Items leased ahead of the one on screen; their images are fetched and decoded in advance.
export const SINGLE_AHEAD = 11;
export const GRID_SIZE = 24;
// Ask the server for more once this many of the items held are gone.
const REFILL_GAP = 4;
const MAX_LEASE = 100;

export function createQueue({ pid, state, outbox, notify }) {
  const unsent = () => outbox.entries().filter((e) => e.project_id === pid).length;

  function wanted() {
    return state.mode === "grid" ? GRID_SIZE + 8 : SINGLE_AHEAD + 1;
  }

  async function topUp() {
    if (state.fetching || state.stopped) return state.fetching;
    if (state.queue.length > wanted() - REFILL_GAP) return null;
    state.fetching = (async () => {
      try {
        // The server answers the caller's own live leases first, then new ones up to n. Own
        // leases are the queue plus items labelled here whose labels are still on their way, so
        // asking for the target plus those tops the queue up to the target.
        const n = Math.min(MAX_LEASE, Math.max(wanted(), state.queue.length + 1) + unsent());
        const got = await post(`/api/projects/${pid}/queue/next?n=${n}`);
        const have = new Set(state.queue.map((e) => e.item_id));
        let added = 0;
        for (const entry of got) {
          if (have.has(entry.item_id) || state.handled.has(entry.item_id) || state.skipped.has(entry.item_id)) continue;
          if (outbox.holds(entry.item_id)) continue;
          state.queue.push(preload(entry));
          have.add(entry.item_id);
          added += 1;
        }
        state.exhausted = added === 0;
        return added;
      } catch (err) {
        if (state.stopped) return 0;
        if (err instanceof NetworkError) {
          state.offline = true;
          notify("sync");
        } else if (!(err instanceof ApiError && err.status === 401)) {
          toast(`Could not fetch the next items: ${err.message}`, { bad: true });
        }
        return 0;
      } finally {
        state.fetching = null;
      }
    })();
    return state.fetching;
  }

  /** Keep the queue topped up; show the end-of-batch state when the server has nothing more. */
  async function ensure() {
    if (state.queue.length <= wanted() - REFILL_GAP) {
      await topUp();
      if (state.stopped) return;
      if (state.queue.length === 0) {
        await refreshRound().catch(() => {});
        if (state.queue.length === 0) notify("empty");
      } else if (!state.lastShown || state.mode === "grid") {
        notify("items");
      }
    }
  }

  async function checkAgain() {
    state.exhausted = false;
    await topUp();
    await refreshRound().catch(() => {});
    notify(state.queue.length ? "items" : "empty");
  }

  // ---- the round and its progress ----

  let asked = 0;

  /** The labelling round and how much of its batch is labelled, from the server. */
  async function refreshRound() {
    const ask = ++asked;
    const rounds = await get(`/api/projects/${pid}/rounds`); // newest first
    // An older answer arriving after a newer one would put an older count back.
    if (ask !== asked) return;
    state.latest = rounds[0] || null;
    // A batch whose every item is labelled completes its round: that is "done", not "no round".
    state.round = rounds.find((r) => r.status === "labeling")
      || (state.latest && state.latest.status === "completed" ? state.latest : null);
    if (state.round) {
      state.total = state.round.batch_size;
      const labelled = state.round.status === "completed" ? state.total : state.round.labeled;
      // Acts still in the outbox are not on the server yet but are done as far as the user sees.
      state.done = labelled + unsent();
    }
    notify("round");
  }

  function bumpDone(n) {
    if (state.done !== null) state.done = Math.max(0, state.done + n);
    notify("round");
  }

  return { wanted, topUp, ensure, checkAgain, refreshRound, bumpDone };
}
