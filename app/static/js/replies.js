// Keeping the open chat current: loading it, watching for replies while one is awaited (the
// poller and the event stream of stream.js), and what follows a reply: the sidebar, and a check
// with the server that the page and the database agree.
import { api, enc } from "./api.js";
import { render, resetPane, showError } from "./pane.js";
import { refreshSidebar } from "./sidebar.js";
import { awaitingReply, mergeMessages, replyState, state } from "./state.js";
import { BACKSTOP_POLL_MS, idAfter, LiveStream, POLL_MS, Poller } from "./stream.js";
import { synchronizer } from "./synchronizer.js";

// Resolves to true once the open chat is shown, false if the answer was stale (dropped).
export async function loadConversation() {
  const { sessionId, conversationId } = synchronizer;
  const seq = ++state.loads.seq;
  const current = () => seq > state.loads.shown && synchronizer.sessionId === sessionId &&
    synchronizer.conversationId === conversationId;
  if (!conversationId) {
    state.loads.shown = seq;
    resetPane({ title: "New chat" });
    render();
    watchReplies();
    return true;
  }
  let conversation;
  try {
    conversation = await api("GET", `/api/conversations/${enc(conversationId)}`);
  } catch (error) {
    if (error.status === 404 && current()) {
      // Deleted (perhaps in another tab): the session's next message starts a new conversation.
      state.loads.shown = seq;
      synchronizer.setConversation(null);
      resetPane({ title: "New chat" });
      render();
      watchReplies();
      showError(new Error("This conversation no longer exists; your next message starts a new one."));
      return true;
    }
    throw error;
  }
  if (!current()) return false;
  state.loads.shown = seq;
  // The latest page. Once "Load earlier messages" was used, what the page held before it stays in
  // front of it: not only the earlier pages, also the old latest page's first messages, which a
  // chat that grew meanwhile pushed out of this one (keeping only the earlier pages left a gap
  // between them and this page). If more came than a page holds, the old copy ends before this
  // page begins: the gap could not be drawn, so the latest page alone is shown again.
  const first = conversation.messages.length ? conversation.messages[0].id : Infinity;
  const held = state.server.filter((m) => m.id < first);
  const adjoins = conversation.next_before === null || state.server.some((m) => m.id >= first);
  if (state.earlier.length && adjoins) {
    state.earlier = held;
  } else {
    state.earlier = [];
    state.nextBefore = conversation.next_before;
  }
  state.server = state.earlier.concat(conversation.messages);
  state.title = conversation.title || "Untitled";
  mergeMessages();
  render();
  watchReplies();
  return true;
}

const poller = new Poller(async () => {
  const before = replyState();
  if (await loadConversation() && replyState() !== before) await afterReply();
});

// A user message whose reply is no longer being written (a known message that is not pending, or
// one not loaded yet that has a reply). A pending message with a reply is being regenerated.
function answered(userMessageId) {
  const message = state.messages.find((m) => m.id === userMessageId && m.role === "user");
  if (message) return message.status !== "pending";
  return state.messages.some((m) => m.role === "assistant" && m.reply_to === userMessageId);
}

// The open chat's session log: its messages, each reply's attempts (`start`: a new epoch, whose
// text replaces any earlier attempt's), their tokens, the reply, a failure.
const stream = new LiveStream(["message", "start", "token", "reply", "failed", "stopped"], {
  ready: () => { loadConversation().catch((error) => showError(error, "poll")); }, // anything before we listened
  reset: () => {
    console.info("Session synchronization: reset (the event log moved on; reading the conversation again)",
                 { session_id: synchronizer.sessionId });
    state.streaming.clear();
    state.epochs.clear();
    loadConversation().catch((error) => showError(error, "poll"));
  },
  message: (data) => {
    const message = data.message;
    if (!message || typeof message.id !== "number") return;
    if (message.conversation_id !== synchronizer.conversationId) {
      if (synchronizer.pendingSends > 0) return; // our own send: its answer names the conversation
      synchronizer.setConversation(message.conversation_id); // another tab started this chat
      loadConversation().catch((error) => showError(error, "poll"));
      return;
    }
    const known = state.server.find((m) => m.id === message.id);
    if (known) { // replayed from the log; or a failed message retried in another tab: read it again
      if (known.status === "failed" && message.status === "pending") {
        loadConversation().catch((error) => showError(error, "poll"));
      }
      return;
    }
    state.confirmed.set(message.id, message);
    mergeMessages();
    render();
  },
  start: (data, id) => {
    if (typeof data.reply_to !== "number" || answered(data.reply_to)) return;
    state.epochs.set(data.reply_to, id);
    state.streaming.set(data.reply_to, "");
    render();
  },
  token: (data) => {
    if (typeof data.reply_to !== "number" || typeof data.delta !== "string") return;
    // A token may come before its message is shown (kept until it is), never for one answered.
    if (answered(data.reply_to)) return;
    const epoch = state.epochs.get(data.reply_to);
    if (epoch !== data.epoch) {
      if (epoch && !idAfter(data.epoch, epoch)) return; // an attempt already replaced
      state.epochs.set(data.reply_to, data.epoch); // a newer attempt: its text replaces the other's
      state.streaming.set(data.reply_to, "");
    }
    state.streaming.set(data.reply_to, (state.streaming.get(data.reply_to) || "") + data.delta);
    render();
  },
  reply: (data) => {
    const message = data.message;
    if (message && message.conversation_id === synchronizer.conversationId) {
      state.confirmed.set(message.id, message);
      state.streaming.delete(message.reply_to);
      state.epochs.delete(message.reply_to);
      mergeMessages();
      render();
    }
    settle();
  },
  failed: (data) => {
    state.streaming.delete(data.reply_to);
    state.epochs.delete(data.reply_to);
    settle();
  },
  stopped: (data) => { // the text kept is the stopped reply's (data.message), read with the conversation
    state.streaming.delete(data.reply_to);
    state.epochs.delete(data.reply_to);
    settle();
  },
  lost: () => watchReplies(),
});

export const sessionStream = stream;

// Watch while a reply is awaited in the open chat; stop when none is.
export function watchReplies() {
  if (!awaitingReply() || !synchronizer.sessionId) {
    stopWatching();
    return;
  }
  if (stream.usable) stream.open(`/api/sessions/${enc(synchronizer.sessionId)}/events`);
  poller.start(stream.live ? BACKSTOP_POLL_MS : POLL_MS);
}

export function stopWatching() {
  poller.stop();
  stream.close();
}

// A reply (or a failure) arrived: the conversation, the sidebar, and a check with the server.
async function settle() {
  try {
    await loadConversation();
    await afterReply();
  } catch (error) {
    showError(error, "poll");
  }
}

async function afterReply() {
  await refreshSidebar();
  if (synchronizer.pendingSends > 0) return;
  const status = await synchronizer.getStatus(); // warns in the console if the page and the server disagree
  const serverConversation = status.server && status.server.conversation_id;
  if (!status.consistent && serverConversation && synchronizer.pendingSends === 0 &&
      status.page.session_id === synchronizer.sessionId) {
    synchronizer.setConversation(serverConversation); // the database is the truth
    await loadConversation();
  }
}
