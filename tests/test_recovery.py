"""The recovery watcher (workers/recovery.py), one tick at a time against a real Redis: Redis that
lost its data is swept at once; a reply whose claim lapsed, or that nobody claimed after its job
left the queue, gets one takeover job; live claims, queued jobs and later messages are left alone;
retries that fell due are moved to the queue."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

import pytest
from sqlalchemy import update

from app.models import Message, utcnow
from app.wiring import Wiring
from tests.helpers import new_session_id
from workers import recovery as recovery_module


@pytest.fixture
def watcher(settings, services):
    wiring = Wiring(dataclasses.replace(settings, stuck_after_s=5.0), process_kind="worker")
    yield recovery_module.Recovery(wiring)
    wiring.close()


def queued_ids(services) -> list[str]:
    return [raw.decode() for raw in services.rq_redis.lrange(services.queue.key, 0, -1)]


def test_redis_that_lost_its_data_is_swept_at_once(api, services, watcher):
    watcher.tick()  # the marker is set (a first start sweeps too: nothing was pending)
    posted = api.send(new_session_id(), "in flight").json
    assert watcher.tick()["swept"] is None  # the marker is there: nothing to do
    services.rq_redis.flushall()  # Redis restarted empty: the job is gone with the marker
    assert watcher.tick()["swept"] == [posted["message"]["id"]]
    assert queued_ids(services) == [posted["job_id"]]
    assert watcher.tick()["swept"] is None


def test_a_lapsed_claim_gets_one_takeover_job_and_a_live_one_none(api, services, watcher):
    from app import runs

    watcher.tick()
    session_id = new_session_id()
    first = api.send(session_id, "being written").json
    api.send(session_id, "after it")  # waits behind the first: never taken over while it is written
    services.rq_redis.delete(services.queue.key)  # a worker took both jobs
    held = runs.claim(services, first["message"]["id"], "a-worker")
    assert watcher.tick()["taken_over"] == []  # its lease is live; the second waits behind it
    with services.db.write() as db:
        db.execute(update(Message).where(Message.id == held.message_id)
                   .values(claimed_until=utcnow() - timedelta(seconds=5)))  # the worker died
    assert watcher.tick()["taken_over"] == [first["message"]["id"]]
    (takeover,) = queued_ids(services)
    assert takeover.startswith(first["job_id"] + "-takeover-")
    assert watcher.tick()["taken_over"] == []  # queued: waiting its turn, not taken over again
    services.rq_redis.delete(services.queue.key)
    assert watcher.tick()["taken_over"] == []  # one takeover per message per window


def test_a_job_taken_and_never_started_is_taken_over_after_stuck_after(api, services, watcher, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(recovery_module.time, "monotonic", lambda: clock[0])
    watcher.tick()
    posted = api.send(new_session_id(), "taken, then the worker died").json
    assert watcher.tick()["taken_over"] == []  # in the queue
    services.rq_redis.lmove(services.queue.key, services.queue.intermediate_queue_key)  # BLMOVE, then death
    assert watcher.tick()["taken_over"] == []  # first seen unclaimed now
    clock[0] += 4.9
    assert watcher.tick()["taken_over"] == []
    clock[0] += 0.2
    assert watcher.tick()["taken_over"] == [posted["message"]["id"]]


def test_deleted_conversations_and_answered_messages_are_left_alone(api, services, watcher, run_jobs):
    watcher.tick()
    api.send(new_session_id(), "answered")
    run_jobs()
    deleted = api.send(new_session_id(), "deleted").json
    api.delete(f"/api/conversations/{deleted['conversation_id']}")
    services.rq_redis.delete(services.queue.key)
    with services.db.write() as db:
        db.execute(update(Message).values(claimed_until=utcnow() - timedelta(seconds=60)))
    assert watcher.tick()["taken_over"] == []



def test_retries_that_fell_due_are_moved_to_the_queue(services, watcher):
    from datetime import UTC, datetime

    from tests.test_recovery import noop_for_recovery_test  # importable by RQ's workers

    job = services.queue.enqueue_at(datetime.now(UTC) - timedelta(seconds=1), noop_for_recovery_test)
    assert watcher.tick()["scheduled"] == 1
    assert queued_ids(services) == [job.id]
    assert watcher.tick()["scheduled"] == 0


def noop_for_recovery_test() -> None:
    pass
