"""Fault 3: a lock holder frozen (SIGSTOP, as a long GC pause would) past the lock TTL while
another process takes the lock. Still one conversation, and the stale holder writes nothing."""

from __future__ import annotations

import multiprocessing
import os
import signal

import pytest
from sqlalchemy import func, select

from app import keys
from app.models import Conversation
from app.wiring import Wiring
from tests.helpers import new_session_id, wait_for

FORK = multiprocessing.get_context("fork")


def _stalling_resolver(settings, user_id, session_id, holding, results):
    services = Wiring(settings)
    sessions = services.sessions
    find_or_create = sessions._find_or_create

    def stall_then_continue(lock, *args):
        holding.set()
        os.kill(os.getpid(), signal.SIGSTOP)  # frozen here, holding the lock, until SIGCONT
        return find_or_create(lock, *args)

    sessions._find_or_create = stall_then_continue
    resolved = sessions.resolve(session_id, user_id)
    results.put((resolved.conversation_id, resolved.how))


@pytest.mark.slow
def test_a_frozen_lock_holder_cannot_split_the_session(api, services, settings):
    session_id = new_session_id()
    holding, results = FORK.Event(), FORK.Queue()
    stalled = FORK.Process(target=_stalling_resolver,
                           args=(settings, api.user_id, session_id, holding, results))
    stalled.start()
    try:
        assert holding.wait(30)
        wait_for(lambda: services.redis.pttl(keys.lock_key(session_id)) == -2, 30,
                 "the frozen holder's lock to expire")
        taken_over = services.sessions.resolve(session_id, api.user_id)  # another process, meanwhile
        assert taken_over.how == "created"
    finally:
        os.kill(stalled.pid, signal.SIGCONT)
    conversation_id, how = results.get(timeout=30)
    stalled.join(10)
    assert stalled.exitcode == 0
    assert conversation_id == taken_over.conversation_id  # it woke up and used the winner's
    assert how in ("waited", "recovered", "tracked")
    with services.db.read() as db:
        assert db.scalar(select(func.count()).where(Conversation.session_id == session_id)) == 1
    assert services.redis.hget(keys.session_key(session_id), "cid") == conversation_id
    with services.db.read() as db:
        created_with = db.get(Conversation, conversation_id).creation_fence
    # the takeover's acquisition created it, and nobody acquired the lock after it
    assert int(services.redis.hget(keys.session_key(session_id), "fence")) == created_with
