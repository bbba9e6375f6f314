// Every chat of this identity, live: the per-user event stream (created, renamed, deleted, a
// message, a reply, a failure, a stop, from this tab or any other tab or device) keeps the sidebar current
// and reads the open chat again when it is concerned. No polling, no reload.
import { showError } from "./pane.js";
import { loadConversation, sessionStream } from "./replies.js";
import { refreshSidebar } from "./sidebar.js";
import { LiveStream } from "./stream.js";
import { synchronizer } from "./synchronizer.js";

const SIDEBAR_EVENTS = ["created", "renamed", "deleted", "message", "reply", "failed", "stopped"];
let sidebarTimer = null;

function refreshSidebarSoon() {
  if (sidebarTimer !== null) return; // a burst of events is one refresh
  sidebarTimer = setTimeout(() => {
    sidebarTimer = null;
    refreshSidebar().catch((error) => showError(error, "poll"));
  }, 50);
}

function userEvent(type) {
  return (data) => {
    console.info(`Session synchronization: ${type}`, { conversation_id: data.conversation_id,
                                                     session_id: data.session_id });
    refreshSidebarSoon();
    const openSession = data.session_id && data.session_id === synchronizer.sessionId;
    const openConversation = data.conversation_id && data.conversation_id === synchronizer.conversationId;
    if (!openSession && !openConversation) return;
    if (type === "deleted") {
      loadConversation().catch((error) => showError(error, "poll")); // shows it is gone
      return;
    }
    if (openSession && !openConversation && synchronizer.pendingSends === 0) {
      synchronizer.setConversation(data.conversation_id); // another tab started this chat
    }
    if (type === "renamed" || !sessionStream.live) loadConversation().catch((error) => showError(error, "poll"));
  };
}

const userStream = new LiveStream(SIDEBAR_EVENTS, {
  ...Object.fromEntries(SIDEBAR_EVENTS.map((type) => [type, userEvent(type)])),
  reset: () => {
    console.info("Session synchronization: reset (reading the chats again)", {});
    refreshSidebarSoon();
    loadConversation().catch((error) => showError(error, "poll"));
  },
});

export function followChats() {
  if (userStream.usable) userStream.open("/api/events");
}

synchronizer.streams = () => ({ chats: userStream.status(), session: sessionStream.status() });
