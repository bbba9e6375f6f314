// The sources of "something changed": a poller (runs a tick every interval while wanted, backing
// off on failures and honouring Retry-After) and resumable event streams (Server-Sent Events: the
// open chat's tokens and replies; every chat's changes for the sidebar). The poller alone is
// enough; with a stream live it only backs it up, slower. replies.js drives them.
import { enc } from "./api.js";
import { showError } from "./pane.js";

export const POLL_MS = 700; // while a reply is awaited and no event stream is live
export const BACKSTOP_POLL_MS = 3000; // while the event stream is live: events are hints, the database is the truth
const MAX_BACKOFF_MS = 10000;

export class Poller {
  constructor(tick) {
    this.tick = tick;
    this.timer = null;
    this.busy = false;
    this.wanted = false;
    this.intervalMs = POLL_MS;
    this.failures = 0;
    this.retryAfterMs = 0;
  }

  start(intervalMs) {
    this.intervalMs = intervalMs;
    this.wanted = true;
    if (this.timer === null && !this.busy) this.schedule();
  }

  stop() {
    this.wanted = false;
    clearTimeout(this.timer);
    this.timer = null;
    this.failures = 0;
  }

  schedule() {
    const backoff = this.failures ? Math.min(this.intervalMs * 2 ** this.failures, MAX_BACKOFF_MS) : this.intervalMs;
    this.timer = setTimeout(() => this.run(), Math.max(backoff, this.retryAfterMs));
    this.retryAfterMs = 0;
  }

  async run() {
    this.timer = null;
    this.busy = true;
    try {
      await this.tick();
      this.failures = 0;
      showError(null, "poll");
    } catch (error) {
      this.failures += 1;
      this.retryAfterMs = error.retryAfterMs || 0;
      showError(error, "poll");
    } finally {
      this.busy = false;
    }
    if (this.wanted && this.timer === null) this.schedule();
  }
}

// An EventSource that resumes exactly: it follows one event log (a session's, or the user's) and
// keeps the id of the last event it received. The browser's own reconnects send that id back as
// Last-Event-ID; when the stream must be opened anew (the server refused a reconnect: a restart,
// a 503, a 429), `?after=` carries it. open() of another log starts afresh (a session's log is
// then replayed from its start, so the page rebuilds a reply being written from its first token).
// handlers: one per event name, called with (data, id); ready and reset always; lost() on errors.
export class LiveStream {
  constructor(names, handlers) {
    this.names = ["ready", "reset", ...names];
    this.handlers = handlers;
    this.source = null;
    this.url = null;
    this.position = null;
    this.live = false;
    this.failures = 0;
    this.retryTimer = null;
  }

  get usable() { return typeof window.EventSource === "function"; }

  open(url) {
    if (this.url === url && (this.source || this.retryTimer)) return;
    this.close();
    this.url = url;
    this.position = null;
    this.connect();
  }

  connect() {
    const after = this.position ? `${this.url.includes("?") ? "&" : "?"}after=${enc(this.position)}` : "";
    const source = new EventSource(this.url + after);
    this.source = source;
    for (const name of this.names) {
      source.addEventListener(name, (event) => {
        if (this.source !== source) return; // a stream we closed
        if (event.lastEventId) this.position = event.lastEventId;
        let data = {};
        try { data = JSON.parse(event.data || "{}"); } catch { /* a hint only */ }
        if (name === "ready") {
          this.live = true;
          this.failures = 0;
        }
        const handler = this.handlers[name];
        if (handler) handler(data, event.lastEventId);
      });
    }
    source.addEventListener("error", () => {
      if (this.source !== source) return;
      this.live = false; // the EventSource reconnects by itself (with Last-Event-ID)...
      if (source.readyState === EventSource.CLOSED) { // ...unless the server refused: we do, later
        this.source = null;
        this.failures += 1;
        const delay = Math.min(1000 * 2 ** this.failures, 30000);
        this.retryTimer = setTimeout(() => {
          this.retryTimer = null;
          if (this.url && !this.source) this.connect();
        }, delay);
      }
      if (this.handlers.lost) this.handlers.lost();
    });
  }

  close() {
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    if (this.source) this.source.close();
    this.source = null;
    this.url = null;
    this.live = false;
  }

  status() { return { url: this.url, live: this.live, position: this.position }; }
}

// Event ids are Redis Stream ids, "MS-SEQ": true if `a` comes after `b` in the log.
export function idAfter(a, b) {
  const [am, as] = String(a).split("-").map(Number);
  const [bm, bs] = String(b).split("-").map(Number);
  return am > bm || (am === bm && as > bs);
}
