// Arzani-X chat page. One session id per open chat, shared by the pane, the sidebar and the
// sender through window.arzaniSessionSynchronizer; kept across reloads in localStorage.
// Identity is the signed cookie the page set on its first visit; every call is same-origin.
// Message text is user data: it only ever reaches the DOM through textContent.
"use strict";

(() => {
  const STORAGE_KEY = "arzani.session_id";
  const POLL_MS = 700; // while a reply is awaited and no event stream is live
  const BACKSTOP_POLL_MS = 3000; // while the event stream is live: events are hints, the database is the truth
  const MAX_BACKOFF_MS = 10000;
  const SIDEBAR_PAGE = 50;
  const SIDEBAR_MAX_PAGES = 20;
  const SNIPPET_CHARS = 140;

  const $ = (id) => document.getElementById(id);
  const enc = encodeURIComponent;

  // -- small helpers -----------------------------------------------------------------------
  const storage = {
    // localStorage can be missing or throw (disabled storage, private modes): the page still works
    get() {
      try { return window.localStorage.getItem(STORAGE_KEY); } catch { return null; }
    },
    set(value) {
      try {
        if (value) window.localStorage.setItem(STORAGE_KEY, value);
        else window.localStorage.removeItem(STORAGE_KEY);
      } catch { /* not kept across reloads, nothing worse */ }
    },
  };

  // One id per user action. crypto.randomUUID exists only in secure contexts (https, localhost):
  // over plain http on a LAN address the same v4 UUID is built from getRandomValues.
  function newClientMessageId() {
    if (window.crypto && typeof window.crypto.randomUUID === "function") return window.crypto.randomUUID();
    const bytes = window.crypto.getRandomValues(new Uint8Array(16));
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
    return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
  }

  function shortTime(iso) {
    const when = new Date(iso);
    if (Number.isNaN(when.getTime())) return "";
    const seconds = (Date.now() - when.getTime()) / 1000;
    if (seconds < 60) return "now";
    if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
    const now = new Date();
    if (now.toDateString() === when.toDateString()) {
      return when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    }
    if (now.getFullYear() === when.getFullYear()) {
      return when.toLocaleDateString([], { month: "short", day: "numeric" });
    }
    return when.toLocaleDateString();
  }

  function fullTime(iso) {
    const when = new Date(iso);
    return Number.isNaN(when.getTime()) ? "" : when.toLocaleString();
  }

  // -- the API -------------------------------------------------------------------------------
  // Resolves to the JSON body; rejects with an Error carrying the API's {"error": {code, message}}.
  async function api(method, path, body) {
    const options = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, options);
    } catch {
      const error = new Error("The server cannot be reached; check the connection and try again.");
      error.status = 0;
      error.code = "network_error";
      throw error;
    }
    const data = response.status === 204 ? null : await response.json().catch(() => null);
    if (!response.ok) {
      const detail = data && data.error;
      const error = new Error((detail && detail.message) || `The server answered ${response.status}.`);
      error.status = response.status;
      error.code = (detail && detail.code) || null;
      const retryAfter = Number(response.headers.get("Retry-After"));
      if (retryAfter > 0) error.retryAfterMs = retryAfter * 1000;
      throw error;
    }
    return data;
  }

  // -- the session synchronizer --------------------------------------------------------------
  // The one owner of "which chat is open". The pane, the sidebar and the sender read it; only
  // use() (switch), setConversation() (the server named the session's conversation) and
  // forget() change it.
  const synchronizer = {
    sessionId: null,
    conversationId: null,
    pendingSends: 0,
    listeners: [],

    start() {
      this.sessionId = storage.get();
      console.info("Session synchronization: start", { session_id: this.sessionId });
      return this.sessionId;
    },

    async newChat() {
      const { session_id } = await api("POST", "/api/sessions");
      console.info("Session synchronization: new chat", { session_id, previous: this.sessionId });
      this.use(session_id, null);
      return session_id;
    },

    use(sessionId, conversationId) {
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
                     pending_sends: this.pendingSends };
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

  // -- what the pane shows -------------------------------------------------------------------
  const view = {
    server: [], // the last loaded copy of the open conversation's messages, oldest first
    confirmed: new Map(), // id -> message the server gave us (send answer, reply event) not yet in `server`
    optimistic: [], // user messages on their way: {id: "local-…", sessionId, role, content, status: "sending"}
    streaming: new Map(), // user message id -> reply text written so far (token events)
    messages: [], // server + confirmed, merged
    title: "New chat",
    conversations: [], // the sidebar
  };

  function mergeMessages() {
    const ids = new Set(view.server.map((m) => m.id));
    for (const id of view.confirmed.keys()) if (ids.has(id)) view.confirmed.delete(id);
    const merged = view.server.concat([...view.confirmed.values()]).sort((a, b) => a.id - b.id);
    // A reply we already hold answers its user message, even if the loaded copy is older.
    const replied = new Set(merged.filter((m) => m.role === "assistant").map((m) => m.reply_to));
    view.messages = merged.map((m) => (m.role === "user" && m.status === "pending" && replied.has(m.id)
      ? { ...m, status: "answered" } : m));
    for (const m of view.messages) {
      if (m.role === "user" && m.status !== "pending") view.streaming.delete(m.id);
    }
  }

  function awaitingReply() {
    return view.messages.some((m) => m.role === "user" && m.status === "pending") ||
      view.optimistic.some((m) => m.sessionId === synchronizer.sessionId);
  }

  function replyState() {
    return view.messages.map((m) => `${m.id}:${m.status}`).join(",");
  }

  let errorFrom = null;
  function showError(error, from = "action") {
    const box = $("chat-error");
    if (!error) {
      if (from === "any" || from === errorFrom) {
        box.textContent = "";
        box.hidden = true;
        errorFrom = null;
      }
      return;
    }
    box.textContent = error.message || String(error);
    box.hidden = false;
    errorFrom = from;
  }

  function messageItem(message) {
    const item = document.createElement("li");
    item.className = `message ${message.role} ${message.status || ""}`.trim();
    item.dataset.id = String(message.id);
    if (message.created_at) item.title = fullTime(message.created_at);
    item.append(document.createTextNode(message.content)); // text only, never parsed as HTML
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
        retry.addEventListener("click", () => {
          retry.disabled = true;
          retryReply(message).catch((error) => { retry.disabled = false; showError(error); });
        });
        item.append(retry);
      }
    }
    return item;
  }

  function render({ scroll = false } = {}) {
    const list = $("messages");
    const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
    const shown = view.messages.concat(view.optimistic.filter((m) => m.sessionId === synchronizer.sessionId));
    const replied = new Set(shown.filter((m) => m.role === "assistant").map((m) => m.reply_to));
    const items = [];
    for (const message of shown) {
      items.push(messageItem(message));
      if (message.role === "user" && !replied.has(message.id) && view.streaming.has(message.id)) {
        items.push(messageItem({ id: `draft-${message.id}`, role: "assistant", status: "streaming",
                                 content: view.streaming.get(message.id), reply_to: message.id }));
      }
    }
    list.replaceChildren(...items);
    $("chat-title").textContent = view.title;
    if (scroll || nearBottom) list.scrollTop = list.scrollHeight;
  }

  // -- loading the open conversation ------------------------------------------------------------
  // Loads can overlap (poller, events, sends): each carries a number, and an answer older than
  // one already shown, or for a chat no longer open, is dropped.
  let loadSeq = 0;
  let loadShown = 0;

  async function loadConversation() {
    const { sessionId, conversationId } = synchronizer;
    const seq = ++loadSeq;
    const current = () => seq > loadShown && synchronizer.sessionId === sessionId &&
      synchronizer.conversationId === conversationId;
    if (!conversationId) {
      loadShown = seq;
      view.server = [];
      mergeMessages();
      view.title = view.messages.length ? view.title : "New chat";
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
        loadShown = seq;
        synchronizer.setConversation(null);
        view.server = [];
        view.confirmed.clear();
        mergeMessages();
        view.title = "New chat";
        render();
        watchReplies();
        showError(new Error("This conversation no longer exists; your next message starts a new one."));
        return true;
      }
      throw error;
    }
    if (!current()) return false;
    loadShown = seq;
    view.server = conversation.messages;
    view.title = conversation.title || "Untitled";
    mergeMessages();
    render();
    watchReplies();
    return true;
  }

  // -- the sidebar -----------------------------------------------------------------------------
  let sidebarSeq = 0;
  let sidebarShown = 0;
  let renaming = false;
  let sidebarDeferred = false;

  async function refreshSidebar() {
    const seq = ++sidebarSeq;
    const seen = new Map(); // one entry per conversation, whatever the pages say
    let cursor = null;
    let pages = 0;
    do {
      const params = new URLSearchParams({ limit: String(SIDEBAR_PAGE) });
      if (cursor) params.set("cursor", cursor);
      const page = await api("GET", `/api/conversations?${params}`);
      for (const conversation of page.conversations) {
        if (!seen.has(conversation.id)) seen.set(conversation.id, conversation);
      }
      cursor = page.next_cursor;
      pages += 1;
    } while (cursor && pages < SIDEBAR_MAX_PAGES);
    if (seq < sidebarShown) return;
    sidebarShown = seq;
    view.conversations = [...seen.values()];
    if (renaming) {
      sidebarDeferred = true; // do not pull the rename field from under the user's fingers
      return;
    }
    renderSidebar();
  }

  function snippetOf(message) {
    if (!message) return "";
    const text = message.content.replace(/\s+/g, " ").trim().slice(0, SNIPPET_CHARS);
    return message.role === "user" ? `You: ${text}` : text;
  }

  function renderSidebar() {
    sidebarDeferred = false;
    $("sidebar-empty").hidden = view.conversations.length > 0;
    $("conversation-list").replaceChildren(...view.conversations.map((conversation) => {
      const item = document.createElement("li");
      item.className = "conversation-item";
      item.tabIndex = 0;
      item.dataset.sessionId = conversation.session_id;
      item.dataset.conversationId = conversation.id;
      if (conversation.session_id === synchronizer.sessionId) {
        item.classList.add("active");
        item.setAttribute("aria-current", "true");
      }
      const rename = document.createElement("button");
      rename.type = "button";
      rename.className = "rename-button";
      rename.title = "Rename";
      rename.setAttribute("aria-label", "Rename this conversation");
      rename.textContent = "✎";
      rename.addEventListener("click", (event) => {
        event.stopPropagation();
        renameConversation(item, conversation);
      });
      const time = document.createElement("time");
      time.className = "time";
      time.dateTime = conversation.updated_at;
      time.title = fullTime(conversation.updated_at);
      time.textContent = shortTime(conversation.updated_at);
      const title = document.createElement("div");
      title.className = "title";
      title.textContent = conversation.title || "Untitled";
      const snippet = document.createElement("div");
      snippet.className = "snippet";
      snippet.textContent = snippetOf(conversation.last_message);
      item.append(rename, time, title, snippet);
      const open = () => {
        $("sidebar").classList.remove("open");
        $("toggle-sidebar").setAttribute("aria-expanded", "false");
        synchronizer.use(conversation.session_id, conversation.id);
      };
      item.addEventListener("click", (event) => {
        if (event.target.tagName !== "INPUT") open();
      });
      item.addEventListener("keydown", (event) => {
        if (event.key === "Enter" && event.target === item) open();
      });
      return item;
    }));
  }

  function markActive() {
    document.querySelectorAll(".conversation-item").forEach((item) => {
      const active = item.dataset.sessionId === synchronizer.sessionId;
      item.classList.toggle("active", active);
      if (active) item.setAttribute("aria-current", "true");
      else item.removeAttribute("aria-current");
    });
  }

  function renameConversation(item, conversation) {
    const title = item.querySelector(".title");
    if (!title) return;
    renaming = true;
    const input = document.createElement("input");
    input.className = "rename";
    input.value = conversation.title || "";
    input.maxLength = 200;
    input.setAttribute("aria-label", "New title");
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
          await api("PATCH", `/api/conversations/${enc(conversation.id)}`, { title: value });
        } catch (error) {
          showError(error);
        }
      }
      renaming = false;
      try {
        await refreshSidebar();
        if (conversation.id === synchronizer.conversationId) await loadConversation();
      } catch (error) {
        showError(error);
      }
    };
    input.addEventListener("keydown", (event) => {
      if (event.key === "Enter") { event.preventDefault(); finish(true); }
      if (event.key === "Escape") finish(false);
    });
    input.addEventListener("click", (event) => event.stopPropagation());
    input.addEventListener("blur", () => finish(true));
  }

  // -- replies arriving --------------------------------------------------------------------------
  // Two interchangeable sources of "something changed", both driven by watchReplies(): a poller
  // (GET /api/conversations/CID every POLL_MS while a user message is pending; stops when none
  // is) and an event stream (Server-Sent Events: tokens as they are written, the reply, a
  // failure). The poller alone is enough; with the stream live it only backs it up, slower.

  class Poller {
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

  class ReplyStream {
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
      if (view.messages.some((m) => (m.id === data.reply_to && m.status === "answered") ||
                                    (m.role === "assistant" && m.reply_to === data.reply_to))) return;
      view.streaming.set(data.reply_to, (view.streaming.get(data.reply_to) || "") + data.delta);
      render();
    },
    reply: (data) => {
      const message = data.message;
      if (message && message.conversation_id === synchronizer.conversationId) {
        view.confirmed.set(message.id, message);
        view.streaming.delete(message.reply_to);
        mergeMessages();
        render();
      }
      settle();
    },
    failed: (data) => {
      view.streaming.delete(data.message_id);
      settle();
    },
    lost: () => watchReplies(),
  });

  function watchReplies() {
    if (!awaitingReply() || !synchronizer.sessionId) {
      poller.stop();
      stream.close();
      return;
    }
    if (stream.usable) stream.open(synchronizer.sessionId);
    poller.start(stream.live ? BACKSTOP_POLL_MS : POLL_MS);
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

  async function retryReply(message) {
    await api("POST", `/api/conversations/${enc(message.conversation_id)}/messages/${enc(message.id)}/retry`);
    view.streaming.delete(message.id);
    await loadConversation();
  }

  // -- sending -----------------------------------------------------------------------------------
  let sending = false;
  // The words being sent and their client_message_id: the id stays with the words until the
  // server has them, so a second submit of the same words (a double click, a retry after an
  // error) carries the same id and the server answers with the first message instead of a new one.
  let draft = null;

  function setSending(on) {
    $("send").disabled = on;
    $("composer").setAttribute("aria-busy", on ? "true" : "false");
  }

  async function send(content) {
    // Guard synchronously, before any await: a double click must not start a second send.
    if (sending) return;
    sending = true;
    setSending(true);
    synchronizer.pendingSends += 1;
    const box = $("content");
    box.value = "";
    let local = null;
    let sessionId = synchronizer.sessionId;
    try {
      if (!sessionId) sessionId = await synchronizer.newChat();
      if (!draft || draft.content !== content || draft.sessionId !== sessionId) {
        draft = { content, sessionId, clientMessageId: newClientMessageId() };
      }
      const { clientMessageId } = draft;
      console.info("Session synchronization: send", { session_id: sessionId,
                   conversation_id: synchronizer.conversationId, client_message_id: clientMessageId });
      local = { id: `local-${clientMessageId}`, sessionId, role: "user", content, status: "sending" };
      view.optimistic.push(local);
      render({ scroll: true });
      watchReplies();
      const answer = await api("POST", `/api/sessions/${enc(sessionId)}/messages`,
                               { content, client_message_id: clientMessageId });
      draft = null;
      view.optimistic = view.optimistic.filter((m) => m !== local);
      if (synchronizer.sessionId === sessionId) { // still the open chat
        if (synchronizer.conversationId && synchronizer.conversationId !== answer.conversation_id) {
          console.warn("Session synchronization mismatch: the server put the message in another conversation",
                       { page: synchronizer.conversationId, server: answer.conversation_id });
          view.server = [];
          view.confirmed.clear();
        }
        synchronizer.setConversation(answer.conversation_id);
        view.confirmed.set(answer.message.id, answer.message);
        mergeMessages();
        showError(null, "any");
        render({ scroll: true });
        await loadConversation();
      }
      await refreshSidebar();
    } catch (error) {
      if (local) view.optimistic = view.optimistic.filter((m) => m !== local);
      render();
      if (synchronizer.sessionId === sessionId && !box.value) box.value = content; // nothing typed is lost
      showError(error); // draft kept: sending the same words again reuses their client_message_id
    } finally {
      synchronizer.pendingSends -= 1;
      sending = false;
      setSending(false);
      watchReplies();
    }
  }

  // -- start ---------------------------------------------------------------------------------------
  async function resume() {
    const sessionId = synchronizer.start();
    if (sessionId) {
      try {
        const status = await api("GET", `/api/sessions/${enc(sessionId)}`);
        synchronizer.setConversation(status.conversation_id);
      } catch (error) {
        if (error.status !== 404) throw error;
        // Expired, or kept from another identity: the next message starts a fresh session.
        console.info("Session synchronization: the stored session is unknown to the server; starting afresh",
                     { session_id: sessionId });
        synchronizer.forget();
      }
    }
    updateBadge();
    await loadConversation();
  }

  function updateBadge() {
    const badge = $("session-badge");
    badge.textContent = synchronizer.sessionId ? synchronizer.sessionId.slice(0, 8) : "";
    badge.title = synchronizer.sessionId ? `session ${synchronizer.sessionId}` : "no session yet";
  }

  function toggleSidebar(open) {
    const sidebar = $("sidebar");
    const isOpen = sidebar.classList.toggle("open", open);
    $("toggle-sidebar").setAttribute("aria-expanded", String(isOpen));
  }

  document.addEventListener("DOMContentLoaded", async () => {
    synchronizer.onChange((sync, switched) => {
      if (switched) {
        view.server = [];
        view.confirmed.clear();
        view.streaming.clear();
        mergeMessages();
        stream.close();
        poller.stop();
        const known = view.conversations.find((c) => c.id === sync.conversationId);
        view.title = known ? known.title || "Untitled" : "New chat";
        render({ scroll: true });
      }
      showError(null, "any");
      updateBadge();
      markActive();
      loadConversation().then(() => render({ scroll: true })).catch(showError);
    });

    const newChat = $("new-chat");
    newChat.addEventListener("click", async () => {
      newChat.disabled = true;
      try {
        await synchronizer.newChat();
        toggleSidebar(false);
        $("content").focus();
      } catch (error) {
        showError(error);
      } finally {
        newChat.disabled = false;
      }
    });
    $("toggle-sidebar").addEventListener("click", () => toggleSidebar());
    $("chat").addEventListener("click", (event) => {
      if (!event.target.closest("#toggle-sidebar")) toggleSidebar(false); // a tap beside it closes it
    });
    $("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      const content = $("content").value;
      if (content.trim()) send(content);
    });
    $("content").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        $("composer").requestSubmit();
      }
    });
    document.addEventListener("visibilitychange", () => {
      // back to the tab: other tabs may have chatted meanwhile
      if (document.visibilityState === "visible" && !renaming) refreshSidebar().catch(() => {});
    });

    try {
      await resume();
    } catch (error) {
      showError(error);
    }
    try {
      await refreshSidebar();
    } catch (error) {
      showError(error);
    }
  });
})();
