"""The session service: resolve a chat session to its one conversation, across processes.

Used by the web side (every message) and the worker side (every reply) alike. Its surface:

- `resolve(session_id, user_id)`: the session's conversation, created if there is none;
- `tracked(session_id)` / `tracked_conversation_id(...)`: what Redis believes, renewing nothing;
- `repair(...)` / `forget(...)`: rewrite or drop the tracked key when the database disagrees;
- `reserve(...)`: mark a freshly minted session id as its user's (POST /api/sessions);
- `require_owner(...)` and `status(...)`: whose the session is, and the status view.

This module owns the tracked hash `arzani:session:{SID}`: its field names appear nowhere else
(`TrackedSession` is the typed value of what it holds). The names are short because a hash is kept
for every session of the last `ARZANI_SESSION_TTL` (`cid` conversation id, `uid` user id, `seen`
last activity in epoch ms), and the lock's fence counter lives in the same hash (`fence`): one
key per session, about 190 bytes. Who created the conversation, and when, is the database's row.
"Another user's session answers exactly like a missing one" is one function here, `ensure_owner`.

Fast path: one Lua call reads the tracked hash `arzani:session:{SID}` and renews its TTL. Faster
path (`resolve_recent`, POST .../messages only): a session this process resolved lately is taken
from `RecentSessions` without asking Redis; the database's insert validates it (live, this session,
this user) and the renewal rides the round trip after the insert (`renew_along`). Slow
path: take the session's lock (`SET NX PX`, fenced, see app/locks.py), look again in Redis and then
in the database (a conversation may exist whose key was lost), create the conversation only if
none exists, and write the hash in the same script that releases the lock and wakes the waiters.
A process that lost the race subscribes to the release channel and takes the winner's answer.
The database's partial unique index on live `session_id` is the last guard: when it fires we read
the row that won and use it.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from redis import Redis
from redis.exceptions import LockError, RedisError
from sqlalchemy import func, select

from app import defaults, events, keys, metrics
from app.db import Database
from app.errors import NotFound, SessionBusy, StaleFence, TooManySessions
from app.locks import FencedLock
from app.models import Conversation, Message, MessageRole, MessageStatus

log = logging.getLogger("arzani.sessions")

CONVERSATION_FIELD = "cid"
USER_FIELD = "uid"
SEEN_FIELD = "seen"
FENCE_FIELD = "fence"
"""The session hash's fields: the conversation id, its user's id, the last activity (epoch ms),
and the creation lock's fence counter (app/locks.py increments it). The scripts below spell them
out as they are here."""

LEGACY_FIELDS = ("conversation_id", "user_id", "created_by", "created_at", "last_seen_at")
"""Field names of the hash before the fence moved into it: dropped when a hash is written again."""

# Reads the tracked hash and, if it names a conversation, renews it ("renewed by every message"),
# the fence with it. One round trip on the hot path. The owner is checked first, inside the
# script: another user's request renews nothing (no TTL, no last activity).
_TOUCH = """
-- KEYS[1] session hash; ARGV[1] now ms, ARGV[2] session ttl ms, ARGV[3] caller's user id
local owner = redis.call('HGET', KEYS[1], 'uid')
if owner and owner ~= ARGV[3] then
    -- another user's session: renew nothing, tell only whose it is (the caller answers 404)
    return {'uid', owner}
end
if redis.call('HEXISTS', KEYS[1], 'cid') == 1 then
    redis.call('HSET', KEYS[1], 'seen', ARGV[1])
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('HGETALL', KEYS[1])
"""

# Untracks the session only if it still names the conversation we mean to forget. The fence stays
# (and the hash with it, until its TTL): dropping it would restart the fence from Redis's clock.
_FORGET = """
if redis.call('HGET', KEYS[1], 'cid') == ARGV[1] then
    return redis.call('HDEL', KEYS[1], 'cid', 'uid', 'seen')
