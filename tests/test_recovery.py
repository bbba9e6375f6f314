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
    assert watcher.tick()["taken_over"] == []  # one takeover per message per ARZANI_STUCK_AFTER


def lapsed_first_message(api, services) -> dict:
    """A sent message whose job a worker took and whose claim lapsed (the worker died writing)."""
    from app import runs

    posted = api.send(new_session_id(), "its writer died").json
    services.rq_redis.delete(services.queue.key)
    held = runs.claim(services, posted["message"]["id"], "a-worker")
    with services.db.write() as db:
        db.execute(update(Message).where(Message.id == held.message_id)
                   .values(claimed_until=utcnow() - timedelta(seconds=5)))
    return posted


def test_takeovers_are_spaced_by_stuck_after_counted_from_the_last_one(api, services, watcher):
    """Looks either side of any edge of time (the ids were per fixed 5 s window: two looks 10 ms
    apart across its edge made two takeovers) give one takeover; the next comes once the spacing
    key, set with the last takeover, is gone."""
    from app import jobqueue

    watcher.tick()
    posted = lapsed_first_message(api, services)
    assert watcher.tick()["taken_over"] == [posted["message"]["id"]]
    services.rq_redis.delete(services.queue.key)  # a worker took the takeover, and died too
    with services.db.read() as db:
        stored = db.get(Message, posted["message"]["id"])
    key = jobqueue.takeover_key(services.queue.name, stored)
    assert 0 < services.rq_redis.pttl(key) <= 5000  # the watcher's ARZANI_STUCK_AFTER
    assert watcher.tick()["taken_over"] == []
    services.rq_redis.delete(key)  # 5 s passed since the takeover
    assert watcher.tick()["taken_over"] == [posted["message"]["id"]]
    assert len({job_id for job_id in queued_ids(services)}) == 1


def test_a_takeover_whose_enqueue_failed_after_its_spacing_key_comes_one_interval_later(api, services, watcher,
                                                                                        monkeypatch):
    """Redis refused the enqueue after the spacing key was set (a process dying there leaves the
    same state): the tick fails, nothing is queued, the next looks wait out the key, then the
    takeover comes. Delayed, never lost."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from app import jobqueue

    watcher.tick()
    posted = lapsed_first_message(api, services)

    def refused(*_args, **_kwargs):
        raise RedisConnectionError("Redis went away between the SET and the enqueue")

    monkeypatch.setattr(jobqueue, "_enqueue", refused)
    with pytest.raises(RedisConnectionError):
        watcher.tick()
    monkeypatch.undo()
    assert queued_ids(services) == []
    assert watcher.tick()["taken_over"] == []  # the key holds it back for ARZANI_STUCK_AFTER
    with services.db.read() as db:
        services.rq_redis.delete(jobqueue.takeover_key(services.queue.name, db.get(Message, posted["message"]["id"])))
    assert watcher.tick()["taken_over"] == [posted["message"]["id"]]


def test_a_look_either_side_of_a_window_edge_makes_one_takeover(api, services, watcher, monkeypatch):
    """The failure of the fixed windows itself, made certain: wall clock just before, then just
    after, a multiple of ARZANI_STUCK_AFTER."""
    watcher.tick()
    posted = lapsed_first_message(api, services)
    edge = (int(recovery_module.time.time() // 5) + 1) * 5.0
    now = [edge - 0.001]
    monkeypatch.setattr(recovery_module.time, "time", lambda: now[0])
    assert watcher.tick()["taken_over"] == [posted["message"]["id"]]
    services.rq_redis.delete(services.queue.key)
    now[0] = edge + 0.001
    assert watcher.tick()["taken_over"] == []


def test_two_watchers_looking_at_once_make_one_takeover(api, services, settings):
    """Two `arzani cron` processes (a deploy overlapping the old one) tick at the same instant."""
    import threading

    wirings = [Wiring(dataclasses.replace(settings, stuck_after_s=5.0), process_kind="worker") for _ in range(4)]
    try:
        watchers = [recovery_module.Recovery(w) for w in wirings]
        watchers[0].tick()  # the marker: no sweep below
        posted = lapsed_first_message(api, services)
        start, results = threading.Barrier(len(watchers)), []

        def look(w):
            start.wait()
            results.append(w.take_over_stranded())

        threads = [threading.Thread(target=look, args=(w,)) for w in watchers]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(results) == [[], [], [], [posted["message"]["id"]]]
        assert len(queued_ids(services)) == 1
    finally:
        for w in wirings:
            w.close()


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


def test_a_retry_waiting_out_its_interval_is_not_taken_over(api, services, watcher, monkeypatch):
    """A failed attempt's retry sits in RQ's scheduled registry for its interval (15 s for the
    third, beyond ARZANI_STUCK_AFTER): it is waiting its turn, not stranded. A takeover then would
    call the agent ahead of the retry schedule. Once that registry entry is gone (lost), it is."""
    from datetime import UTC, datetime

    clock = [1000.0]
    monkeypatch.setattr(recovery_module.time, "monotonic", lambda: clock[0])
    watcher.tick()
    posted = api.send(new_session_id(), "my retry waits its turn").json
    job = services.queue.fetch_job(posted["job_id"])
    services.queue.remove(job.id)
    services.queue.scheduled_job_registry.schedule(job, datetime.now(UTC) + timedelta(seconds=60))
    assert watcher.tick()["taken_over"] == []
    clock[0] += 30  # six times ARZANI_STUCK_AFTER
    assert watcher.tick()["taken_over"] == []
    services.queue.scheduled_job_registry.remove(job.id)
    assert watcher.tick()["taken_over"] == []  # first seen unclaimed, with nothing waiting, now
    clock[0] += 5.1
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
