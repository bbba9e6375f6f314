// Keeping the open chat current: loading it, watching for replies while one is awaited (the
// poller and the event stream of stream.js), and what follows a reply: the sidebar, and a check
// with the server that the page and the database agree.
import { api, enc } from "./api.js";
import { render, resetPane, showError } from "./pane.js";
import { refreshSidebar } from "./sidebar.js";
import { awaitingReply, mergeMessages, replyState, state } from "./state.js";
import { BACKSTOP_POLL_MS, POLL_MS, Poller, ReplyStream } from "./stream.js";
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
  state.server = conversation.messages;
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

const stream = new ReplyStream({
  ready: () => { loadConversation().catch((error) => showError(error, "poll")); }, // anything before we listened
  token: (data) => {
    if (typeof data.reply_to !== "number" || typeof data.delta !== "string") return;
    // The stream is the open session's: a token may come before its message is shown (kept
    // until it is), never for a message already answered.
    if (state.messages.some((m) => (m.id === data.reply_to && m.status === "answered") ||
                                   (m.role === "assistant" && m.reply_to === data.reply_to))) return;
    state.streaming.set(data.reply_to, (state.streaming.get(data.reply_to) || "") + data.delta);
    render();
  },
  reply: (data) => {
    const message = data.message;
    if (message && message.conversation_id === synchronizer.conversationId) {
      state.confirmed.set(message.id, message);
      state.streaming.delete(message.reply_to);
      mergeMessages();
      render();
    }
    settle();
  },
  failed: (data) => {
    state.streaming.delete(data.message_id);
    settle();
  },
  lost: () => watchReplies(),
});

// Watch while a reply is awaited in the open chat; stop when none is.
export function watchReplies() {
  if (!awaitingReply() || !synchronizer.sessionId) {
    stopWatching();
    return;
  }
  if (stream.usable) stream.open(synchronizer.sessionId);
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

export async function retryReply(message) {
  await api("POST", `/api/conversations/${enc(message.conversation_id)}/messages/${enc(message.id)}/retry`);
  state.streaming.delete(message.id);
  await loadConversation();
}
