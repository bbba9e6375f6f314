// Arzani-X chat page. One session id per open chat, shared by the pane, the sidebar and the
// sender through window.arzaniSessionSynchronizer; kept across reloads in localStorage.
// Identity is the signed cookie the page set on its first visit; every call is same-origin.
"use strict";

(() => {
  const STORAGE_KEY = "arzani.session_id";
  const POLL_MS = 700;

  // -- the API ---------------------------------------------------------------------------
  async function api(method, path, body) {
    const options = { method, headers: {}, credentials: "same-origin" };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    const data = response.status === 204 ? null : await response.json().catch(() => null);
    if (!response.ok) {
      const error = new Error((data && data.error && data.error.message) || `HTTP ${response.status}`);
      error.status = response.status;
      error.code = data && data.error && data.error.code;
      throw error;
    }
    return data;
  }

  // -- the session synchronizer ----------------------------------------------------------
  const synchronizer = {
    sessionId: null,
    conversationId: null,
    pendingSends: 0,
    listeners: [],

    start() {
      this.sessionId = localStorage.getItem(STORAGE_KEY);
      console.info("Session synchronization: start", { session_id: this.sessionId });
      return this.sessionId;
    },

    async newChat() {
      const { session_id } = await api("POST", "/api/sessions");
      this.use(session_id, null);
      console.info("Session synchronization: new chat", { session_id });
      return session_id;
    },

    use(sessionId, conversationId) {
      this.sessionId = sessionId;
      this.conversationId = conversationId;
      localStorage.setItem(STORAGE_KEY, sessionId);
      this.listeners.forEach((listener) => listener(this));
    },

    onChange(listener) { this.listeners.push(listener); },

    async getStatus() {
      const page = { session_id: this.sessionId, conversation_id: this.conversationId,
                     pending_sends: this.pendingSends };
      let server = null;
      if (this.sessionId) {
        try {
          server = await api("GET", `/api/sessions/${encodeURIComponent(this.sessionId)}`);
        } catch (error) {
          if (error.status !== 404) throw error;
        }
      }
      const serverConversation = server ? server.conversation_id : null;
      const consistent = page.conversation_id === serverConversation && (!server || server.consistent);
      if (!consistent) {
        console.warn("Session synchronization mismatch: the page and the server disagree",
                     { page, server });
      }
      return { page, server, consistent };
    },
  };
  window.arzaniSessionSynchronizer = synchronizer;

  // -- the page ----------------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);
  let messages = [];
  let pollTimer = null;
  let inFlight = null; // { content, clientMessageId }: a double click re-sends the same id

  function showError(error) {
    const box = $("chat-error");
    box.textContent = error ? error.message : "";
    box.hidden = !error;
  }

  function shortTime(iso) {
    const when = new Date(iso);
    const today = new Date().toDateString() === when.toDateString();
    return today ? when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" })
                 : when.toLocaleDateString();
  }

  function renderMessages() {
    const list = $("messages");
    list.replaceChildren(...messages.map((message) => {
      const item = document.createElement("li");
      item.className = `message ${message.role} ${message.status}`;
      item.dataset.id = message.id;
      item.textContent = message.content; // text only, never parsed as HTML: it is user data
      if (message.role === "user" && message.status !== "answered") {
        const status = document.createElement("span");
        status.className = "status";
        status.textContent = message.status === "failed" ? "failed: the agent gave up"
                           : message.status === "sending" ? "sending…" : "waiting for the reply…";
        item.append(status);
      }
      return item;
    }));
    list.scrollTop = list.scrollHeight;
  }

  async function renderSidebar() {
    const conversations = [];
    let cursor = null;
    do {
      const page = await api("GET", `/api/conversations?limit=50${cursor ? `&cursor=${cursor}` : ""}`);
      conversations.push(...page.conversations);
      cursor = page.next_cursor;
    } while (cursor && conversations.length < 500);
    $("sidebar-empty").hidden = conversations.length > 0;
    $("conversation-list").replaceChildren(...conversations.map((conversation) => {
      const item = document.createElement("li");
      item.className = "conversation-item";
      if (conversation.session_id === synchronizer.sessionId) item.classList.add("active");
      item.dataset.sessionId = conversation.session_id;
      item.dataset.conversationId = conversation.id;
      const time = document.createElement("span");
      time.className = "time";
      time.textContent = shortTime(conversation.updated_at);
      const title = document.createElement("div");
      title.className = "title";
      title.textContent = conversation.title || "Untitled";
      const snippet = document.createElement("div");
      snippet.className = "snippet";
      snippet.textContent = conversation.last_message ? conversation.last_message.content : "";
      item.append(time, title, snippet);
      item.addEventListener("click", () => {
        synchronizer.use(conversation.session_id, conversation.id);
        $("sidebar").classList.remove("open");
      });
      return item;
    }));
  }

  async function loadConversation() {
    if (!synchronizer.conversationId) {
      messages = [];
      $("chat-title").textContent = "New chat";
      renderMessages();
      return;
    }
    const conversation = await api("GET", `/api/conversations/${synchronizer.conversationId}`);
    $("chat-title").textContent = conversation.title || "Untitled";
    const sending = messages.filter((m) => m.status === "sending");
    messages = conversation.messages.concat(sending);
    renderMessages();
    schedulePoll();
  }

  // Replies arrive without a reload: poll while a user message waits for its reply.
  function schedulePoll() {
    clearTimeout(pollTimer);
    const waiting = messages.some((m) => m.role === "user" && (m.status === "pending" || m.status === "sending"));
    if (!waiting) return;
    pollTimer = setTimeout(async () => {
      const before = messages.filter((m) => m.role === "assistant").length;
      try {
        await loadConversation();
        if (messages.filter((m) => m.role === "assistant").length !== before) await renderSidebar();
      } catch (error) {
        showError(error);
        schedulePoll();
      }
    }, POLL_MS);
  }

  async function send(content) {
    if (!synchronizer.sessionId) await synchronizer.newChat();
    if (!inFlight || inFlight.content !== content) {
      inFlight = { content, clientMessageId: crypto.randomUUID() };
    }
    const { clientMessageId } = inFlight;
    const sessionId = synchronizer.sessionId;
    console.info("Session synchronization: send", { session_id: sessionId, client_message_id: clientMessageId });
    messages.push({ id: `local-${clientMessageId}`, role: "user", content, status: "sending" });
    renderMessages();
    synchronizer.pendingSends += 1;
    $("send").disabled = true;
    try {
      const answer = await api("POST", `/api/sessions/${encodeURIComponent(sessionId)}/messages`,
                               { content, client_message_id: clientMessageId });
      messages = messages.filter((m) => m.id !== `local-${clientMessageId}`);
      if (synchronizer.conversationId && synchronizer.conversationId !== answer.conversation_id) {
        console.warn("Session synchronization mismatch: the server put the message in another conversation",
                     { page: synchronizer.conversationId, server: answer.conversation_id });
      }
      synchronizer.conversationId = answer.conversation_id;
      inFlight = null;
      $("content").value = "";
      showError(null);
      await loadConversation();
      await renderSidebar();
    } catch (error) {
      messages = messages.filter((m) => m.id !== `local-${clientMessageId}`);
      renderMessages();
      showError(error); // inFlight kept: sending again reuses the same client_message_id
    } finally {
      synchronizer.pendingSends -= 1;
      $("send").disabled = false;
    }
  }

  async function resume() {
    const sessionId = synchronizer.start();
    if (!sessionId) return;
    try {
      const status = await api("GET", `/api/sessions/${encodeURIComponent(sessionId)}`);
      synchronizer.conversationId = status.conversation_id;
    } catch (error) {
      if (error.status !== 404) throw error; // a session with no message yet (or not ours)
    }
    $("session-badge").textContent = sessionId.slice(0, 8);
    await loadConversation();
  }

  document.addEventListener("DOMContentLoaded", async () => {
    synchronizer.onChange(async (sync) => {
      inFlight = null;
      $("session-badge").textContent = sync.sessionId ? sync.sessionId.slice(0, 8) : "";
      document.querySelectorAll(".conversation-item").forEach((item) =>
        item.classList.toggle("active", item.dataset.sessionId === sync.sessionId));
      try { await loadConversation(); } catch (error) { showError(error); }
    });
    $("new-chat").addEventListener("click", () => synchronizer.newChat().catch(showError));
    $("toggle-sidebar").addEventListener("click", () => $("sidebar").classList.toggle("open"));
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      const content = $("content").value;
      if (content.trim() && !$("send").disabled) send(content);
    });
    $("content").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey) {
        event.preventDefault();
        $("composer").requestSubmit();
      }
    });
    try {
      await resume();
      await renderSidebar();
    } catch (error) {
      showError(error);
    }
  });
})();
