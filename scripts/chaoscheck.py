"""The judge of `arzani chaos` (scripts/chaos.py): the whole recorded history of a chaos run held
against what the database and Redis hold at its end, and the time to recovery of each fault.

Pure functions over plain records, so that tests can hand it histories with each kind of
violation and see it report them (a checker that cannot fail proves nothing).

What it holds the service to (CONTRACT.md, the promise):

- every accepted message (a 2xx answer to a client) is stored exactly once (by its session and
  `client_message_id`), where its answers said (`lost`, `duplicated`, `idempotency`, `moved`);
- a session has one live conversation (`split_session`);
- every user message is answered exactly once, by a reply in its own conversation, or is
  `failed` with a reason (`unanswered`, `double_reply`, `misplaced_reply`, `failed_without_reason`,
  `status_mismatch`, `orphan_reply`);
- replies are in message order within a conversation (`out_of_order`);
- a session's Redis key, when present, names the database's live conversation (`redis_key`);
- a client's retry with the same `client_message_id` and content is never refused (`refused`).
"""

from __future__ import annotations

import bisect
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field

ACCEPTED_STATUSES = (200, 202)


@dataclass(frozen=True)
class Attempt:
    """One HTTP attempt of a client at posting one message (one line of a client's record)."""

    session_id: str
    client_message_id: str
    content: str
    sent_at: float  # epoch seconds
    status: int  # 0: no answer (connection refused or reset, timeout)
    message_id: int | None = None
    conversation_id: str | None = None
    answered_at: float | None = None


@dataclass(frozen=True)
class Accepted:
    """A message some answer accepted, with what all its 2xx answers said."""

    session_id: str
    client_message_id: str
    message_ids: frozenset[int]
    conversation_ids: frozenset[str]
    first_sent_at: float
    accepted_at: float


@dataclass(frozen=True)
class StoredConversation:
    id: str
    session_id: str
    deleted: bool = False


@dataclass(frozen=True)
class StoredMessage:
    id: int
    conversation_id: str
    role: str  # "user" | "assistant"
    status: str
    reply_to: int | None = None
    client_message_id: str | None = None
    failure_reason: str | None = None
    created_at: float = 0.0  # epoch seconds


@dataclass
class Stored:
    """The database and Redis at the end of the run. `tracked`: session id -> the conversation its
    Redis key names (sessions whose key is absent, or names no conversation, are left out)."""

    conversations: list[StoredConversation]
    messages: list[StoredMessage]
    tracked: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Violation:
    kind: str
    detail: str

    def line(self) -> str:
        return f"VIOLATION {self.kind}: {self.detail}"


@dataclass
class Verdict:
    accepted: int = 0
    stored_once: int = 0
    answered: int = 0
    failed: int = 0
    failure_reasons: Counter = field(default_factory=Counter)
    replayed: int = 0  # 200 answers: a retry answered with the first message
    stored_unacknowledged: int = 0  # stored, but no client ever saw a 2xx for it (all still checked)
    violations: list[Violation] = field(default_factory=list)


def accepted_messages(attempts: list[Attempt]) -> list[Accepted]:
    """The messages at least one attempt got a 2xx for, with every such answer's ids."""
    first_sent: dict[tuple[str, str], float] = {}
    answers: dict[tuple[str, str], list[Attempt]] = defaultdict(list)
    for attempt in attempts:
        key = (attempt.session_id, attempt.client_message_id)
        first_sent[key] = min(first_sent.get(key, attempt.sent_at), attempt.sent_at)
        if attempt.status in ACCEPTED_STATUSES:
            answers[key].append(attempt)
    return [
        Accepted(session_id, client_message_id,
                 frozenset(a.message_id for a in oks), frozenset(a.conversation_id for a in oks),
                 first_sent[(session_id, client_message_id)],
                 min(a.answered_at if a.answered_at is not None else a.sent_at for a in oks))
        for (session_id, client_message_id), oks in answers.items()
    ]


