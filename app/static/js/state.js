// The page's state, all in one place: what the pane shows, the sidebar's list, the sender's
// draft, and the counters that drop stale answers. Which chat is open is not here: that is the
// synchronizer's. The functions below derive from the state; none touches the DOM.
import { synchronizer } from "./synchronizer.js";

export const state = {
  // the open conversation
  server: [], // the last loaded copy of its messages, oldest first
  confirmed: new Map(), // id -> message the server gave us (send answer, reply event) not yet in `server`
  optimistic: [], // user messages on their way: {id: "local-…", sessionId, role, content, status: "sending"}
  streaming: new Map(), // user message id -> reply text written so far (token events)
  epochs: new Map(), // user message id -> the id of the `start` event of the attempt being shown
  messages: [], // server + confirmed, merged
  versionShown: new Map(), // reply id -> the version the arrows show (absent: the current one)
  earlier: [], // once "Load earlier messages" was used: the messages kept in front of the latest page (oldest first)
  nextBefore: null, // the `before` of the page further back, null: the first message is shown
  title: "New chat",
  // Loads can overlap (poller, events, sends): each carries a number, and an answer older than
  // one already shown, or for a chat no longer open, is dropped. The sidebar's likewise.
  loads: { seq: 0, shown: 0 },
  // the sidebar
  conversations: [], // newest activity first, one entry per conversation
  listed: [], // the conversations the sidebar's items were drawn from
  sidebarLoads: { seq: 0, shown: 0 },
  renaming: false, // a title is being edited: the list is not redrawn under the user's fingers
  // the composer
  sending: false,
  // The words being sent and their client_message_id: the id stays with the words until the
  // server has them, so a second submit of the same words (a double click, a retry after an
  // error) carries the same id and the server answers with the first message instead of a new one.
  draft: null,
  // the error line: who showed it ("action", "poll"), so a poll that succeeds clears only its own
  errorFrom: null,
};

export function mergeMessages() {
  // The server's copy wins, unless we hold a newer version of a reply (a regenerated one's event).
  const loaded = new Map(state.server.map((m) => [m.id, m]));
  for (const [id, m] of state.confirmed) {
    const server = loaded.get(id);
    if (server && !((m.current_version || 0) > (server.current_version || 0))) state.confirmed.delete(id);
    // Older than the oldest loaded message while older ones are not loaded: a replayed event (the
    // session's log is replayed from its start when the stream opens), or one the latest page
    // has moved past. Shown, it would stand alone in front of a gap, its status as the event had
    // it (a long-answered message "waiting for the reply…"), and stay: no loaded page is read
    // that would replace it. "Load earlier messages" brings it with its neighbours.
    if (state.nextBefore && id < state.nextBefore) state.confirmed.delete(id);
  }
  const merged = state.server.filter((m) => !state.confirmed.has(m.id)).concat([...state.confirmed.values()])
    .sort((a, b) => a.id - b.id);
  // A reply we heard of (an event) answers its user message, even if the loaded copy is older; a
  // reply already in the loaded copy beside a pending message is one being regenerated.
  const replied = new Set([...state.confirmed.values()].filter((m) => m.role === "assistant").map((m) => m.reply_to));
  state.messages = merged.map((m) => (m.role === "user" && m.status === "pending" && replied.has(m.id)
    ? { ...m, status: "answered" } : m));
  for (const m of state.messages) {
    if (m.role === "user" && m.status !== "pending") {
      state.streaming.delete(m.id);
      state.epochs.delete(m.id);
    }
  }
}

// The open chat's messages and its own optimistic ones, as the pane shows them.
export function shownMessages() {
  return state.messages.concat(state.optimistic.filter((m) => m.sessionId === synchronizer.sessionId));
}

export function awaitingReply() {
  return state.messages.some((m) => m.role === "user" && m.status === "pending") ||
    state.optimistic.some((m) => m.sessionId === synchronizer.sessionId);
}

export function replyState() {
  return state.messages.map((m) => `${m.id}:${m.status}`).join(",");
}
