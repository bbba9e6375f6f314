// The sidebar: every conversation of this identity (newest activity first), the open one marked,
// a rename (✎) on each, and on a phone a panel that slides in over the chat.
import { api, enc } from "./api.js";
import { $, el, fullTime, shortTime } from "./dom.js";
import { showError } from "./pane.js";
import { state } from "./state.js";
import { synchronizer } from "./synchronizer.js";

const SIDEBAR_PAGE = 50;
const SIDEBAR_MAX_PAGES = 20;
const SNIPPET_CHARS = 140;

export async function refreshSidebar() {
  const seq = ++state.sidebarLoads.seq;
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
  if (seq < state.sidebarLoads.shown) return;
  state.sidebarLoads.shown = seq;
  state.conversations = [...seen.values()];
  if (state.renaming) return; // do not pull the rename field from under the user's fingers
  renderSidebar();
}

function snippetOf(message) {
  if (!message) return "";
  const text = message.content.replace(/\s+/g, " ").trim().slice(0, SNIPPET_CHARS);
  return message.role === "user" ? `You: ${text}` : text;
}

function conversationItem(conversation) {
  const active = conversation.session_id === synchronizer.sessionId;
  return el("li", {
    className: active ? "conversation-item active" : "conversation-item",
    tabIndex: 0,
    data: { sessionId: conversation.session_id, conversationId: conversation.id },
    attrs: active ? { "aria-current": "true" } : {},
  },
  el("button", { type: "button", className: "rename-button", title: "Rename",
                 attrs: { "aria-label": "Rename this conversation" }, text: "✎" }),
  el("time", { className: "time", dateTime: conversation.updated_at, title: fullTime(conversation.updated_at),
               text: shortTime(conversation.updated_at) }),
  el("div", { className: "title", text: conversation.title || "Untitled" }),
  el("div", { className: "snippet", text: snippetOf(conversation.last_message) }));
}

export function renderSidebar() {
  state.listed = state.conversations;
  $("sidebar-empty").hidden = state.listed.length > 0;
  $("conversation-list").replaceChildren(...state.listed.map(conversationItem));
}

export function markActive() {
  document.querySelectorAll(".conversation-item").forEach((item) => {
    const active = item.dataset.sessionId === synchronizer.sessionId;
    item.classList.toggle("active", active);
    if (active) item.setAttribute("aria-current", "true");
    else item.removeAttribute("aria-current");
  });
}

export function toggleSidebar(open) {
  const isOpen = $("sidebar").classList.toggle("open", open);
  $("toggle-sidebar").setAttribute("aria-expanded", String(isOpen));
}

function listed(item) {
  return state.listed.find((conversation) => conversation.id === item.dataset.conversationId);
}

function openConversation(conversation) {
  toggleSidebar(false);
  synchronizer.use(conversation.session_id, conversation.id);
}

// The title becomes a field: Enter or leaving it saves, Escape does not. Then the list is drawn
// again and renamed(conversation) runs (the open chat's title follows).
function rename(item, conversation, renamed) {
  const title = item.querySelector(".title");
  if (!title) return; // already being renamed
  state.renaming = true;
  const input = el("input", { className: "rename", value: conversation.title || "", maxLength: 200,
                              attrs: { "aria-label": "New title" } });
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
    state.renaming = false;
    try {
      await refreshSidebar();
      await renamed(conversation);
    } catch (error) {
      showError(error);
    }
  };
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter") { event.preventDefault(); finish(true); }
    if (event.key === "Escape") finish(false);
  });
  input.addEventListener("blur", () => finish(true));
}

async function newChat(button) {
  button.disabled = true;
  try {
    await synchronizer.newChat();
    toggleSidebar(false);
    $("content").focus();
  } catch (error) {
    showError(error);
  } finally {
    button.disabled = false;
  }
}

// New chat, the phone's toggle (a tap beside the open panel closes it), and one click and one
// keydown handler for the whole list: ✎ renames, a click or Enter on an item opens its chat (a
// click in the rename field does neither).
export function bindSidebar({ renamed }) {
  $("new-chat").addEventListener("click", (event) => newChat(event.currentTarget));
  $("toggle-sidebar").addEventListener("click", () => toggleSidebar());
  $("chat").addEventListener("click", (event) => {
    if (!event.target.closest("#toggle-sidebar")) toggleSidebar(false);
  });
  const list = $("conversation-list");
  list.addEventListener("click", (event) => {
    const item = event.target.closest(".conversation-item");
    const conversation = item && listed(item);
    if (!conversation || event.target.closest("input")) return;
    if (event.target.closest(".rename-button")) rename(item, conversation, renamed);
    else openConversation(conversation);
  });
  list.addEventListener("keydown", (event) => {
    const item = event.target.closest(".conversation-item");
    const conversation = item && listed(item);
    if (conversation && event.key === "Enter" && event.target === item) openConversation(conversation);
  });
}