end
return 0
"""


@dataclass(frozen=True)
class TrackedSession:
    """What Redis tracks for a session (the hash `arzani:session:{SID}`). A session reserved by
    POST /api/sessions has a user and no conversation yet; an absent key is all None."""

    conversation_id: str | None = None
    user_id: int | None = None
    last_seen_at_ms: int | None = None
    fence: int | None = None  # the creation lock's last fence (written by app/locks.py only)

    @classmethod
    def from_hash(cls, fields: dict[str, str]) -> TrackedSession:
        def number(name: str) -> int | None:
            value = fields.get(name)
            return int(value) if value else None

        return cls(conversation_id=fields.get(CONVERSATION_FIELD), user_id=number(USER_FIELD),
                   last_seen_at_ms=number(SEEN_FIELD), fence=number(FENCE_FIELD))

    def to_hash(self) -> dict[str, str | int]:
        """The fields a commit writes (never the fence: only the lock's scripts move it)."""
        fields = {CONVERSATION_FIELD: self.conversation_id, USER_FIELD: self.user_id,
                  SEEN_FIELD: self.last_seen_at_ms}
        return {name: value for name, value in fields.items() if value is not None}


def ensure_owner(owners: Iterable[int | None], user_id: int, *, known: bool = False) -> None:
    """Another user's session answers exactly like a missing one: NotFound if any known owner is
    not `user_id`; with `known`, also if no owner is known at all."""
    owners = {owner for owner in owners if owner is not None}
    if owners - {user_id} or (known and not owners):
        raise NotFound("session not found")


def process_name(kind: str) -> str:
    """`KIND:HOST:PID` (kind: web, worker, cli, from the wiring); computed on each call because
    gunicorn and RQ fork after start-up."""
    return f"{kind}:{socket.gethostname()}:{os.getpid()}"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class ResolvedSession:
    session_id: str
    conversation_id: str
    user_id: int
    # how the conversation was found: "tracked" (the Redis key), "created" (this call made it),
    # "waited" (another process made it while we waited), "recovered" (from the database)
    how: str
    # taken from this process's RecentSessions, Redis not asked: the insert validates it, and
    # the caller renews the hash with `renew_along` and tells `renewed` what Redis answered
    recent: bool = False


class RecentSessions:
    """The sessions this process resolved lately: session -> (its user, its conversation id), at
    most `size` of them (least recently used dropped first), each for `max_age_s` after Redis
    last named it. Keyed by the session alone: a session has one owner, and another user's
    lookup finds nothing (and evicts nothing).

    It saves a message to a recent session its one round trip before the insert (issue 15: the
    touch was the whole gap between POST .../messages and the baseline endpoint). Nothing is lost
    when an entry is stale: the insert's UPDATE accepts only the live conversation of this session
    and user (conversations.store_user_message), and a stale entry is dropped and the session
    resolved through Redis again. When the renewal after the insert finds the hash gone or naming
    another conversation (Redis restarted empty, an operator's cleanup or repair), the entry is
    dropped and the session resolved again at once (`renewed`), so the key is back after the
    message, as for a message that asked Redis first. functools.lru_cache has no
    per-entry age or removal, hence this small class; a lock, since gthread workers share it."""

    def __init__(self, size: int = defaults.RECENT_SESSIONS, max_age_s: float = defaults.RECENT_SESSION_MAX_AGE_S):
        self.size, self.max_age_s = size, max_age_s
        self._entries: OrderedDict[str, tuple[int, str, float]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session_id: str, user_id: int) -> str | None:
        with self._lock:
            entry = self._entries.get(session_id)
            if entry is None or entry[0] != user_id:
                return None
            if time.monotonic() - entry[2] > self.max_age_s:
                del self._entries[session_id]
                return None
            self._entries.move_to_end(session_id)
            return entry[1]

    def put(self, session_id: str, user_id: int, conversation_id: str) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._entries[session_id] = (user_id, conversation_id, time.monotonic())
            self._entries.move_to_end(session_id)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def drop(self, session_id: str) -> None:
        with self._lock:
            self._entries.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._entries)


