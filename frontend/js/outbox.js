// Labels waiting to reach the server. Each labelling act gets an idempotency key, is written to
// localStorage before it is sent, and is re-sent with the same key until the server answers, so
// a label is never lost (reload, network drop) and never doubled (the server replays the key).

import { ApiError, NetworkError, post } from "./api.js";

const STORAGE_KEY = "svp.outbox.v1";
const MAX_IN_FLIGHT = 4;
const MAX_BACKOFF_MS = 15000;

function load() {
  try {
    const raw = JSON.parse(localStorage.getItem(STORAGE_KEY) || "[]");
    return Array.isArray(raw) ? raw : [];
  } catch {
    return [];
  }
}

/** A fresh idempotency key; crypto.randomUUID needs a secure context, which 127.0.0.1 is. */
export function newKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

export class Outbox {
  /**
   * `user`: only this user's entries are sent (another user's stay for when they sign in again).
   * Callbacks: onSent(entry, label, ms), onRejected(entry, error), onState({offline, pending}).
   */
  constructor({ user, onSent, onRejected, onState }) {
    this.user = user;
    this.onSent = onSent;
    this.onRejected = onRejected;
    this.onState = onState;
    this.inFlight = new Set();
    this.offline = !navigator.onLine;
    this.backoff = 1000;
    this.timer = null;
    this.stopped = false;
    this.onOnline = () => {
      this.backoff = 1000;
      this.pump();
    };
    this.onStorage = (e) => {
      if (e.key === STORAGE_KEY) this.pump();
    };
    window.addEventListener("online", this.onOnline);
    window.addEventListener("storage", this.onStorage);
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    window.removeEventListener("online", this.onOnline);
    window.removeEventListener("storage", this.onStorage);
  }

  /** Entries of this user, oldest first. */
  entries() {
    return load().filter((e) => e.user === this.user);
  }

  /** Whether a label for this item is still waiting to be sent. */
  holds(itemId) {
    return this.entries().some((e) => e.item_id === itemId);
  }

  pendingCount() {
    return this.entries().length;
  }

  /** Store an act, then try to send it. */
  add(entry) {
    const all = load();
    all.push({ ...entry, user: this.user, at: Date.now() });
    localStorage.setItem(STORAGE_KEY, JSON.stringify(all));
    this.changed();
    this.pump();
  }

  remove(key) {
    localStorage.setItem(STORAGE_KEY, JSON.stringify(load().filter((e) => e.key !== key)));
    this.changed();
  }

  /** Take back an act not yet on its way; false when it is being sent right now. */
  cancel(key) {
    if (this.inFlight.has(key)) return false;
    this.remove(key);
    return true;
  }

  changed() {
    this.onState({ offline: this.offline, pending: this.pendingCount() });
  }

  /** Send what can be sent now, a few at a time. */
  pump() {
    if (this.stopped) return;
    clearTimeout(this.timer);
    this.timer = null;
    for (const entry of this.entries()) {
      if (this.inFlight.size >= MAX_IN_FLIGHT) break;
      if (this.inFlight.has(entry.key)) continue;
      this.send(entry);
    }
  }

  async send(entry) {
    this.inFlight.add(entry.key);
    const started = performance.now();
    try {
      const label = await post("/api/labels", { item_id: entry.item_id, label: entry.label, key: entry.key });
      const ms = performance.now() - started;
      this.inFlight.delete(entry.key);
      this.remove(entry.key);
      this.backoff = 1000;
      if (this.offline) {
        this.offline = false;
        this.changed();
      }
      this.onSent(entry, label, ms);
      this.pump();
    } catch (err) {
      this.inFlight.delete(entry.key);
      const retry = err instanceof NetworkError
        || (err instanceof ApiError && (err.status >= 500 || err.status === 429 || err.status === 408 || err.status === 401));
      if (retry) {
        // 401: the session ended; the label stays here and goes once the user signs in again.
        this.offline = err instanceof NetworkError;
        this.changed();
        if (!this.stopped && !this.timer) {
          this.timer = setTimeout(() => this.pump(), this.backoff);
          this.backoff = Math.min(this.backoff * 2, MAX_BACKOFF_MS);
        }
        return;
      }
      this.remove(entry.key);
      this.onRejected(entry, err);
    }
  }
}
