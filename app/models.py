"""The data model: users, conversations, messages (SQLAlchemy 2.0 typed declarative)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    pass


class MessageRole:
    USER = "user"
    ASSISTANT = "assistant"


class MessageStatus:
    """A user message: pending (its reply is awaited), answered, failed (the agent gave up) or
    stopped (Stop, or an interrupting message: its reply, if any text came, is a stopped one).
    An assistant message: complete, or stopped (the partial text written before the Stop)."""

    PENDING = "pending"
    ANSWERED = "answered"
    FAILED = "failed"
    STOPPED = "stopped"
    COMPLETE = "complete"  # an assistant message written to its end


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # sha256 of the bearer token: tokens are 256-bit random, so a fast hash is enough and the
    # clear token is never stored. NULL for cookie (web page) users.
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16), default="api")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        # The last guard of "one conversation per session": at most one live conversation per
        # session id, whatever Redis says. Deleted conversations keep their row (deleted_at set)
        # so that a late reply can never resurrect them, and so they do not block a new one.
        Index(
            "uq_conversations_live_session",
            "session_id",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
        Index("ix_conversations_user_activity", "user_id", "updated_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=lambda: str(uuid.uuid4()))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    session_id: Mapped[str] = mapped_column(String(128), index=True)
    title: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))
    # The fence value of the lock acquisition that created this row (0: created without Redis,
    # e.g. by a repair). Lets an operator tell which holder wrote it.
    creation_fence: Mapped[int] = mapped_column(BigInteger, default=0)
    message_count: Mapped[int] = mapped_column(Integer, default=0)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class FailureReason:
    AGENT_ERROR = "agent_error"  # the agent answered with an error, every attempt
    TIMEOUT = "timeout"  # the job ran past ARZANI_JOB_TIMEOUT
    WORKER_DIED = "worker_died"  # its work-horse died (SIGKILL, out of memory) on every attempt
    ERROR = "error"  # anything else


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("conversation_id", "client_message_id", name="uq_messages_client_message_id"),
        Index("ix_messages_conversation_order", "conversation_id", "id"),
        # The pending messages only (a sliver of the table): the recovery watcher reads them every
        # two seconds, the sweeper every minute, a run for its conversation's next message.
        Index("ix_messages_pending", "conversation_id", "id", sqlite_where=text("status = 'pending'"),
              postgresql_where=text("status = 'pending'")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    conversation_id: Mapped[str] = mapped_column(ForeignKey("conversations.id"))
    role: Mapped[str] = mapped_column(String(16))
    content: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    # Exactly one reply per user message, enforced by the database: a job that runs twice (RQ
    # retry, a work-horse whose parent died) hits this constraint instead of adding a second reply.
    reply_to: Mapped[int | None] = mapped_column(ForeignKey("messages.id"), unique=True)
    client_message_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # A user message: agent calls started for it, counted in the database when each starts (a
    # work-horse killed mid-call runs no failure callback: the count is what remembers it).
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Why its reply failed (FailureReason), shown by the API; null while it has not failed.
    failure_reason: Mapped[str | None] = mapped_column(String(32))
    # A user message whose reply is being written: which run claimed it (an RQ job id) and until
    # when (renewed while it writes). One generation per message: only the claim's holder calls
    # the agent, and `attempts` (raised by each claim) is the generation's number (app/runs.py).
    claimed_by: Mapped[str | None] = mapped_column(String(128))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # An assistant message: the id of the last message of the history the agent was given.
    context_upto: Mapped[int | None] = mapped_column(Integer)
    # An assistant message: which version of the reply this row holds (Regenerate makes the next
    # one; the earlier ones are kept in reply_versions). The row is always the current version, so
    # "exactly one current reply per user message" is the unique reply_to above.
    version: Mapped[int] = mapped_column(Integer, default=1, server_default="1")


class ReplyVersion(Base):
    """An earlier version of a reply, kept when Regenerate (or a Stop of a regeneration) replaced it."""

    __tablename__ = "reply_versions"
    __table_args__ = (UniqueConstraint("reply_id", "version", name="uq_reply_versions_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    reply_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    content: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    context_upto: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