class SessionService:
    def __init__(
        self,
        redis: Redis,
        db: Database,
        *,
        lock_ttl_ms: int,
        session_ttl_s: int,
        max_reservations: int = defaults.MAX_RESERVATIONS,
        process_kind: str = "web",
        hub=None,
        recent_sessions: int = defaults.RECENT_SESSIONS,
    ):
        """`hub`: the process's events.Hub, if it has one (web): lock waiters then listen for the
        release through its one connection instead of a pub/sub connection each."""
        self.redis = redis
        self.hub = hub
        self.db = db
        self.lock_ttl_ms = lock_ttl_ms
        self.session_ttl_ms = session_ttl_s * 1000
        self.max_reservations = max_reservations
        self.process_kind = process_kind
        self._touch = redis.register_script(_TOUCH)
        self._forget = redis.register_script(_FORGET)
        # A cluster client gets none: its renewal could not ride the announcements' round trip
        # (events.Publisher appends each log on its own there), so the saving would be nil.
        self.recent = RecentSessions(size=0 if events.is_cluster(redis) else recent_sessions)

    # -- Redis side ------------------------------------------------------------------------

    def touch(self, session_id: str, user_id: int) -> TrackedSession:
        """What Redis tracks, renewed if it is `user_id`'s; another user's session comes back
        with only its `user_id` and is not renewed."""
        flat = self._touch(keys=[keys.session_key(session_id)], args=[now_ms(), self.session_ttl_ms, user_id])
        return TrackedSession.from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))

    def tracked(self, session_id: str) -> tuple[TrackedSession, int, int]:
        """(what Redis tracks, hash PTTL ms, lock PTTL ms) without renewing anything."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hgetall(keys.session_key(session_id))
        pipe.pttl(keys.session_key(session_id))
        pipe.pttl(keys.lock_key(session_id))
        tracked, ttl_ms, lock_ttl_ms = pipe.execute()
        return TrackedSession.from_hash(tracked), ttl_ms, lock_ttl_ms

    def tracked_conversation_id(self, session_id: str) -> str | None:
        """The conversation Redis names for the session (one command, renewing nothing)."""
        return self.redis.hget(keys.session_key(session_id), CONVERSATION_FIELD)

    def lock(self, session_id: str, ttl_ms: int | None = None) -> FencedLock:
        """The session's creation lock (not yet acquired)."""
        return FencedLock(self.redis, keys.lock_key(session_id), fence_hash=keys.session_key(session_id),
                          fence_field=FENCE_FIELD, channel=keys.released_channel(session_id),
                          ttl_ms=ttl_ms or self.lock_ttl_ms, fence_ttl_ms=self.session_ttl_ms)

    def commit(self, lock: FencedLock, session_id: str, tracked: TrackedSession) -> bool:
        """Write `tracked` as the session's hash if the lock's fence is still current, release the
        lock and wake the waiters with `conversation_id|user_id`. True if written."""
        return lock.commit(keys.session_key(session_id), tracked.to_hash(), ttl_ms=self.session_ttl_ms,
                           payload=f"{tracked.conversation_id}|{tracked.user_id}", drop=LEGACY_FIELDS)

    def reserve(self, session_id: str, user_id: int) -> None:
        """Claim a server-minted session id for its user before any conversation exists.
        TooManySessions if the user already holds `max_reservations` unused ones.

        A cap, not stateless (signed) session ids: a reservation is what makes a listener before
        the first message and a second tab's send agree on whose session it is (HSETNX), and
        `GET /api/sessions/SID` shows it; a signed id would need every reader of the hash taught to
        accept an id that is not there. The cap is counted in the user's own sorted set (their
        `{user}` slot, so it works on a cluster too); ids that got a conversation or expired are
        dropped from it when the cap is reached."""
        self._count_reservation(session_id, user_id)
        # Not a transaction: the id was just minted at random, nobody else knows it yet.
        pipe = self.redis.pipeline(transaction=False)
        key = keys.session_key(session_id)
        pipe.hsetnx(key, USER_FIELD, user_id)
        pipe.hset(key, SEEN_FIELD, now_ms())
        pipe.pexpire(key, self.session_ttl_ms)
        pipe.execute()

    def _count_reservation(self, session_id: str, user_id: int) -> None:
        reserved = keys.user_reservations(user_id)
        now = now_ms()
        pipe = self.redis.pipeline(transaction=False)
        pipe.zremrangebyscore(reserved, "-inf", now)
        pipe.zadd(reserved, {session_id: now + self.session_ttl_ms})
        pipe.pexpire(reserved, self.session_ttl_ms)
        pipe.zcard(reserved)
        count = pipe.execute()[-1]
        if count <= self.max_reservations:
            return
        # Added first, counted after: of two reservations racing for the last place, neither can
        # go beyond the cap unseen (both may be refused; a retry then finds the place).
        held = [m for m in self.redis.zrange(reserved, 0, -1) if m != session_id]
        pipe = self.redis.pipeline(transaction=False)
        for member in held:
            pipe.hmget(keys.session_key(member), CONVERSATION_FIELD, USER_FIELD)
        # used (it has a conversation) or gone (expired, deleted): no longer a reservation
        done = [m for m, (conversation, owner) in zip(held, pipe.execute(), strict=True)
                if conversation is not None or owner is None]
        if done:
            self.redis.zrem(reserved, *done)
        if count - len(done) > self.max_reservations:
            self.redis.zrem(reserved, session_id)
            raise TooManySessions(f"{self.max_reservations} sessions are reserved and unused: send a message "
                                  f"in one of them (or let them expire) before reserving another")

    def forget(self, session_id: str, conversation_id: str) -> bool:
        """Drop the tracked key if (and only if) it still names `conversation_id`."""
        self.recent.drop(session_id)
        return bool(self._forget(keys=[keys.session_key(session_id)], args=[conversation_id]))

    # -- resolution ------------------------------------------------------------------------

    def resolve(self, session_id: str, user_id: int) -> ResolvedSession:
        tracked = self.touch(session_id, user_id)
        ensure_owner([tracked.user_id], user_id)
        if tracked.conversation_id:
            resolved = ResolvedSession(session_id, tracked.conversation_id, user_id, "tracked")
        else:
            resolved = self._resolve_slow(session_id, user_id)
        self.recent.put(session_id, user_id, resolved.conversation_id)
        return resolved

    def resolve_recent(self, session_id: str, user_id: int) -> ResolvedSession:
        """`resolve`, but a session this process resolved lately (RecentSessions) is answered
        without Redis. Only for a caller that validates the conversation in its own write (the
        insert of POST .../messages), then renews the hash (`renew_along`) and hands Redis's
        answer to `renewed`."""
        conversation_id = self.recent.get(session_id, user_id)
        if conversation_id is not None:
            return ResolvedSession(session_id, conversation_id, user_id, "tracked", recent=True)
        return self.resolve(session_id, user_id)

    def renew_along(self, pipeline, session_id: str, user_id: int) -> int:
        """Queue the touch (the hash renewed, its fields read) on `pipeline`, a pipeline to our
        Redis that the caller executes; the command's index in it. A bare EVALSHA: a Redis that
        lost its scripts answers NOSCRIPT, which `renewed` treats as a hash to look at again."""
        pipeline.evalsha(self._touch.sha, 1, keys.session_key(session_id), now_ms(), self.session_ttl_ms, user_id)
        return len(pipeline) - 1

    def renewed(self, session_id: str, user_id: int, conversation_id: str, answer) -> str:
        """After a message was stored in `conversation_id` (the database accepted it as the live
        conversation of this session and user), given the renewal's answer (the hash's fields,
        flat; an error; None when Redis answered nothing): how the session resolved, as
        `resolve` says it. "tracked" if Redis named this conversation. Otherwise the hash is put
        right now, as `resolve` would have before the insert: a stale key is dropped, and the
        session resolved under its lock from the database ("recovered"), so a key that Redis
        lost (restarted empty, evicted) is back after the message, as it is for any message."""
        if answer is None:  # Redis went away after the enqueue: the message is stored and queued
            self.recent.drop(session_id)
            return "tracked"
        # (RQ's connection, whose transaction it may ride, answers bytes)
        flat = [item.decode() if isinstance(item, bytes) else item
                for item in answer] if isinstance(answer, list) else []
        tracked = TrackedSession.from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))
        if tracked.conversation_id == conversation_id and tracked.user_id == user_id:
            self.recent.put(session_id, user_id, conversation_id)
            return "tracked"
        self.recent.drop(session_id)
        try:
            if tracked.conversation_id is not None and tracked.user_id == user_id:
                self.drop_stale_key(session_id, tracked.conversation_id)
            return self.resolve(session_id, user_id).how
        except (RedisError, NotFound, SessionBusy) as error:
            # The message is stored and its reply queued: the next message puts the key right.
            log.warning("session key not put right after a message; the next one will",
                        extra={"session_id": session_id, "error": type(error).__name__})
            return "tracked"

    def drop_stale_key(self, session_id: str, conversation_id: str, attempt: int | None = None) -> None:
        """The tracked key named `conversation_id`, which the database does not have live for
        this session and user (deleted, or a key from before a restore): the database wins. The
        key is dropped (if it still names it), counted and logged; the caller resolves again."""
        metrics.session_mismatches.labels(side="web").inc()
        log.warning("session key disagrees with the database: key dropped, session resolved again",
                    extra={"session_id": session_id, "conversation_id": conversation_id,
                           "proc": process_name(self.process_kind), "attempt": attempt})
        self.forget(session_id, conversation_id)

    def _resolve_slow(self, session_id: str, user_id: int) -> ResolvedSession:
        # A holder that dies leaves its lock for lock_ttl_ms; waiting twice that and a little
        # more lets one takeover happen before we give up with a clear 503.
        deadline = time.monotonic() + 2 * self.lock_ttl_ms / 1000 + 1
        started = time.monotonic()
        listener = None
        try:
            while True:
                lock = self.lock(session_id)
                if lock.acquire():
                    metrics.lock_acquisitions.inc()
                    try:
                        return self._resolve_holding(lock, session_id, user_id, waited=listener is not None)
                    except StaleFence:
                        log.warning(
                            "session lock lost before the conversation was written; waiting for the "
                            "new holder",
                            extra={"session_id": session_id, "proc": process_name(self.process_kind)},
                        )
                if listener is None:
                    # Listen first, then look: a holder that finishes in between is seen by the
                    # look, one that finishes after is heard on the channel. Nothing falls between.
                    channel = keys.released_channel(session_id)
                    listener = (events.HubListener(self.hub, channel) if self.hub is not None
                                else events.PubSubListener(self.redis, channel))
                    metrics.lock_waits.inc()
                    log.info(
                        "session lock busy: waiting for its holder",
                        extra={"session_id": session_id, "proc": process_name(self.process_kind)},
                    )
                tracked = self.touch(session_id, user_id)
                if tracked.conversation_id:
                    return self._waited(session_id, tracked.conversation_id, tracked.user_id,
                                        user_id, started)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SessionBusy()
                lock_left_ms = self.redis.pttl(keys.lock_key(session_id))
                if lock_left_ms < 0:
                    continue  # released (or never set) between our tries: try again at once
                announced = listener.next_message(min(remaining, lock_left_ms / 1000 + 0.01))
                if announced:
                    conversation_id, _, owner = announced.partition("|")
                    if conversation_id:
                        return self._waited(session_id, conversation_id, int(owner), user_id, started)
                # The holder failed, died (its lock expired) or we timed out: try to take over.
        finally:
            if listener is not None:
                listener.close()

    def _waited(self, session_id: str, conversation_id: str, owner: int | None, user_id: int,
                started: float) -> ResolvedSession:
        ensure_owner([owner], user_id)
        metrics.lock_wait_seconds.observe(time.monotonic() - started)
        log.info(
            "session resolved after waiting for the lock holder",
            extra={
                "session_id": session_id,
                "conversation_id": conversation_id,
                "proc": process_name(self.process_kind),
                "waited_ms": round((time.monotonic() - started) * 1000, 2),
            },
        )
        return ResolvedSession(session_id, conversation_id, user_id, "waited")

    def _resolve_holding(
        self, lock: FencedLock, session_id: str, user_id: int, *, waited: bool
    ) -> ResolvedSession:
        try:
            # Look again: a holder may have finished between our miss and our acquisition.
            tracked = self.touch(session_id, user_id)
            ensure_owner([tracked.user_id], user_id)
            if tracked.conversation_id:
                return ResolvedSession(
                    session_id, tracked.conversation_id, user_id, "waited" if waited else "tracked"
                )
            conversation, how = self._find_or_create(lock, session_id, user_id)
            if not self._track(lock, conversation):
                log.warning(
                    "fence moved while creating: another process holds the lock now; it will "
                    "find this conversation in the database and track it",
                    extra={"session_id": session_id, "conversation_id": conversation.id,
                           "proc": process_name(self.process_kind), "fence": lock.fence},
                )
            return ResolvedSession(session_id, conversation.id, user_id, how)
        finally:
            if lock.held:
                try:
                    lock.release()
                except LockError:
                    log.warning("session lock expired before release",
                                extra={"session_id": session_id, "fence": lock.fence})

    def _find_or_create(
        self, lock: FencedLock, session_id: str, user_id: int
    ) -> tuple[Conversation, str]:
        with self.db.read() as db:
            rows = db.scalars(select(Conversation).where(Conversation.session_id == session_id)).all()
        ensure_owner((row.user_id for row in rows), user_id)
        live = [row for row in rows if row.deleted_at is None]
        if live:
            metrics.session_key_misses.inc()
            # A key lost with Redis (restarted empty, evicted) in front of a database that kept
            # everything is expected, not an incident: INFO.
            log.info(
                "session key missing: conversation recovered from the database",
                extra={"session_id": session_id, "conversation_id": live[0].id,
                       "proc": process_name(self.process_kind)},
            )
            return live[0], "recovered"
        # The fence is checked before the write transaction, never inside it: a write transaction
        # holds SQLite's one write lock, and a slow Redis would stall every writer of the database.
        # (Checked and inserted are not one atomic step in any case; the upsert below is the guard.)
        if not lock.fence_is_current():
            raise StaleFence()
        with self.db.write() as db:
            # The database's own upsert on the partial unique index (one live conversation per
            # session): a twin that got past a stale fence loses here without an error, and we
            # take the row that won instead.
            created_id = db.execute(
                self.db.insert(Conversation)
                .values(session_id=session_id, user_id=user_id, created_by=process_name(self.process_kind),
                        creation_fence=lock.fence or 0)
                .on_conflict_do_nothing(index_elements=[Conversation.session_id],
                                        index_where=Conversation.deleted_at.is_(None))
                .returning(Conversation.id)
            ).scalar()
            conversation = db.scalars(select(Conversation).where(
                Conversation.session_id == session_id, Conversation.deleted_at.is_(None))).one()
        if created_id is None:
            ensure_owner([conversation.user_id], user_id)
            metrics.unique_constraint_saves.inc()
            log.warning(
                "unique constraint kept a second conversation out",
                extra={"session_id": session_id, "conversation_id": conversation.id,
                       "proc": process_name(self.process_kind)},
            )
            return conversation, "recovered"
        metrics.conversations_created.inc()
        log.info(
            "conversation created",
            extra={"session_id": session_id, "conversation_id": conversation.id,
                   "proc": conversation.created_by, "fence": lock.fence},
        )
        return conversation, "created"

    def _track(self, lock: FencedLock, conversation: Conversation) -> bool:
        """Track `conversation` in the session hash (if the fence is still ours) and release."""
        return self.commit(lock, conversation.session_id, TrackedSession(
            conversation_id=conversation.id, user_id=conversation.user_id, last_seen_at_ms=now_ms()))

    def repair(self, session_id: str, *, replacing: str | None) -> bool:
        """Make the tracked key say what the database says now. True if the key agrees with it.

        `replacing` is the conversation the caller saw tracked (None: the key was missing). The
        session's live conversation is read again under the session lock, never taken from the
        caller: a conversation read before the lock may have been deleted since, and the key must
        not name it (with no live conversation left, a key naming `replacing` is dropped). Takes
        the lock without waiting: if someone holds it, they are resolving this very session and
        will write what the database says.
        """
        lock = self.lock(session_id)
        if not lock.acquire():
            return False
        metrics.lock_acquisitions.inc()
        with self.db.read() as db:
            conversation = db.scalars(select(Conversation).where(
                Conversation.session_id == session_id, Conversation.deleted_at.is_(None))).first()
        if conversation is None:
            try:
                if replacing is not None:
                    self.forget(session_id, replacing)
            finally:
                lock.release()
            log.info("session key names no live conversation: dropped",
                     extra={"session_id": session_id, "tracked_conversation_id": replacing,
                            "proc": process_name(self.process_kind)})
            return True
        written = self._track(lock, conversation)
        metrics.session_key_repairs.inc()
        # A missing key is rebuilt quietly (Redis restarted empty: expected); a key that named
        # another conversation is a real disagreement: WARNING.
        log.log(
            logging.WARNING if replacing is not None else logging.DEBUG,
            "session key repaired from the database" if replacing is not None else "session key rebuilt",
            extra={"session_id": session_id, "conversation_id": conversation.id,
                   "tracked_conversation_id": replacing, "proc": process_name(self.process_kind),
                   "written": written},
        )
        return written

    # -- ownership and the status view -------------------------------------------------------

    def require_owner(self, session_id: str, user_id: int, *, claim: bool = False) -> None:
        """NotFound unless the session is `user_id`'s (tracked for them, or their conversation's).
        With `claim` (a client about to use the session: listening before its first message), an
        id nobody has yet is reserved for `user_id` instead, so that nobody else can then use or
        listen to it; another user's session is NotFound all the same."""
        owner = self.redis.hget(keys.session_key(session_id), USER_FIELD)
        if owner is None:
            with self.db.read() as db:
                owners = db.scalars(select(Conversation.user_id).where(Conversation.session_id == session_id)).all()
            if owners or not claim:
                ensure_owner(owners, user_id, known=True)
                return
            self.reserve(session_id, user_id)  # HSETNX: of two racing claims the first stays
            owner = self.redis.hget(keys.session_key(session_id), USER_FIELD)
            if owner is not None and int(owner) != user_id:
                self.redis.zrem(keys.user_reservations(user_id), session_id)  # lost the race: not ours
        ensure_owner([int(owner)] if owner is not None else [], user_id, known=True)

    def known(self, session_id: str) -> bool:
        """Whether Redis tracks the session or the database has a conversation of it (even deleted)."""
        if self.redis.exists(keys.session_key(session_id)):
            return True
        with self.db.read() as db:
            return db.scalar(select(Conversation.id).where(Conversation.session_id == session_id).limit(1)) is not None

    def status(self, session_id: str, user_id: int | None = None) -> dict:
        """What Redis and the database each believe about a session, and whether they agree.

        With `user_id` (the API), a session of another user (or of nobody) is NotFound, and the
        creating process (host name and pid, from the database) and the lock's fence are left
        out: they are for operators, who pass None.
        """
        tracked, ttl_ms, lock_ttl_ms = self.tracked(session_id)
        with self.db.read() as db:
            rows = db.scalars(select(Conversation).where(Conversation.session_id == session_id)).all()
            if user_id is not None:
                ensure_owner([tracked.user_id, *(row.user_id for row in rows)], user_id, known=True)
            live = next((row for row in rows if row.deleted_at is None), None)
            pending = db.scalar(select(func.count()).where(
                Message.conversation_id == live.id,
                Message.role == MessageRole.USER,
                Message.status == MessageStatus.PENDING,
            )) if live else 0
        database_conversation = live.id if live else None
        tracked_view = {
            "key": keys.session_key(session_id),
            "conversation_id": tracked.conversation_id,
            "ttl_ms": ttl_ms if ttl_ms >= 0 else None,
            "last_seen_at": tracked.last_seen_at_ms,
        }
        view = {
            "session_id": session_id,
            "conversation_id": database_conversation,
            "tracked": tracked_view,
            "lock": {"held": lock_ttl_ms != -2, "ttl_ms": lock_ttl_ms if lock_ttl_ms >= 0 else None},
            "consistent": tracked.conversation_id == database_conversation,
            "pending_replies": pending,
        }
        if user_id is None:
            view["created_by"] = live.created_by if live else None
            view["fence"] = tracked.fence
        return view

