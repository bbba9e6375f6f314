// The session synchronizer: the one owner of "which chat is open", one session id per open chat,
// kept across reloads in localStorage. The pane, the sidebar and the sender read it; only use()
// (switch), setConversation() (the server named the session's conversation) and forget() change
// it. Exposed as window.arzaniSessionSynchronizer (getStatus() from the console or a test).
import { api, enc, storage } from "./api.js";

export const synchronizer = {
  sessionId: null,
  conversationId: null,
  pendingSends: 0,
  // The New chat being made (its promise) while POST /api/sessions is on its way: a send waits for
  // it instead of minting a second session, and a late answer never switches away from a chat the
  // user opened meanwhile (`uses` counts switches).
  making: null,
  uses: 0,
  listeners: [],
  streams: null, // () => the event streams' state and positions (replies.js)

  start() {
    this.sessionId = storage.get();
    console.info("Session synchronization: start", { session_id: this.sessionId });
    return this.sessionId;
  },

  newChat() {
    if (!this.making) {
      const uses = this.uses;
      this.making = api("POST", "/api/sessions").then(({ session_id }) => {
        if (this.uses !== uses) return this.sessionId; // another chat was opened meanwhile: it stays open
        console.info("Session synchronization: new chat", { session_id, previous: this.sessionId });
        this.use(session_id, null);
        return session_id;
      }).finally(() => { this.making = null; });
    }
    return this.making;
  },

  // The open chat's session id once any New chat on its way has answered (null: none yet).
  async settled() {
    if (this.making) {
      try { await this.making; } catch { /* the New chat failed (its button said so): the open chat stays */ }
    }
    return this.sessionId;
  },

  use(sessionId, conversationId) {
    this.uses += 1;
    const switched = sessionId !== this.sessionId;
    if (switched && this.sessionId) {
      console.info("Session synchronization: switch",
                   { from: this.sessionId, to: sessionId, conversation_id: conversationId });
    }
    this.sessionId = sessionId;
    this.conversationId = conversationId;
    storage.set(sessionId);
    this.listeners.forEach((listener) => listener(this, switched));
  },

  setConversation(conversationId) {
    this.conversationId = conversationId;
  },

  forget() {
    this.sessionId = null;
    this.conversationId = null;
    storage.set(null);
  },

  onChange(listener) { this.listeners.push(listener); },

  async getStatus() {
    const page = { session_id: this.sessionId, conversation_id: this.conversationId,
                   pending_sends: this.pendingSends, streams: this.streams ? this.streams() : null };
    let server = null;
    if (this.sessionId) {
      try {
        server = await api("GET", `/api/sessions/${enc(this.sessionId)}`);
      } catch (error) {
        if (error.status !== 404) throw error;
      }
    }
    const serverConversation = server ? server.conversation_id : null;
    const consistent = page.conversation_id === serverConversation && (!server || server.consistent === true);
    if (!consistent) {
      console.warn("Session synchronization mismatch: the page and the server disagree",
                   { page, server });
    }
    return { page, server, consistent };
  },
};
window.arzaniSessionSynchronizer = synchronizer;
