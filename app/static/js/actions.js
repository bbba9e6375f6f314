// What the user asks of the open chat besides sending: older messages ("Load earlier messages"),
// another answer (Regenerate), another round for a failed reply (Retry). Each reads the chat again.
import { api, enc } from "./api.js";
import { render } from "./pane.js";
import { loadConversation } from "./replies.js";
import { mergeMessages, state } from "./state.js";
import { synchronizer } from "./synchronizer.js";

// "Load earlier messages": the page before the oldest shown, kept in front of the latest page.
// The page is asked for with the oldest shown message's id; if the shown copy starts elsewhere by
// the time it answers (the chat grew and a reload of the latest page moved its start), it would
// not adjoin: the page in front of the copy as it is now is asked for instead.
export async function loadEarlier() {
  const { conversationId } = synchronizer;
  const before = state.nextBefore;
  if (!conversationId || !before) return;
  const page = await api("GET", `/api/conversations/${enc(conversationId)}?before=${enc(before)}`);
  if (synchronizer.conversationId !== conversationId) return;
  if (state.nextBefore !== before) {
    await loadEarlier();
    return;
  }
  state.earlier = page.messages.concat(state.earlier);
  state.server = page.messages.concat(state.server);
  state.nextBefore = page.next_before;
  mergeMessages();
  render();
}

export async function regenerateReply(reply) {
  const userMessage = state.messages.find((m) => m.id === reply.reply_to);
  if (!userMessage) return;
  await api("POST", `/api/conversations/${enc(reply.conversation_id)}/messages/${enc(userMessage.id)}/regenerate`);
  console.info("Session synchronization: regenerate", { reply_to: userMessage.id, reply: reply.id });
  state.versionShown.delete(reply.id);
  await loadConversation();
}

export async function retryReply(message) {
  await api("POST", `/api/conversations/${enc(message.conversation_id)}/messages/${enc(message.id)}/retry`);
  state.streaming.delete(message.id);
  state.epochs.delete(message.id);
  await loadConversation();
}
