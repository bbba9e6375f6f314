// Arzani-X chat page: wires the synchronizer, the pane, the sidebar, the replies and the composer.
// One session id per open chat, shared through window.arzaniSessionSynchronizer (synchronizer.js);
// the page's state is in state.js. Message text is user data: it only reaches the DOM as text.
import { api, enc } from "./api.js";
import { bindComposer } from "./composer.js";
import { bindReplyTools, bindRetry, render, resetPane, showError, updateBadge } from "./pane.js";
import { followChats } from "./chats.js";
import { loadEarlier, regenerateReply, retryReply } from "./actions.js";
import { loadConversation, stopWatching } from "./replies.js";
import { bindSidebar, markActive, refreshSidebar } from "./sidebar.js";
import { state } from "./state.js";
import { synchronizer } from "./synchronizer.js";

// Another chat opened (or the same one again): an empty pane at once, then its messages.
function chatChanged(sync, switched) {
  if (switched) {
    const known = state.conversations.find((c) => c.id === sync.conversationId);
    resetPane({ title: known ? known.title || "Untitled" : "New chat", streaming: true });
    stopWatching();
    render({ scroll: true });
  }
  showError(null, "any");
  updateBadge();
  markActive();
  loadConversation().then(() => render({ scroll: true })).catch(showError);
}

// The stored session, if the server still knows it, and its conversation.
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

async function start() {
  synchronizer.onChange(chatChanged);
  bindSidebar({
    renamed: async (conversation) => {
      if (conversation.id === synchronizer.conversationId) await loadConversation();
    },
  });
  bindRetry(retryReply);
  bindReplyTools(regenerateReply, loadEarlier);
  bindComposer();
  document.addEventListener("visibilitychange", () => {
    // back to the tab: other tabs may have chatted meanwhile
    if (document.visibilityState === "visible" && !state.renaming) refreshSidebar().catch(() => {});
  });

  followChats(); // the sidebar follows every tab and device of this identity from now on
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
}

document.addEventListener("DOMContentLoaded", start);
