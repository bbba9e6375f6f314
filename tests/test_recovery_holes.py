"""Issue 11's holes around the session lock and the database, each forced deterministically
against a real Redis server, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading

from app.locks import FencedLock
from app.models import User
from tests.helpers import new_session_id


def test_a_slow_redis_during_creation_holds_no_database_write_lock(services, api, monkeypatch):
    """Hole 9: the fence check (a Redis round trip) happens outside the write transaction, so a
    Redis that answers slowly while a conversation is created stalls no other writer."""
    in_check, go_on = threading.Event(), threading.Event()
    original = FencedLock.fence_is_current

    def slow_fence_check(self):
        in_check.set()
        go_on.wait(30)
        return original(self)

    monkeypatch.setattr(FencedLock, "fence_is_current", slow_fence_check)
    created = {}
    creator = threading.Thread(target=lambda: created.update(
        resolved=services.sessions.resolve(new_session_id(), api.user_id)))
    creator.start()
    try:
        assert in_check.wait(30), "the creation never reached its fence check"
        wrote = threading.Event()

        def another_writer():
            with services.db.write() as db:
                db.add(User(name="written-meanwhile", kind="api"))
            wrote.set()

        writer = threading.Thread(target=another_writer)
        writer.start()
        # The creator is parked in its Redis call; the other writer must not be waiting for it.
        assert wrote.wait(10), "a writer waited for a Redis round trip made inside a write transaction"
    finally:
        go_on.set()
        creator.join(30)
        writer.join(30)
    assert created["resolved"].how == "created"


def test_the_fence_stays_monotonic_when_redis_restarts_empty_between_two_holders(services, redis_server):
    """Hole 6: a holder from before a Redis restart must not pass the fence check of the holder
    after it (an INCR counter restarting at 1 would hand out the same fence twice)."""
    from app import keys
    from app.sessions import TrackedSession

    session_id = new_session_id()
    before = services.sessions.lock(session_id)
    assert before.acquire()
    redis_server.stop()
    redis_server.start()  # same port, nothing kept: the lock and the fence are gone
    after = services.sessions.lock(session_id)
    assert after.acquire()
    assert after.fence > before.fence
    assert services.sessions.commit(after, session_id, TrackedSession(conversation_id="after", user_id=1))
    assert not before.fence_is_current()
    written = services.sessions.commit(before, session_id, TrackedSession(conversation_id="before", user_id=1))
    assert not written
    assert services.redis.hget(keys.session_key(session_id), "conversation_id") == "after"
