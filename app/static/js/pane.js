// The chat pane: the open conversation's messages, its title, the session badge and the error
// line. It draws from the state; loading and keeping it current is replies.js's.
import { $, el, fullTime } from "./dom.js";
import { awaitingReply, mergeMessages, shownMessages, state } from "./state.js";
import { synchronizer } from "./synchronizer.js";

// from: who shows the error ("action", "poll"); clearing with from="any" clears whoever's it is,
// otherwise only one's own.
export function showError(error, from = "action") {
  const box = $("chat-error");
  if (!error) {
    if (from === "any" || from === state.errorFrom) {
      box.textContent = "";
      box.hidden = true;
      state.errorFrom = null;
    }
    return;
  }
  box.textContent = error.message || String(error);
  box.hidden = false;
  state.errorFrom = from;
}

// Forget the loaded copy of the open conversation (a switch, a deleted conversation, a message
// the server put in another one). What is on its way (optimistic messages) stays; the reply text
// streamed so far goes only on a switch. The caller draws.
export function resetPane({ title, streaming = false } = {}) {
  state.server = [];
  state.earlier = [];
  state.nextBefore = null;
  state.confirmed.clear();
  if (streaming) {
    state.streaming.clear();
    state.epochs.clear();
    state.versionShown.clear();
  }
  mergeMessages();
  if (title !== undefined) state.title = title;
}

function statusLine(message) {
  return message.status === "failed" ? "failed: the agent gave up"
    : message.status === "stopped" ? "stopped"
      : message.status === "sending" ? "sending…" : "waiting for the reply…";
}

function messageItem(message) {
  const unanswered = message.role === "user" && message.status !== "answered" &&
    !(message.status === "stopped" && message.replied); // a stopped reply shows its own mark
  return el("li", {
    className: `message ${message.role} ${message.status || ""}`.trim(),
    data: { id: message.id },
    title: message.created_at ? fullTime(message.created_at) : undefined,
    text: message.content, // text only, never parsed as HTML
  },
  unanswered && el("span", { className: "status", text: statusLine(message) }),
  unanswered && message.status === "failed" && el("button", { type: "button", className: "retry", text: "Retry" }));
}

// Below a reply with several versions, ‹ k/N › to page through them; below the last reply, when
// nothing is awaited, Regenerate. A row of its own, so the reply's item holds only its text.
function replyTools(reply, last) {
  const versions = reply.versions || [];
  const shownVersion = state.versionShown.get(reply.id) || reply.current_version;
  const at = Math.max(0, versions.findIndex((v) => v.version === shownVersion));
  const paging = versions.length > 1 && [
    el("button", { type: "button", className: "version-prev", text: "‹", attrs: { "aria-label": "previous version" } }),
    el("span", { className: "version-label", text: `${at + 1}/${versions.length}` }),
    el("button", { type: "button", className: "version-next", text: "›", attrs: { "aria-label": "next version" } }),
  ];
  if (!paging && !last) return null;
  return el("li", { className: "reply-tools", data: { reply: reply.id } }, ...(paging || []),
            last && el("button", { type: "button", className: "regenerate", text: "Regenerate" }));
}

function shownText(reply) {
  const version = (reply.versions || []).find((v) => v.version === state.versionShown.get(reply.id));
  return version ? { ...reply, content: version.content, status: version.status } : reply;
}

export function render({ scroll = false } = {}) {
  const list = $("messages");
  const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  const shown = shownMessages();
  const replied = new Set(shown.filter((m) => m.role === "assistant").map((m) => m.reply_to));
  const pending = new Set(shown.filter((m) => m.role === "user" && m.status === "pending").map((m) => m.id));
  const lastUser = shown.filter((m) => m.role === "user").map((m) => m.id).pop();
  const idle = !awaitingReply();
  const items = [state.nextBefore && el("li", { className: "earlier" },
    el("button", { type: "button", className: "load-earlier", text: "Load earlier messages" }))];
  for (const message of shown) {
    // a reply being regenerated: the new version's text, once it streams, shows in its place
    if (message.role === "assistant" && pending.has(message.reply_to) && state.streaming.has(message.reply_to)) continue;
    if (message.role === "assistant") {
      items.push(messageItem(shownText(message)));
      const tools = replyTools(message, idle && message.reply_to === lastUser);
      if (tools) items.push(tools);
      continue;
    }
    items.push(messageItem(replied.has(message.id) ? { ...message, replied: true } : message));
    if (message.role === "user" && (!replied.has(message.id) || pending.has(message.id)) &&
        state.streaming.has(message.id)) {
      items.push(messageItem({ id: `draft-${message.id}`, role: "assistant", status: "streaming",
                               content: state.streaming.get(message.id), reply_to: message.id }));
    }
  }
  list.replaceChildren(...items.filter(Boolean));
  $("stop").hidden = idle; // Stop while a reply of the open chat is awaited
  $("chat-title").textContent = state.title;
  if (scroll || nearBottom) list.scrollTop = list.scrollHeight;
}

// The reply tools (one delegated handler): the version arrows page through a reply's versions
// on this page; Regenerate asks the server for a new one (regenerate(reply) resolves once asked).
export function bindReplyTools(regenerate, loadEarlier) {
  $("messages").addEventListener("click", (event) => {
    if (event.target.closest("button.load-earlier")) {
      loadEarlier().catch(showError);
      return;
    }
    const button = event.target.closest(".reply-tools button");
    if (!button) return;
    const reply = state.messages.find((m) => String(m.id) === button.closest(".reply-tools").dataset.reply);
    if (!reply) return;
    if (button.classList.contains("regenerate")) {
      button.disabled = true;
      regenerate(reply).catch((error) => { button.disabled = false; showError(error); });
      return;
    }
    const versions = (reply.versions || []).map((v) => v.version);
    const at = versions.indexOf(state.versionShown.get(reply.id) || reply.current_version);
    const next = at + (button.classList.contains("version-next") ? 1 : -1);
    if (next < 0 || next >= versions.length) return;
    state.versionShown.set(reply.id, versions[next]);
    render();
  });
}

export function updateBadge() {
  const badge = $("session-badge");
  badge.textContent = synchronizer.sessionId ? synchronizer.sessionId.slice(0, 8) : "";
  badge.title = synchronizer.sessionId ? `session ${synchronizer.sessionId}` : "no session yet";
}

// A failed message's Retry button (one delegated handler): retry(message) resolves once the
// retry is asked for; the button stays disabled until then, and again usable if it failed.
export function bindRetry(retry) {
  $("messages").addEventListener("click", (event) => {
    const button = event.target.closest("button.retry");
    if (!button) return;
    const id = button.closest(".message").dataset.id;
    const message = state.messages.find((m) => String(m.id) === id);
    if (!message) return;
    button.disabled = true;
    retry(message).catch((error) => { button.disabled = false; showError(error); });
  });
}
