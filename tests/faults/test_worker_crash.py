"""Faults 1 and 6: a work-horse killed with SIGKILL mid-reply, and one job running twice at once (a
whole worker killed is tests/faults/test_fast_recovery.py's: the recovery watcher answers it in seconds,
before RQ's own notice, a minute later, which no longer decides how long a user waits)."""

from __future__ import annotations

import os
import signal

import pytest
from sqlalchemy import select

from app.models import Message
from tests.faults.conftest import horse_of
from tests.helpers import new_session_id, wait_for

pytestmark = pytest.mark.slow


def replies_of(services, conversation_id):
    with services.db.read() as db:
        return db.scalars(select(Message).where(Message.conversation_id == conversation_id,
                                                Message.role == "assistant")).all()


def status_of(api, conversation_id):
    return [m["status"] for m in api.get(f"/api/conversations/{conversation_id}").json["messages"]]


def test_a_work_horse_killed_mid_reply_is_retried_and_replies_once(api, services, workers, fake_llm):
    worker = workers.start_worker("w1", "--with-scheduler")
    fake_llm.hold()
    posted = api.send(new_session_id(), "survive the crash").json
    fake_llm.wait_for_requests(1, timeout=60)  # the horse is inside the agent call now
    os.kill(horse_of(worker.pid), signal.SIGKILL)
    fake_llm.release()
    wait_for(lambda: status_of(api, posted["conversation_id"])[0] == "answered", 60, "the retried reply")
    assert len(replies_of(services, posted["conversation_id"])) == 1
    assert len(fake_llm.requests) == 2  # the killed attempt and its retry


def test_the_same_job_running_on_two_workers_at_once_calls_the_agent_once(api, services, workers, fake_llm):
    """Two deliveries of one reply on two workers (what a retry racing a live horse amounts to):
    the generation's claim lets one call the agent; the other sees the live claim and ends."""
    from app.jobqueue import REPLY_JOB

    fake_llm.hold()  # the first run stays inside its agent call until the second has ended
    workers.start_worker("w1")
    workers.start_worker("w2")
    posted = api.send(new_session_id(), "duplicate delivery").json
    services.queue.enqueue(REPLY_JOB, posted["message"]["id"], job_id="reply-duplicate-delivery")
    fake_llm.wait_for_requests(1, timeout=60)
    wait_for(lambda: services.queue.finished_job_registry.count == 1, 30, "the second run to leave")
    assert len(fake_llm.requests) == 1
    fake_llm.release()
    wait_for(lambda: services.queue.finished_job_registry.count == 2, 30, "both runs to finish")
    assert services.queue.failed_job_registry.count == 0
    assert len(fake_llm.requests) == 1
    assert len(replies_of(services, posted["conversation_id"])) == 1
    assert status_of(api, posted["conversation_id"]) == ["answered", "complete"]


def test_a_message_that_kills_every_horse_fails_visibly_and_blocks_nothing(api, services, workers, fake_llm):
    """Issue 11, hole 3: every work-horse that tries the poisoned message dies (SIGKILL, as the
    OOM killer or RQ's timeout would). No failure callback runs; the attempts counted in the
    database fail the message with `worker_died` within the retry schedule, and the session's
    next message is answered."""
    attempts = services.settings.reply_retries + 1  # the fixture's settings: 2 retries, 3 calls
    worker = workers.start_worker("w1", "--with-scheduler")
    fake_llm.hold()
    session_id = new_session_id()
    poisoned = api.send(session_id, "poison").json
    for n in range(1, attempts + 1):
        fake_llm.wait_for_requests(n, timeout=60)  # a horse is inside the agent call: kill it
        os.kill(horse_of(worker.pid), signal.SIGKILL)
    wait_for(lambda: status_of(api, poisoned["conversation_id"]) == ["failed"], 60,
             "the poisoned message to fail (the last run after the retries)")
    message = api.get(f"/api/conversations/{poisoned['conversation_id']}").json["messages"][0]
    assert message["failure_reason"] == "worker_died"
    assert len(fake_llm.requests) == attempts  # the last run made no agent call
    fake_llm.release()
    assert api.send(session_id, "and now a normal one").status_code == 202
    wait_for(lambda: status_of(api, poisoned["conversation_id"]) == ["failed", "answered", "complete"], 60,
             "the next message of the session to be answered")
