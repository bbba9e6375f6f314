// The two interchangeable sources of "something changed" in the open chat: a poller (runs a tick
// every interval while wanted, backing off on failures and honouring Retry-After) and an event
// stream (Server-Sent Events: tokens as they are written, the reply, a failure). The poller alone
// is enough; with the stream live it only backs it up, slower. replies.js drives both.
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

// handlers: ready(), token(data), reply(data), failed(data), lost()
export class ReplyStream {
  constructor(handlers) {
    this.handlers = handlers;
    this.source = null;
    this.sessionId = null;
    this.live = false;
    this.failures = 0;
  }

  get usable() { return typeof window.EventSource === "function" && this.failures < 3; }

  open(sessionId) {
    if (this.source && this.sessionId === sessionId) return;
    this.close();
    const source = new EventSource(`/api/sessions/${enc(sessionId)}/events`);
    this.source = source;
    this.sessionId = sessionId;
    const on = (name, handler) => source.addEventListener(name, (event) => {
      if (this.source !== source) return; // a stream of a chat no longer open
      let data = {};
      try { data = JSON.parse(event.data || "{}"); } catch { /* a hint only */ }
      handler(data);
    });
    on("ready", () => {
      this.live = true;
      this.failures = 0;
      this.handlers.ready();
    });
    on("token", (data) => this.handlers.token(data));
    on("reply", (data) => this.handlers.reply(data));
    on("failed", (data) => this.handlers.failed(data));
    source.addEventListener("error", () => {
      if (this.source !== source) return;
      this.live = false; // EventSource reconnects by itself after a stream ends: poll meanwhile
      if (source.readyState === EventSource.CLOSED) {
        this.failures += 1;
        this.close();
      }
      this.handlers.lost();
    });
  }

  close() {
    if (this.source) this.source.close();
    this.source = null;
    this.sessionId = null;
    this.live = false;
  }
}
