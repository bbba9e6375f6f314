// The composer: sending a message. The words show at once (optimistic), go out with a
// client_message_id, and come back as the server's message; on a failure they return to the box.
import { api, enc, newClientMessageId } from "./api.js";
import { $ } from "./dom.js";
import { render, resetPane, showError } from "./pane.js";
import { loadConversation, watchReplies } from "./replies.js";
import { refreshSidebar } from "./sidebar.js";
import { mergeMessages, state } from "./state.js";
import { synchronizer } from "./synchronizer.js";

function setSending(on) {
  $("send").disabled = on;
  $("composer").setAttribute("aria-busy", on ? "true" : "false");
}

async function send(content) {
  // Guard synchronously, before any await: a double click must not start a second send.
  if (state.sending) return;
  state.sending = true;
  setSending(true);
  synchronizer.pendingSends += 1;
  const box = $("content");
  box.value = "";
  let local = null;
  let sessionId = null;
  try {
    // Words typed after a click on New chat belong to the new chat, even if it has not answered yet.
    sessionId = await synchronizer.settled();
    if (!sessionId) sessionId = await synchronizer.newChat();
    if (!state.draft || state.draft.content !== content || state.draft.sessionId !== sessionId) {
      state.draft = { content, sessionId, clientMessageId: newClientMessageId() };
    }
    const { clientMessageId } = state.draft;
    console.info("Session synchronization: send", { session_id: sessionId,
                 conversation_id: synchronizer.conversationId, client_message_id: clientMessageId });
    local = { id: `local-${clientMessageId}`, sessionId, role: "user", content, status: "sending" };
    state.optimistic.push(local);
    render({ scroll: true });
    watchReplies();
    const answer = await api("POST", `/api/sessions/${enc(sessionId)}/messages`,
                             { content, client_message_id: clientMessageId });
    state.draft = null;
    state.optimistic = state.optimistic.filter((m) => m !== local);
    if (synchronizer.sessionId === sessionId) { // still the open chat
      if (synchronizer.conversationId && synchronizer.conversationId !== answer.conversation_id) {
        console.warn("Session synchronization mismatch: the server put the message in another conversation",
                     { page: synchronizer.conversationId, server: answer.conversation_id });
        resetPane();
      }
      synchronizer.setConversation(answer.conversation_id);
      state.confirmed.set(answer.message.id, answer.message);
      mergeMessages();
      showError(null, "any");
      render({ scroll: true });
      await loadConversation();
    }
    await refreshSidebar();
  } catch (error) {
    if (local) state.optimistic = state.optimistic.filter((m) => m !== local);
    render();
    if (synchronizer.sessionId === sessionId && !box.value) box.value = content; // nothing typed is lost
    showError(error); // draft kept: sending the same words again reuses their client_message_id
  } finally {
    synchronizer.pendingSends -= 1;
    state.sending = false;
    setSending(false);
    watchReplies();
  }
}

// Stop: the reply being written ends where it is (kept as a stopped reply), on whichever worker
// writes it; the conversation is read again to show what the server kept.
async function stop(button) {
  const sessionId = synchronizer.sessionId;
  if (!sessionId) return;
  button.disabled = true;
  try {
    const answer = await api("POST", `/api/sessions/${enc(sessionId)}/stop`);
    console.info("Session synchronization: stop", { session_id: sessionId, stopped: answer.stopped });
    if (answer.stopped) state.streaming.delete(answer.stopped.message.id);
    await loadConversation();
  } catch (error) {
    showError(error);
  } finally {
    button.disabled = false;
  }
}

// Enter sends, Shift+Enter is a new line; blank messages are not sent.
export function bindComposer() {
  $("stop").addEventListener("click", (event) => stop(event.currentTarget));
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
}
