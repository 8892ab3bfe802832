// The annotator's labelling view: the batch one item at a time or as a grid, keys for classes,
// the proxy's suggestion pre-selected, undo, skip, prefetching, and an outbox that survives
// reloads. This module puts the page together; each concern has its own module in ../label/,
// and their calls go one way only, lower to higher never:
//
//   item.js, suggest.js, keymap.js   what an item looks like, the suggestion, the key map
//   queue.js   leases, prefetching, the round and its progress      (reads the outbox)
//   acts.js    label, skip, undo, handing labels to the outbox       (calls the queue)
//   view.js    layout and rendering; its buttons call acts and queue
//   keys.js    the keyboard; calls acts and view
//
// The queue and the acts say what changed through `notify`, which this file passes on to the
// view; the outbox's answers reach the acts through the handlers wired here.

import { NetworkError, get } from "../api.js";
import { createActs } from "../label/acts.js";
import { bindKeys } from "../label/keys.js";
import { classKeys } from "../label/keymap.js";
import { createQueue } from "../label/queue.js";
import { createView } from "../label/view.js";
import { Outbox } from "../outbox.js";

const EMPTY_POLL_MS = 10000;
const PROGRESS_POLL_MS = 15000;

export async function renderLabel(main, ctx, pidText) {
  const pid = Number(pidText);
  main.classList.add("label-page");
  const project = await get(`/api/projects/${pid}`);
  const state = {
    round: null,
    latest: null, // the project's newest round, whatever its status
    queue: [], // leased entries, the one on screen first
    handled: new Set(), // items labelled (or being labelled) on this page
    // Skipped on this tab (kept over a reload): the server passes them over for this user a while.
    skipped: new Set(JSON.parse(sessionStorage.getItem(`svp.skipped.${pid}`) || "[]")),
    acts: [], // undo stack: {items: [{entry, key, labelId, undo}], }
    fetching: null,
    exhausted: false,
    mode: localStorage.getItem("svp.label-mode") === "grid" ? "grid" : "single",
    selected: new Set(),
    anchor: 0,
    focus: 0,
    done: null, // labelled items of the round's batch, from the server plus acts since
    total: null,
    offline: !navigator.onLine,
    pending: 0,
    stopped: false,
    lastShown: null,
  };
  const keys = classKeys(project.classes);
  // The view is made last, but nothing is notified before it exists (the first notice comes
  // from a request started below).
  let view = null;
  const notify = (what, arg) => {
    if (!view) return;
    if (what === "sync") view.renderSync();
    else if (what === "round") {
      view.renderRoundName();
      view.renderProgress();
    } else if (what === "items") view.render();
    else if (what === "empty") view.showEmpty();
    else if (what === "flash") view.flash(arg);
  };
  const outbox = new Outbox({
    user: ctx.session.user.username,
    onSent: (...args) => acts.sent(...args),
    onRejected: (...args) => acts.rejected(...args),
    onState: ({ offline, pending }) => {
      state.offline = offline;
      state.pending = pending;
      notify("sync");
    },
  });
  const queue = createQueue({ pid, state, outbox, notify });
  const acts = createActs({ pid, state, outbox, queue, notify });
  view = createView({ main, project, state, keys, queue, acts });
  const unbindKeys = bindKeys({ state, classes: project.classes, keys, view, acts, main });
  const timers = [];

  const onNetChange = () => {
    state.offline = !navigator.onLine;
    view.renderSync();
    if (navigator.onLine && state.queue.length === 0) queue.checkAgain();
  };
  window.addEventListener("online", onNetChange);
  window.addEventListener("offline", onNetChange);

  // ---- start ----
  view.keyHelp();
  view.renderSync();
  view.showLoading();
  // Labels left in the outbox by an earlier page go first, with their original keys. Their items
  // count as handled here: a queue answer read on the server just before such a label landed
  // can still hold the item after the outbox has let it go.
  for (const e of outbox.entries()) if (e.project_id === pid) state.handled.add(e.item_id);
  outbox.pump();
  await queue.refreshRound().catch((err) => {
    if (!(err instanceof NetworkError)) throw err;
  });
  await queue.topUp();
  if (state.queue.length) {
    await state.queue[0].ready;
    view.render();
  } else {
    view.showEmpty();
  }
  queue.ensure();

  timers.push(setInterval(() => {
    if (state.queue.length === 0 && !state.fetching) queue.checkAgain();
  }, EMPTY_POLL_MS));
  timers.push(setInterval(() => {
    if (state.queue.length && document.visibilityState === "visible") queue.refreshRound().catch(() => {});
  }, PROGRESS_POLL_MS));

  return () => {
    state.stopped = true;
    outbox.stop();
    for (const t of timers) clearInterval(t);
    unbindKeys();
    window.removeEventListener("online", onNetChange);
    window.removeEventListener("offline", onNetChange);
    const banner = document.getElementById("banner");
    banner.hidden = true;
  };
}
