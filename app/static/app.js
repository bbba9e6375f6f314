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
  let live = null; // the EventSource of the current session while a reply is awaited
  let liveFailures = 0;
  const streaming = new Map(); // reply_to -> text written so far
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
    const answered = new Set(messages.filter((m) => m.role === "assistant").map((m) => m.reply_to));
    const drafts = [...streaming.entries()]
      .filter(([replyTo]) => !answered.has(replyTo))
      .map(([replyTo, text]) => ({ id: `draft-${replyTo}`, role: "assistant", status: "streaming",
                                   content: text, reply_to: replyTo }));
    list.replaceChildren(...messages.concat(drafts).map((message) => {
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
        if (message.status === "failed") {
          const retry = document.createElement("button");
          retry.type = "button";
          retry.className = "retry";
          retry.textContent = "Retry";
          retry.addEventListener("click", () => retryReply(message).catch(showError));
          item.append(retry);
        }
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
      const rename = document.createElement("button");
      rename.type = "button";
      rename.className = "rename-button";
      rename.title = "Rename";
      rename.textContent = "✎";
      rename.addEventListener("click", (event) => {
        event.stopPropagation();
        renameConversation(item, conversation);
      });
      item.append(rename, time, title, snippet);
      item.addEventListener("click", (event) => {
        if (event.target.tagName === "INPUT") return;
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
    for (const message of messages) {
      if (message.role === "assistant") streaming.delete(message.reply_to);
    }
    renderMessages();
    watchReplies();
  }

  function awaitingReply() {
    return messages.some((m) => m.role === "user" && (m.status === "pending" || m.status === "sending"));
  }

  // Replies arrive without a reload: Server-Sent Events from the worker (through Redis pub/sub)
  // while a reply is awaited; polling only when the event stream cannot be had.
  function watchReplies() {
    if (!awaitingReply()) {
      closeLive();
      clearTimeout(pollTimer);
      return;
    }
    if (typeof EventSource === "undefined" || liveFailures >= 3) {
      schedulePoll();
      return;
    }
    if (live && live.sessionId === synchronizer.sessionId) return;
    closeLive();
    live = new EventSource(`/api/sessions/${encodeURIComponent(synchronizer.sessionId)}/events`);
    live.sessionId = synchronizer.sessionId;
    live.addEventListener("ready", () => {
      liveFailures = 0;
      loadConversation().catch(showError); // anything attached before we listened
    });
    live.addEventListener("token", (event) => {
      const data = JSON.parse(event.data);
      streaming.set(data.reply_to, (streaming.get(data.reply_to) || "") + data.delta);
      renderMessages();
    });
    const settle = async () => {
      await loadConversation();
      await renderSidebar();
      await synchronizer.getStatus(); // warns in the console if the page and the server disagree
    };
    live.addEventListener("reply", () => settle().catch(showError));
    live.addEventListener("failed", () => settle().catch(showError));
    live.addEventListener("error", () => {
      // EventSource reconnects by itself after a stream ends; count only real failures
      if (live && live.readyState === EventSource.CLOSED) {
        liveFailures += 1;
        closeLive();
        watchReplies();
      }
    });
  }

  function closeLive() {
    if (live) live.close();
    live = null;
  }

  function schedulePoll() {
    clearTimeout(pollTimer);
    if (!awaitingReply()) return;
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

  async function retryReply(message) {
    await api("POST", `/api/conversations/${message.conversation_id}/messages/${message.id}/retry`);
    await loadConversation();
  }

  async function renameConversation(item, conversation) {
    const title = item.querySelector(".title");
    const input = document.createElement("input");
    input.className = "rename";
    input.value = conversation.title || "";
    input.maxLength = 200;
    title.replaceWith(input);
    input.focus();
    input.select();
    let done = false;
    const finish = async (save) => {
      if (done) return;
      done = true;
      const value = input.value.trim();
      if (save && value && value !== conversation.title) {
        try {
          await api("PATCH", `/api/conversations/${conversation.id}`, { title: value });
        } catch (error) {
          showError(error);
        }
      }
      await renderSidebar();
      if (conversation.id === synchronizer.conversationId) await loadConversation();
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") finish(true);
      if (event.key === "Escape") finish(false);
    });
    input.addEventListener("blur", () => finish(true));
  }

  let sending = false;

  async function send(content) {
    // Guard synchronously, before any await: a double click must not start a second send.
    if (sending) return;
    sending = true;
    $("send").disabled = true;
    if (!inFlight || inFlight.content !== content) {
      inFlight = { content, clientMessageId: crypto.randomUUID() };
    }
    const { clientMessageId } = inFlight;
    const localId = `local-${clientMessageId}`;
    synchronizer.pendingSends += 1;
    try {
      if (!synchronizer.sessionId) await synchronizer.newChat();
      const sessionId = synchronizer.sessionId;
      console.info("Session synchronization: send", { session_id: sessionId, client_message_id: clientMessageId });
      messages.push({ id: localId, role: "user", content, status: "sending" });
      renderMessages();
      const answer = await api("POST", `/api/sessions/${encodeURIComponent(sessionId)}/messages`,
                               { content, client_message_id: clientMessageId });
      messages = messages.filter((m) => m.id !== localId);
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
      messages = messages.filter((m) => m.id !== localId);
      renderMessages();
      showError(error); // inFlight kept: sending again reuses the same client_message_id
    } finally {
      synchronizer.pendingSends -= 1;
      sending = false;
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
      closeLive();
      streaming.clear();
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
      if (content.trim()) send(content);
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
