"""Operator-side work over all sessions: listing, reconciling Redis with the database, cleanup
(used by `arzani sessions`, `arzani reconcile`, `arzani cleanup` and the maintenance schedule)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from app import keys
from app.models import Conversation, Message, MessageRole, utcnow
from app.wiring import Wiring


def known_session_ids(services: Wiring, scan_count: int = 500) -> Iterator[str]:
    """Every session Redis tracks (SCAN, never KEYS), then those only the database knows."""
    seen: set[str] = set()
    for key in services.redis.scan_iter(match=f"{keys.PREFIX}*", count=scan_count):
        session_id = keys.session_id_from_key(key)
        if session_id is not None and session_id not in seen:
            seen.add(session_id)
            yield session_id
    with services.db.read() as db:
        rows = db.execute(
            select(Conversation.session_id)
            .where(Conversation.deleted_at.is_(None))
            .order_by(Conversation.updated_at.desc())
            .execution_options(yield_per=500)
        )
        for (session_id,) in rows:
            if session_id not in seen:
                seen.add(session_id)
                yield session_id


# -- reconcile ---------------------------------------------------------------------------------


@dataclass
class Finding:
    kind: str  # "key_mismatch" | "key_dangling" | "untracked" | "duplicate_conversations"
    session_id: str
    detail: str
    fixed: bool = False

    def line(self) -> str:
        return f"{'FIXED ' if self.fixed else ''}{self.kind:<24} {self.session_id}  {self.detail}"


def reconcile(services: Wiring, *, fix: bool) -> list[Finding]:
    """Find (and with `fix`, repair) every way Redis and the database disagree.

    - duplicate live conversations of one session (legacy data, or a database written without
      the unique index): merged into the oldest, messages moved in order;
    - a key naming a conversation that is not the session's live one (`key_mismatch`) or that
      does not exist at all (`key_dangling`): rewritten from the database, or dropped;
    - a live conversation active within the session TTL whose key is gone (`untracked`): rebuilt.
    The database is authoritative throughout.
    """
    findings = _merge_duplicates(services, fix=fix)
    ttl_window = timedelta(milliseconds=services.sessions.session_ttl_ms)
    for session_id in known_session_ids(services):
        tracked, _, _ = services.sessions.tracked(session_id)
        tracked_id = tracked.conversation_id
        with services.db.read() as db:
            live = db.scalars(select(Conversation).where(
                Conversation.session_id == session_id, Conversation.deleted_at.is_(None))
                .order_by(Conversation.created_at)).first()
        if tracked_id == (live.id if live else None):
            continue
        if live is None:
            finding = Finding("key_dangling", session_id, f"key names {tracked_id}, no live conversation")
            if fix:
                finding.fixed = services.sessions.forget(session_id, tracked_id)
        elif tracked_id is None:
            if utcnow() - live.updated_at > ttl_window:
                continue  # expired as designed: the next message rebuilds it
            finding = Finding("untracked", session_id, f"live conversation {live.id} has no key")
            if fix:
                finding.fixed = services.sessions.repair(session_id, replacing=tracked_id)
        else:
            finding = Finding("key_mismatch", session_id, f"key names {tracked_id}, database {live.id}")
            if fix:
                finding.fixed = services.sessions.repair(session_id, replacing=tracked_id)
        findings.append(finding)
    return findings


def _merge_duplicates(services: Wiring, *, fix: bool) -> list[Finding]:
    with services.db.read() as db:
        duplicated = db.scalars(
            select(Conversation.session_id)
            .where(Conversation.deleted_at.is_(None))
            .group_by(Conversation.session_id)
            .having(func.count() > 1)
        ).all()
    findings = []
    for session_id in duplicated:
        with services.db.write() as db:
            live = db.scalars(select(Conversation).where(
                Conversation.session_id == session_id, Conversation.deleted_at.is_(None))
                .order_by(Conversation.created_at, Conversation.id)).all()
            keep, extras = live[0], live[1:]
            finding = Finding("duplicate_conversations", session_id,
                              f"{len(live)} live conversations; keeping {keep.id}, merging "
                              + ", ".join(c.id for c in extras))
            if fix:
                _merge_into(db, keep, extras)
                finding.fixed = True
        findings.append(finding)
        if fix:
            services.sessions.repair(session_id, replacing=services.sessions.tracked_conversation_id(session_id))
    return findings


def _merge_into(db: Session, keep: Conversation, extras: list[Conversation]) -> None:
    """Move the extras' messages into `keep` (message ids keep their order, and a reply moves
    with its message), then retire the extras as deleted."""
    extra_ids = [c.id for c in extras]
    taken = set(db.scalars(select(Message.client_message_id).where(
        Message.conversation_id == keep.id, Message.client_message_id.is_not(None))).all())
    for message in db.scalars(select(Message).where(Message.conversation_id.in_(extra_ids))
                              .order_by(Message.id)).all():
        if message.client_message_id in taken:
            message.client_message_id = None  # the (conversation, client id) pair must stay unique
        elif message.client_message_id is not None:
            taken.add(message.client_message_id)
        message.conversation_id = keep.id
    now = utcnow()
    for conversation in extras:
        conversation.deleted_at = now
        conversation.message_count = 0
    db.flush()
    keep.message_count = db.scalar(select(func.count()).where(Message.conversation_id == keep.id))
    keep.updated_at = max([keep.updated_at, *(c.updated_at for c in extras)])


# -- cleanup -----------------------------------------------------------------------------------


def _delete_if_still_orphan(services: Wiring, conversation_id: str, cutoff, has_user_message) -> bool:
    """Delete one orphan, looking again under a lock: a message posted between the first look and
    the delete was answered 202 and must survive (PostgreSQL's READ COMMITTED would otherwise let
    the delete take it along). The conversation row is locked first (FOR UPDATE: a post locks it
    too, with its UPDATE), then checked again in a statement of its own, with a snapshot taken
    after the lock; a post that then finds the row gone stores its message in a new conversation.
    SQLite's write transactions are serial (BEGIN IMMEDIATE), which gives the same order."""
    with services.db.write() as db:
        locked = db.execute(select(Conversation.id).where(Conversation.id == conversation_id)
                            .with_for_update()).first()
        if locked is None:
            return False
        still_orphan = db.scalar(select(Conversation.id).where(
            Conversation.id == conversation_id, Conversation.created_at <= cutoff, ~has_user_message))
        if still_orphan is None:
            return False
        db.execute(delete(Message).where(Message.conversation_id == conversation_id,
                                         Message.role != MessageRole.USER))
        db.execute(delete(Conversation).where(Conversation.id == conversation_id))
    return True


