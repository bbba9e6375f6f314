"""Runs: one generation per user message, a Stop that cannot race the worker, and what a message
sent while the assistant answers does (`if_busy`).

**One generation per message.** Before it calls the agent, a reply job claims the user message in
the database: one UPDATE that raises `attempts` and sets `claimed_by`/`claimed_until`, only while
the message is pending and no live claim of another run holds it. The claim lives in the
database, not in Redis, because it must outlive a Redis restart (a claim lost with Redis would let
a second job call the agent), and because it is the very row the reply's attach must update: the
attach commits only while the message is pending *and* still carries this claim's attempt, so a
run that was taken over (its lease lapsed) or stopped commits nothing. The attempt number is the
generation's number; the `start` event's id is its epoch on the page. The holder renews its lease
every third of `ARZANI_GENERATION_LEASE_S` (`Lease`); a claim not renewed may be taken over, and
a retry of the same RQ job takes over its own dead attempt at once.

Only the earliest pending message of a conversation is ever claimed, so replies are written in
message order, one at a time per conversation. A job that finds the earliest one claimed by a live
run leaves (that run goes on with the later messages when it is done): k messages sent in a burst
make k agent calls, not k(k+1)/2.

**Stop** is fenced where tokens are committed. The session's run key (keys.run_key) names the
generation whose tokens the log takes (`MID:ATTEMPT`, set with its `start`); each token is
appended by a script that checks it. Stop first sets it to `stopped:MID`, so no token of that
message is appended after that instant; then it reads the text the log holds (what the page
showed) and, in one transaction, marks the message `stopped` and keeps that text as its reply,
marked `stopped` too (none if no token came). The attach of a worker still writing fails on the
message's status; its next token raises GenerationStopped, and it moves on. A worker that meets a
stop mark whose Stop never finished (the web process died in between) finishes it itself, the
same way. A stopped message is not pending: no retry, sweep or recovery claims it again.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta

from redis.exceptions import RedisError
from sqlalchemy import func, select, update

from app import keys, metrics
from app.conversations import earlier_versions, message_json, replace_reply
from app.errors import Unavailable
from app.events import partial_text, stop_mark
from app.models import Conversation, FailureReason, Message, MessageRole, MessageStatus, utcnow

log = logging.getLogger("arzani.runs")

STOP_MARK_TTL_MS = 3_600_000
"""A stop mark outlives any attempt that could still try to stream the stopped message (an hour,
as a session's live log)."""


@dataclass(frozen=True)
class Claim:
    message_id: int
    attempt: int
    owner: str


BUSY = "busy"  # a live claim of another run holds the message
GONE = "gone"  # no longer pending (answered, failed, stopped)
EXHAUSTED = "exhausted"  # every attempt used: now failed


def new_owner() -> str:
    """The claim owner of a run outside RQ (a test, an operator command)."""
    return f"run-{uuid.uuid4().hex}"


def next_pending(services, conversation_id: str) -> int | None:
    """The earliest pending user message of the conversation: the only one a run may claim."""
    with services.db.read() as db:
        return next_pending_in(db, conversation_id)


def next_pending_in(db, conversation_id: str) -> int | None:
    """next_pending, inside the caller's transaction (a reply's attach looks in its own)."""
    return db.scalar(
        select(func.min(Message.id)).where(Message.conversation_id == conversation_id,
                                           Message.role == MessageRole.USER,
                                           Message.status == MessageStatus.PENDING))


def claim(services, message_id: int, owner: str) -> Claim | str:
    """Claim `message_id` for one generation (a Claim), or say why not: BUSY, GONE, or EXHAUSTED
    (its attempts are used up: it is failed now, `worker_died` unless an attempt said why)."""
    now = utcnow()
    lease = timedelta(seconds=services.settings.generation_lease_s)
    max_attempts = services.settings.reply_retries + 1
    free = (Message.claimed_until.is_(None)) | (Message.claimed_until < now) | (Message.claimed_by == owner)
    with services.db.write() as db:
        attempt = db.execute(
            update(Message)
            .where(Message.id == message_id, Message.status == MessageStatus.PENDING,
                   Message.attempts < max_attempts, free)
            .values(attempts=Message.attempts + 1, claimed_by=owner, claimed_until=now + lease)
            .returning(Message.attempts)
        ).scalar()
        if attempt is not None:
            return Claim(message_id, attempt, owner)
        exhausted = db.execute(
            update(Message)
            .where(Message.id == message_id, Message.status == MessageStatus.PENDING, free)
            .values(status=MessageStatus.FAILED, claimed_until=None,
                    failure_reason=func.coalesce(Message.failure_reason, FailureReason.WORKER_DIED))
        ).rowcount
        if exhausted:
            return EXHAUSTED
        status = db.scalar(select(Message.status).where(Message.id == message_id))
    return BUSY if status == MessageStatus.PENDING else GONE


def renew(services, held: Claim) -> bool:
    """Extend the lease; False when the claim is no longer this run's (stopped, taken over)."""
    with services.db.write() as db:
        return bool(db.execute(
            update(Message)
            .where(Message.id == held.message_id, Message.status == MessageStatus.PENDING,
                   Message.attempts == held.attempt, Message.claimed_by == held.owner)
            .values(claimed_until=utcnow() + timedelta(seconds=services.settings.generation_lease_s))
        ).rowcount)


def release(services, held: Claim) -> None:
    """The attempt ended without a reply (the agent failed): a retry may claim it at once."""
    with services.db.write() as db:
        db.execute(update(Message).where(Message.id == held.message_id, Message.attempts == held.attempt)
                   .values(claimed_until=None))


class Lease(threading.Thread):
    """Renews a claim every third of the lease while the agent writes. `lost` is set when the
    claim is no longer ours (a Stop, a takeover): the generation then stops at its next token."""

    def __init__(self, services, held: Claim):
        super().__init__(name=f"lease-{held.message_id}", daemon=True)
        self.services = services
        self.held = held
        self.lost = threading.Event()
        self._done = threading.Event()

    def run(self) -> None:
        every = self.services.settings.generation_lease_s / 3
        while not self._done.wait(every):
            try:
                if not renew(self.services, self.held):
                    self.lost.set()
                    return
            except Exception as error:  # the database blinked: the lease runs on, the attach decides
                log.warning("lease not renewed", extra={"message_id": self.held.message_id,
                                                        "error": type(error).__name__})

    def __enter__(self) -> Lease:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()


def run_of(services, session_id: str) -> str | None:
    """The session's run key: `MID:ATTEMPT`, `stopped:MID`, or None."""
    try:
        return services.redis.get(keys.run_key(session_id))
    except RedisError:
        return None


# -- Stop ---------------------------------------------------------------------------------------

def _live_conversation(db, session_id: str, user_id: int | None) -> Conversation | None:
    query = select(Conversation).where(Conversation.session_id == session_id, Conversation.deleted_at.is_(None))
    if user_id is not None:
        query = query.where(Conversation.user_id == user_id)
    return db.scalars(query).one_or_none()


def stop(services, user_id: int, session_id: str, *, missing_ok: bool = False) -> dict | None:
    """Stop the session's current reply: its earliest pending message (being written, or next).
    {"message", "reply"} of what was stopped, or None when nothing was being answered. A session
    that is not the user's is NotFound, unless `missing_ok` (an interrupting message, whose own
    post then answers for the session): then nothing happens."""
    if not missing_ok:
        services.sessions.require_owner(session_id, user_id)
    with services.db.read() as db:
        conversation = _live_conversation(db, session_id, user_id)
    if conversation is None:
        return None
    message_id = next_pending(services, conversation.id)
    if message_id is None:
        return None
    try:
        # From here the log takes no token of this message: Stop's answer comes after this.
        services.redis.set(keys.run_key(session_id), stop_mark(message_id), px=STOP_MARK_TTL_MS)
    except RedisError as error:
        raise Unavailable("Redis is unavailable: the reply could not be stopped; try again") from error
    return finish_stop(services, conversation, message_id)


def finish_stop(services, conversation: Conversation, message_id: int) -> dict | None:
    """Keep what the log holds of `message_id`'s reply as a stopped reply, and mark the message
    stopped, in one transaction (idempotent: a second call, or a worker finishing a Stop whose web
    process died, finds it no longer pending). None if it was answered or failed first."""
    try:
        text = partial_text(services.redis, conversation.session_id, message_id)
    except RedisError:
        text = ""  # the log is gone with Redis: stopped before (what we can tell of) its first token
    now = utcnow()
    with services.db.write() as db:
        current = db.scalars(select(Message).where(Message.reply_to == message_id)).one_or_none()
        # A regeneration stopped before its first token keeps the reply it had: answered again.
        back_to = MessageStatus.ANSWERED if current is not None and not text and \
            current.status == MessageStatus.COMPLETE else MessageStatus.STOPPED
        stopped = db.execute(
            update(Message)
            .where(Message.id == message_id, Message.status == MessageStatus.PENDING)
            .values(status=back_to, claimed_until=None)
        ).rowcount
        if not stopped:
            return None
        reply = None
        if text and current is not None:  # a regeneration stopped: its partial text is the new version
            reply = replace_reply(db, current, text, MessageStatus.STOPPED, now, None)
            db.execute(update(Conversation).where(Conversation.id == conversation.id).values(updated_at=now))
        elif text:
            db.execute(update(Conversation).where(Conversation.id == conversation.id)
                       .values(message_count=Conversation.message_count + 1, updated_at=now))
            reply = Message(conversation_id=conversation.id, role=MessageRole.ASSISTANT, content=text,
                            status=MessageStatus.STOPPED, reply_to=message_id, created_at=now,
                            context_upto=None)
            db.add(reply)
        db.flush()
        user_message = db.get(Message, message_id)
        earlier = earlier_versions(db, [reply.id]).get(reply.id, ()) if reply is not None else ()
        result = {"message": message_json(user_message), "reply": message_json(reply, earlier) if reply else None}
    metrics.replies_stopped.inc()
    services.events.announce(
        services.events.to_session(conversation.session_id, "stopped", reply_to=message_id, message=result["reply"]),
        services.events.to_user(conversation.user_id, "stopped", conversation_id=conversation.id,
                                session_id=conversation.session_id, reply_to=message_id, message=result["reply"]),
        settle=conversation.session_id)
    log.info("reply stopped", extra={"message_id": message_id, "conversation_id": conversation.id,
                                     "partial_chars": len(text)})
    return result