def check(attempts: list[Attempt], stored: Stored) -> Verdict:
    """Every violation of the promise that the history and the final state show."""
    verdict = Verdict()
    add = verdict.violations.append
    conversations = {c.id: c for c in stored.conversations}
    users = {m.id: m for m in stored.messages if m.role == "user"}
    replies_to: dict[int, list[StoredMessage]] = defaultdict(list)
    for message in stored.messages:
        if message.role == "assistant":
            if message.reply_to in users:
                replies_to[message.reply_to].append(message)
            else:
                add(Violation("orphan_reply", f"assistant message {message.id} answers {message.reply_to}, "
                                              "which is no user message"))

    # Refusals: a client re-sends only with the same id and content, so nothing but 429 and 5xx
    # (and no answer at all) may meet it.
    for attempt in attempts:
        if 400 <= attempt.status < 500 and attempt.status != 429:
            add(Violation("refused", f"{attempt.status} for {attempt.client_message_id} in session "
                                     f"{attempt.session_id}"))
    verdict.replayed = sum(1 for a in attempts if a.status == 200)

    # Stored once, where the answers said.
    by_client_id: dict[tuple[str, str], list[StoredMessage]] = defaultdict(list)
    for message in users.values():
        conversation = conversations.get(message.conversation_id)
        if conversation is not None and message.client_message_id is not None:
            by_client_id[(conversation.session_id, message.client_message_id)].append(message)
    for (session_id, client_message_id), rows in by_client_id.items():
        if len(rows) > 1:
            add(Violation("duplicated", f"{client_message_id} of session {session_id} stored "
                                        f"{len(rows)} times: messages {sorted(m.id for m in rows)}"))
    accepted = accepted_messages(attempts)
    verdict.accepted = len(accepted)
    acknowledged = set()
    for message in accepted:
        key = (message.session_id, message.client_message_id)
        acknowledged.add(key)
        rows = by_client_id.get(key, [])
        if not rows:
            add(Violation("lost", f"{message.client_message_id} of session {message.session_id} was accepted "
                                  f"(message {sorted(message.message_ids)}) and is not stored"))
            continue
        if len(rows) == 1:
            verdict.stored_once += 1
        row = rows[0]
        if message.message_ids != {row.id}:
            add(Violation("idempotency", f"answers for {message.client_message_id} of session {message.session_id} "
                                         f"named messages {sorted(message.message_ids)}, stored as {row.id}"))
        if message.conversation_ids != {row.conversation_id}:
            add(Violation("moved", f"answers for {message.client_message_id} of session {message.session_id} "
                                   f"named conversations {sorted(message.conversation_ids)}, "
                                   f"stored in {row.conversation_id}"))
        if row.status == "answered":
            verdict.answered += 1
        elif row.status == "failed":
            verdict.failed += 1
            verdict.failure_reasons[row.failure_reason or "none"] += 1
    verdict.stored_unacknowledged = sum(len(rows) for key, rows in by_client_id.items() if key not in acknowledged)

    # One live conversation per session.
    live_of: dict[str, list[str]] = defaultdict(list)
    for conversation in stored.conversations:
        if not conversation.deleted:
            live_of[conversation.session_id].append(conversation.id)
    for session_id, ids in live_of.items():
        if len(ids) > 1:
            add(Violation("split_session", f"session {session_id} has {len(ids)} live conversations: {sorted(ids)}"))

    # Each user message answered once, in its conversation, or failed with a reason.
    for message in users.values():
        replies = replies_to.get(message.id, [])
        if len(replies) > 1:
            add(Violation("double_reply", f"message {message.id} has {len(replies)} replies: "
                                          f"{sorted(r.id for r in replies)}"))
        for reply in replies:
            if reply.conversation_id != message.conversation_id:
                add(Violation("misplaced_reply", f"reply {reply.id} to message {message.id} is in conversation "
                                                 f"{reply.conversation_id}, the message in {message.conversation_id}"))
        if message.status == "pending":
            add(Violation("unanswered", f"message {message.id} (conversation {message.conversation_id}) "
                                        "is still pending"))
        elif message.status == "failed":
            if not message.failure_reason:
                add(Violation("failed_without_reason", f"message {message.id} failed with no failure_reason"))
            if replies:
                add(Violation("status_mismatch", f"message {message.id} is failed but has a reply"))
        elif message.status == "answered" and not replies:
            add(Violation("status_mismatch", f"message {message.id} is answered but has no reply"))

    # Replies in the order of the messages they answer, within a conversation.
    answered_by_conversation: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for message_id, replies in replies_to.items():
        if len(replies) == 1:
            answered_by_conversation[users[message_id].conversation_id].append((message_id, replies[0].id))
    for conversation_id, pairs in answered_by_conversation.items():
        pairs.sort()
        for (earlier, earlier_reply), (later, later_reply) in zip(pairs, pairs[1:], strict=False):
            if later_reply < earlier_reply:
                add(Violation("out_of_order", f"conversation {conversation_id}: reply {later_reply} to message "
                                              f"{later} came before reply {earlier_reply} to message {earlier}"))

    # Redis agrees with the database.
    for session_id, conversation_id in stored.tracked.items():
        live = live_of.get(session_id, [])
        if conversation_id not in live:
            add(Violation("redis_key", f"session {session_id}'s key names {conversation_id}, "
                                       f"the database's live conversation is {live[0] if live else 'none'}"))
    return verdict


# -- time to recovery ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    kind: str
    at: float  # epoch seconds


def recovery_times(faults: list[Fault], in_flight: list[tuple[float, float]],
                   *, isolated: bool = False) -> dict[str, list[float]]:
    """Time to recovery of each fault, grouped by kind (faults that caught no message are left out).

    A message is in flight from its first POST attempt (`sent`) until its reply is attached or it
    is marked failed (`done`): `in_flight` holds one (sent, done) pair per accepted message. Each
    message is charged to the FIRST fault that happened while it was in flight (a message that
    waits through several faults is the first one's doing: the later ones found it already
    stranded). A fault's time to recovery is then the time from the fault until the last of its
    messages is done: how long the work it caught took to come out the other side.

    With `isolated`, only the faults that recovered before the next fault (of any kind) happened:
    a later fault can strand a message the earlier one had only delayed (a Redis restart loses
    the retry of a killed horse's job), and then the earlier one's figure is the later one's."""
    ordered = sorted(faults, key=lambda f: f.at)
    times = [f.at for f in ordered]
    worst: dict[int, float] = {}
    for sent, done in in_flight:
        index = bisect.bisect_left(times, sent)
        if index < len(ordered) and ordered[index].at < done:
            worst[index] = max(worst.get(index, 0.0), done - ordered[index].at)
    grouped: dict[str, list[float]] = defaultdict(list)
    for index, seconds in worst.items():
        if isolated and index + 1 < len(ordered) and ordered[index].at + seconds > ordered[index + 1].at:
            continue
        grouped[ordered[index].kind].append(seconds)
    return dict(grouped)


def p50_and_max(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), max(values)