def cleanup(services: Wiring, *, older_than: timedelta, dry_run: bool) -> list[str]:
    """Remove orphaned conversations (no user message, older than `older_than`) and Redis
    leftovers no owner will ever clear: a lock without a TTL is deleted; a session hash without
    one (it holds the fence) is given the session TTL instead, so that the fence is not lost; a
    fence key of the layout before the fence moved into the hash is deleted. Returns what it
    removed or bounded (or would)."""
    removed = []
    cutoff = utcnow() - older_than
    has_user_message = (select(Message.id).where(Message.conversation_id == Conversation.id,
                                                 Message.role == MessageRole.USER).exists())
    with services.db.read() as db:
        candidates = db.scalars(select(Conversation).where(
            Conversation.created_at <= cutoff, ~has_user_message)).all()
    orphans = []
    for candidate in candidates:
        if not dry_run and not _delete_if_still_orphan(services, candidate.id, cutoff, has_user_message):
            continue  # a message arrived since the look: it is a live conversation now
        orphans.append(candidate)
        removed.append(f"conversation {candidate.id} (session {candidate.session_id}, "
                       f"no user message, created {candidate.created_at.isoformat()})")
    if not dry_run:
        for conversation in orphans:
            services.sessions.forget(conversation.session_id, conversation.id)
    for key in services.redis.scan_iter(match=f"{keys.PREFIX}*", count=500):
        if key.endswith(":fence"):  # the old layout's counter: the fence is in the hash now
            removed.append(f"redis key {key} (the fence of the old key layout)")
            if not dry_run:
                services.redis.delete(key)
        elif key.endswith(":lock") and services.redis.pttl(key) == -1:
            removed.append(f"redis key {key} (no TTL: nothing would ever clear it)")
            if not dry_run:
                services.redis.delete(key)
        elif keys.session_id_from_key(key) is not None and services.redis.pttl(key) == -1:
            removed.append(f"redis key {key} given a TTL (it had none: nothing would ever clear it)")
            if not dry_run:
                services.redis.pexpire(key, services.sessions.session_ttl_ms)
    return removed
