"""Conversations and messages: storing a user message, listing, reading, renaming, deleting, and
their JSON shapes.

Functions here take the `Wiring` they need and ids, and own short transactions of their own;
they return plain dicts ready for JSON. The HTTP layer (app/api.py) only parses and translates.
Which conversation a session's message goes to is the session service's (app/sessions.py); the
reply job is enqueued through the RQ seam (app/jobqueue.py).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from app import events, jobqueue, metrics
from app.errors import (
    BadRequest,
    Conflict,
    ConversationFull,
    IdempotencyConflict,
    NotFound,
    SessionAnswering,
    SessionBusy,
)
from app.models import Conversation, Message, MessageRole, MessageStatus, ReplyVersion, utcnow

if TYPE_CHECKING:
    from app.wiring import Wiring

log = logging.getLogger("arzani.conversations")

TITLE_LENGTH = 60


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def message_json(message: Message, earlier: Iterable[ReplyVersion] = ()) -> dict:
    """A message as the API shows it. A reply lists its versions, oldest first, the current one
    (this row) last; `earlier` are the ones Regenerate replaced (reply_versions)."""
    versions: list[dict] = []
    if message.role == MessageRole.ASSISTANT:
        versions = [{"version": v.version, "content": v.content, "status": v.status, "created_at": iso(v.created_at)}
                    for v in sorted(earlier, key=lambda v: v.version)]
        versions.append({"version": message.version, "content": message.content, "status": message.status,
                         "created_at": iso(message.created_at)})
    return {
        "id": message.id,
        "conversation_id": message.conversation_id,
        "role": message.role,
        "content": message.content,
        "status": message.status,
        "reply_to": message.reply_to,
        "created_at": iso(message.created_at),
        "failure_reason": message.failure_reason,
        "context_upto": message.context_upto,
        "current_version": message.version if message.role == MessageRole.ASSISTANT else None,
        "versions": versions,
    }


def earlier_versions(db: Session, reply_ids: Iterable[int]) -> dict[int, list[ReplyVersion]]:
    """reply id -> its earlier versions, for the replies given (one query)."""
    found: dict[int, list[ReplyVersion]] = {}
    ids = list(reply_ids)
    if ids:
        for version in db.scalars(select(ReplyVersion).where(ReplyVersion.reply_id.in_(ids))):
            found.setdefault(version.reply_id, []).append(version)
    return found


def conversation_json(conversation: Conversation) -> dict:
    return {
        "id": conversation.id,
        "session_id": conversation.session_id,
        "title": conversation.title,
        "created_at": iso(conversation.created_at),
        "updated_at": iso(conversation.updated_at),
    }


@dataclass(frozen=True)
class PostedMessage:
    session_id: str
    conversation_id: str
    message: dict
    job_id: str
    created: bool  # False: the same client_message_id was posted before; this is that answer
    resolution: str  # how the session was resolved (app.sessions.ResolvedSession.how)

    def json(self) -> dict:
        return {
            "session_id": self.session_id,
            "conversation_id": self.conversation_id,
            "message": self.message,
            "job_id": self.job_id,
        }


def post_message(
    services: Wiring,
    user_id: int,
    session_id: str,
    content: str,
    client_message_id: str | None = None,
    *,
    reject_if_busy: bool = False,
    interrupt: Callable[[], object] | None = None,
) -> PostedMessage:
    """Store a user message in its session's conversation (committed), then enqueue its reply.

    `client_message_id` is idempotent per session: a retry answers with the first message even
    if its conversation was deleted since (nothing new is created), and the same id with other
    content is an IdempotencyConflict. `reject_if_busy` (if_busy=reject): SessionAnswering, and
    nothing stored, while a reply of the session is awaited. `interrupt` (if_busy=interrupt) is
    called before a new message is stored, never for a retry: a client retrying an interrupting
    message must not stop the reply to that very message."""
    if client_message_id is not None:
        original = _find_in_session(services, session_id, user_id, client_message_id)
        if original is not None:
            return _replayed(services, session_id, original, content, "replayed")
    if interrupt is not None:
        interrupt()
    for attempt in range(STALE_KEY_ATTEMPTS):
        resolved = services.sessions.resolve_recent(session_id, user_id)
        try:
            message = store_user_message(services, resolved.conversation_id, session_id, user_id,
                                         content, client_message_id, reject_if_busy=reject_if_busy)
            break
        except StaleConversation:
            if resolved.recent:  # this process's memory of the session is out of date: ask Redis
                services.sessions.recent.drop(session_id)
                continue
            # A key that keeps coming back stale is a 503 (below), never a 500.
            services.sessions.drop_stale_key(session_id, resolved.conversation_id, attempt + 1)
    else:
        raise SessionBusy("the session's conversation kept changing while the message was stored: "
                          "nothing was stored, try again")
    if message is None:  # the same client_message_id, stored at the same instant by a twin request
        existing = _find_in_session(services, session_id, user_id, client_message_id)
        return _replayed(services, session_id, existing, content, resolved.how)
    # The reply's job is saved and queued at once; RQ's bookkeeping of it waits in `along` and
    # goes to Redis with the announcements, in one round trip.
    along = jobqueue.bookkeeping_pipeline(services.queue, services.settings)
    if resolved.recent:
        # Redis was not asked before the insert: its first word is the enqueue. Redis down is
        # then "nothing stored" still, as when the touch fails: the message is withdrawn.
        job_id = _enqueue_or_withdraw(services, session_id, message, along)
        along = along if along is not None else services.redis.pipeline(transaction=False)
        renewal = services.sessions.renew_along(along, session_id, user_id)
    else:
        job_id = jobqueue.enqueue_reply_or_leave_to_sweeper(services.queue, services.settings, message, along)
    metrics.messages_accepted.inc()
    shown = message_json(message)
    answers = _announce_message(services, user_id, session_id, resolved, shown, along)
    how = resolved.how
    if resolved.recent:
        how = services.sessions.renewed(session_id, user_id, resolved.conversation_id,
                                        answers[renewal] if answers is not None else None)
    return PostedMessage(session_id, resolved.conversation_id, shown, job_id, True, how)


def _enqueue_or_withdraw(services: Wiring, session_id: str, message: Message, along) -> str:
    """Enqueue the reply of a message stored without asking Redis first (a recent session). If
    Redis does not answer, the message is deleted again and the error goes on (503 "nothing was
    stored", what the touch's failure says for any other message). Any other refusal leaves it
    to the sweeper, as for every message. A job that Redis did save before the connection broke
    finds no message and ends (workers/jobs.py: no_such_user_message); a reply job's id carries
    the message's creation time, so no later message can meet it under a reused id."""
    try:
        return jobqueue.enqueue_reply_or_leave_to_sweeper(services.queue, services.settings, message, along,
                                                          unreachable_raises=True)
    except (RedisConnectionError, RedisTimeoutError):
        services.sessions.recent.drop(session_id)
        _withdraw(services, message)
        raise


def _withdraw(services: Wiring, message: Message) -> None:
    """Undo store_user_message for a message nobody was told of: the row goes, the count with it."""
    with services.db.write() as db:
        deleted = db.execute(delete(Message).where(Message.id == message.id,
                                                   Message.status == MessageStatus.PENDING)).rowcount
        if deleted:
            db.execute(update(Conversation).where(Conversation.id == message.conversation_id)
                       .values(message_count=Conversation.message_count - 1))
    log.warning("Redis unavailable after a message to a recent session was stored: withdrawn (503)",
                extra={"message_id": message.id, "conversation_id": message.conversation_id})


def _announce_message(services: Wiring, user_id: int, session_id: str, resolved, message: dict,
                      along=None) -> list | None:
    """Tell the session's other tabs (its log) and all the user's tabs (their log); after the commit,
    so that whoever hears of it can read it. `along`: see events.Publisher.announce."""
    where = {"conversation_id": resolved.conversation_id, "session_id": session_id}
    created = [services.events.to_user(user_id, "created", **where)] if resolved.how == "created" else []
    return services.events.announce(services.events.to_session(session_id, "message", message=message), *created,
                                    services.events.to_user(user_id, "message", **where, message=message),
                                    along=along)


DEFAULT_MESSAGES_PAGE = 100
MAX_MESSAGES_PAGE = 500
"""GET /api/conversations/CID answers the latest 100 messages unless `limit` says (500 at most)."""

STALE_KEY_ATTEMPTS = 3
"""A post that meets a stale session key drops it and resolves again, this many times at most."""


class StaleConversation(Exception):
    """The conversation is not the live one of this session and user (deleted, or not theirs)."""


def store_user_message(
    services: Wiring,
    conversation_id: str,
    session_id: str,
    user_id: int,
    content: str,
    client_message_id: str | None,
    *,
    reject_if_busy: bool = False,
) -> Message | None:
    """Commit a `pending` user message to `conversation_id`, after checking in the same statement
    that it is the live conversation of this session and user (StaleConversation if not). None
    when `client_message_id` was already used in this conversation. Enqueues nothing."""
    now = utcnow()
    try:
        with services.db.write() as db:
            # Validates the tracked conversation (live, this session, this user) and bumps its
            # activity in one statement; in PostgreSQL it also locks the row, so the message
            # order within a conversation is the commit order.
            bumped = db.execute(
                update(Conversation)
                .where(
                    Conversation.id == conversation_id,
                    Conversation.session_id == session_id,
                    Conversation.user_id == user_id,
                    Conversation.deleted_at.is_(None),
                    Conversation.message_count < services.settings.max_conversation_messages,
                )
                .values(
                    message_count=Conversation.message_count + 1,
                    updated_at=now,
                    title=func.coalesce(Conversation.title, _title_from(content)),
                )
            ).rowcount
            if bumped != 1:
                full = db.scalar(select(Conversation.message_count).where(
                    Conversation.id == conversation_id, Conversation.session_id == session_id,
                    Conversation.user_id == user_id, Conversation.deleted_at.is_(None)))
                if full is not None:
                    raise ConversationFull(f"this conversation holds {full} messages, the most it may: "
                                           "start a new chat (a new session id) to go on")
                raise StaleConversation()
            # After the UPDATE, which holds the conversation's row (PostgreSQL) or the write lock
            # (SQLite): two rejecting posts at once cannot both see the session idle.
            if reject_if_busy and answering(db, conversation_id):
                raise SessionAnswering()
            message = Message(
                conversation_id=conversation_id,
                role=MessageRole.USER,
                content=content,
                status=MessageStatus.PENDING,
                client_message_id=client_message_id,
                created_at=now,
            )
            db.add(message)
            db.flush()
        return message
    except IntegrityError:
        if client_message_id is None:
            raise
        return None


def answering(db: Session, conversation_id: str) -> bool:
    """True while a user message of the conversation awaits its reply (the assistant is busy)."""
    return db.scalar(select(Message.id).where(Message.conversation_id == conversation_id,
                                              Message.role == MessageRole.USER,
                                              Message.status == MessageStatus.PENDING).limit(1)) is not None


def replace_reply(db: Session, current: Message, text: str, status: str, now: datetime,
                  context_upto: int | None) -> Message:
    """Keep `current` as an earlier version (reply_versions) and make the row the next version."""
    db.add(ReplyVersion(reply_id=current.id, version=current.version, content=current.content,
                        status=current.status, context_upto=current.context_upto, created_at=current.created_at))
    current.content, current.status, current.context_upto = text, status, context_upto
    current.version, current.created_at = current.version + 1, now
    return current


def _title_from(content: str) -> str:
    line = " ".join(content.split())
    return line if len(line) <= TITLE_LENGTH else line[: TITLE_LENGTH - 1] + "…"


def _find_in_session(services: Wiring, session_id: str, user_id: int, client_message_id: str) -> Message | None:
    """The user message this client_message_id already named in this session (any of its
    conversations, deleted ones too), or None."""
    with services.db.read() as db:
        return db.scalars(
            select(Message)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(
                Conversation.session_id == session_id,
                Conversation.user_id == user_id,
                Message.client_message_id == client_message_id,
                Message.role == MessageRole.USER,
            )
            .order_by(Message.id)
            .limit(1)
        ).first()


def _replayed(services: Wiring, session_id: str, original: Message, content: str, how: str) -> PostedMessage:
    """The answer to a retry: the first message again (200), never a second one."""
    if original.content != content:
        raise IdempotencyConflict(
            f"client_message_id was already used in this session for other content (message {original.id}); "
            "use a new client_message_id for a new message")
    if original.status == MessageStatus.PENDING:
        # The client retried: perhaps because the first enqueue failed. RQ refuses a duplicate
        # job id, so this costs one round trip and never makes a second job. Redis unreachable is
        # a 503 here, never "stored": the first request may be withdrawing this very message
        # (_enqueue_or_withdraw), and a 200 for it would tell the client a deleted message is kept.
        jobqueue.enqueue_reply_or_leave_to_sweeper(services.queue, services.settings, original,
                                                   unreachable_raises=True)
    return PostedMessage(session_id, original.conversation_id, message_json(original),
                         jobqueue.reply_job_id(services.queue.name, original), False, how)


# -- reading ------------------------------------------------------------------------------


def _owned_conversation(db: Session, user_id: int, conversation_id: str) -> Conversation:
    conversation = db.scalars(
        select(Conversation).where(
            Conversation.id == conversation_id,
            Conversation.user_id == user_id,
            Conversation.deleted_at.is_(None),
        )
    ).one_or_none()
    if conversation is None:
        raise NotFound("conversation not found")
    return conversation


def get_conversation(services: Wiring, user_id: int, conversation_id: str, limit: int = DEFAULT_MESSAGES_PAGE,
                     before: int | None = None) -> dict:
    """A conversation and its latest `limit` messages (before message id `before`, if given),
    oldest first; `next_before` pages further back (null: these are the first)."""
    with services.db.read() as db:
        conversation = _owned_conversation(db, user_id, conversation_id)
        query = select(Message).where(Message.conversation_id == conversation.id)
        if before is not None:
            query = query.where(Message.id < before)
        newest_first = db.scalars(query.order_by(Message.id.desc()).limit(limit + 1)).all()
        messages = list(reversed(newest_first[:limit]))
        next_before = messages[0].id if len(newest_first) > limit else None
        versions = earlier_versions(db, [m.id for m in messages if m.role == MessageRole.ASSISTANT and m.version > 1])
        return conversation_json(conversation) | {"messages": [message_json(m, versions.get(m.id, ()))
                                                               for m in messages],
                                                  "next_before": next_before}


def encode_cursor(updated_at: datetime, conversation_id: str) -> str:
    raw = json.dumps([updated_at.isoformat(), conversation_id], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        if len(cursor) > 512:
            raise ValueError
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        if b"\\u0000" in raw or b"\x00" in raw:  # NUL: PostgreSQL refuses it in any string
            raise ValueError
        stamp, conversation_id = json.loads(raw)
        updated_at = datetime.fromisoformat(stamp)
        if not isinstance(conversation_id, str) or updated_at.tzinfo is None:
            raise ValueError
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise BadRequest("cursor is not one this server issued") from None
    return updated_at, conversation_id


def list_conversations(services: Wiring, user_id: int, limit: int, cursor: str | None) -> dict:
    """Newest activity first, keyset-paginated on (updated_at, id)."""
    last = aliased(Message)
    latest_id = (
        select(func.max(Message.id)).where(Message.conversation_id == Conversation.id).scalar_subquery()
    )
    query = (
        select(Conversation, last)
        .outerjoin(last, last.id == latest_id)
        .where(Conversation.user_id == user_id, Conversation.deleted_at.is_(None))
        .order_by(Conversation.updated_at.desc(), Conversation.id.desc())
        .limit(limit + 1)
    )
    if cursor:
        updated_at, conversation_id = decode_cursor(cursor)
        query = query.where(
            or_(
                Conversation.updated_at < updated_at,
                and_(Conversation.updated_at == updated_at, Conversation.id < conversation_id),
            )
        )
    with services.db.read() as db:
        rows = db.execute(query).all()
        versions = earlier_versions(db, [m.id for _, m in rows[:limit]
                                         if m is not None and m.role == MessageRole.ASSISTANT and m.version > 1])
    page = rows[:limit]
    next_cursor = None
    if len(rows) > limit:
        tail = page[-1][0]
        next_cursor = encode_cursor(tail.updated_at, tail.id)
    return {
        "conversations": [
            conversation_json(c)
            | {"message_count": c.message_count,
               "last_message": message_json(m, versions.get(m.id, ())) if m else None}
            for c, m in page
        ],
        "next_cursor": next_cursor,
    }


def rename_conversation(services: Wiring, user_id: int, conversation_id: str, title: str) -> dict:
    with services.db.write() as db:
        conversation = _owned_conversation(db, user_id, conversation_id)
        conversation.title = title
        conversation.updated_at = utcnow()
    services.events.user(user_id, "renamed", conversation_id=conversation.id, session_id=conversation.session_id,
                         title=title)
    return conversation_json(conversation)


def delete_conversation(services: Wiring, user_id: int, conversation_id: str) -> None:
    """Soft delete (the row stays, so a late reply cannot resurrect it) and drop the session key."""
    with services.db.write() as db:
        conversation = _owned_conversation(db, user_id, conversation_id)
        conversation.deleted_at = utcnow()
        session_id = conversation.session_id
    services.sessions.forget(session_id, conversation_id)
    services.events.user(user_id, "deleted", conversation_id=conversation_id, session_id=session_id)


def retry_reply(services: Wiring, user_id: int, conversation_id: str, message_id: int) -> dict:
    """Give a `failed` user message another round of reply attempts."""
    with services.db.write() as db:
        conversation = _owned_conversation(db, user_id, conversation_id)
        message = db.get(Message, message_id)
        if message is None or message.conversation_id != conversation.id or message.role != MessageRole.USER:
            raise NotFound("message not found")
        if message.status != MessageStatus.FAILED:
            raise Conflict(f"only a failed message can be retried; this one is {message.status}")
        message.status = MessageStatus.PENDING
        message.attempts = 0  # a new round of attempts
        message.failure_reason = None
    return _answer_again(services, user_id, conversation, message)


def _answer_again(services: Wiring, user_id: int, conversation: Conversation, message: Message) -> dict:
    """A message pending again (retried, regenerated): its job enqueued afresh, and every tab told."""
    job_id = jobqueue.requeue_reply(services.queue, services.settings, message)
    pending = message_json(message)
    services.events.announce(
        services.events.to_session(conversation.session_id, "message", message=pending),
        services.events.to_user(user_id, "message", conversation_id=conversation.id,
                                session_id=conversation.session_id, message=pending))
    return {"message": pending, "job_id": job_id}


def regenerate_reply(services: Wiring, user_id: int, conversation_id: str, message_id: int) -> dict:
    """Write a new version of the reply to the conversation's last user message (answered, or
    stopped): the message is pending again and its reply job enqueued; the current reply stays
    until the new version replaces it (then it is kept as an earlier version). Of two regenerate
    calls at once, one gets the new generation, the other a 409."""
    with services.db.read() as db:
        conversation = _owned_conversation(db, user_id, conversation_id)
    # Before it is pending again (nothing can stop it meanwhile), and outside the write
    # transaction (a Redis round trip must not hold SQLite's write lock): a stop mark of an earlier
    # Stop of this message would refuse the new generation.
    events.clear_stop_mark(services.redis, conversation.session_id, message_id)
    with services.db.write() as db:
        conversation = _owned_conversation(db, user_id, conversation_id)
        message = db.get(Message, message_id)
        if message is None or message.conversation_id != conversation.id or message.role != MessageRole.USER:
            raise NotFound("message not found")
        last = db.scalar(select(func.max(Message.id)).where(Message.conversation_id == conversation.id,
                                                           Message.role == MessageRole.USER))
        if message.id != last:
            raise Conflict("only the reply to the last user message can be regenerated")
        again = db.execute(
            update(Message)
            .where(Message.id == message.id, Message.status.in_((MessageStatus.ANSWERED, MessageStatus.STOPPED)))
            .values(status=MessageStatus.PENDING, attempts=0, failure_reason=None, claimed_by=None,
                    claimed_until=None)
        ).rowcount
        if not again:
            status = db.scalar(select(Message.status).where(Message.id == message.id))
            raise Conflict(f"only an answered or stopped message's reply can be regenerated; this one is {status}")
        db.refresh(message)
    return _answer_again(services, user_id, conversation, message)

