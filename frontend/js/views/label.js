// The annotator's labelling view: the batch one image at a time or as a grid, keys for classes,
// the proxy's suggestion pre-selected, undo, skip, prefetching, and an outbox that survives
// reloads. This module puts the page together; each concern has its own module in ../label/:
// queue.js (leases, prefetching, the round's progress), acts.js (label, skip, undo, the outbox),
// keys.js (the keyboard) and view.js (layout and rendering). They share one `page` object:
// the project, the mutable `state`, and each other (`page.view`, `page.acts`, `page.queue`).

import { NetworkError, get } from "../api.js";
import { createActs } from "../label/acts.js";
import { bindKeys, classKeys } from "../label/keys.js";
import { createQueue } from "../label/queue.js";
import { createView } from "../label/view.js";

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
  const page = { pid, user: ctx.session.user, project, classes: project.classes, state };
  page.keys = classKeys(page.classes);
  page.view = createView(page, main);
  page.acts = createActs(page);
  page.queue = createQueue(page);
  const { view, acts, queue } = page;
  const unbindKeys = bindKeys(page);
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
  for (const e of acts.outbox.entries()) if (e.project_id === pid) state.handled.add(e.item_id);
  acts.outbox.pump();
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
    acts.outbox.stop();
    for (const t of timers) clearInterval(t);
    unbindKeys();
    window.removeEventListener("online", onNetChange);
    window.removeEventListener("offline", onNetChange);
    const banner = document.getElementById("banner");
    banner.hidden = true;
  };
}
