"""Runs (issue 12) on real processes: stock `rq worker` processes, a real Redis, a streaming fake
LLM that counts its calls and can be paused mid-reply; SQLite and PostgreSQL.

One generation per user message (a burst with four workers: one agent call and one token stream
each, replies in order, each reply given exactly the transcript before it); Stop before the first
token, mid-stream and around a SIGKILLed work-horse (nothing committed after Stop's answer, the
partial text kept once, never answered again); the three if_busy policies against a generation
held mid-reply."""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest
from sqlalchemy import select

from app import events, keys
from app.models import Message
from tests.faults.conftest import horse_of
from tests.helpers import new_session_id, wait_for

pytestmark = pytest.mark.slow

REPLY_WAIT_S = 60  # a worker's start (its first job imports the app) and the retry schedule, with room


@pytest.fixture
def workers(settings, services, fake_llm, make_stack):
    return make_stack(settings.database_url, ARZANI_AGENT="openai", OPENAI_BASE_URL=fake_llm.url,
                      ARZANI_REPLY_RETRIES=str(settings.reply_retries))


def messages_of(api, conversation_id):
    return api.get(f"/api/conversations/{conversation_id}").json["messages"]


def log_entries(services, session_id):
    """The session's event log: (id, type, data)."""
    return [(entry_id, fields["type"], json.loads(fields["data"]))
            for entry_id, fields in services.redis.xrange(keys.session_log(session_id))]


def after(entries, entry_id):
    return [e for e in entries if events.parse_id(e[0]) > events.parse_id(entry_id)]


def transcript_before(messages, user_message):
    """What the agent must have been given to answer `user_message`: the conversation's user
    messages up to it (failed ones left out), each followed by its reply, in that order."""
    replies = {m["reply_to"]: m for m in messages if m["role"] == "assistant"}
    turns = []
    for m in messages:
        if m["role"] != "user" or m["id"] > user_message["id"] or m["status"] == "failed":
            continue
        turns.append(m)
        if m["id"] in replies and m["id"] != user_message["id"]:
            turns.append(replies[m["id"]])
    return turns


def test_a_burst_of_ten_messages_with_four_workers_makes_ten_agent_calls(api, services, workers, fake_llm):
    """Ten messages of one session posted at once, four stock workers: each message gets one agent
    call, one `start` and one token stream, replies in message order, each written from exactly
    the transcript before its message (no later message seen)."""
    for n in range(4):
        workers.start_worker(f"w{n}", "--with-scheduler", "-c", "workers.rq_settings")
    fake_llm.hold()  # the first generation waits until every message is stored
    session_id = new_session_id()
    posted = [api.send(session_id, f"burst message {n}").json for n in range(10)]
    conversation_id = posted[0]["conversation_id"]
    fake_llm.wait_for_requests(1, timeout=REPLY_WAIT_S)
    fake_llm.release()
    wait_for(lambda: [m["status"] for m in messages_of(api, conversation_id) if m["role"] == "user"]
             == ["answered"] * 10, REPLY_WAIT_S, "ten replies")
    messages = messages_of(api, conversation_id)
    users = [m for m in messages if m["role"] == "user"]
    replies = {m["reply_to"]: m for m in messages if m["role"] == "assistant"}
    assert len(fake_llm.requests) == 10, "one agent call per user message"
    assert sorted(replies) == [m["id"] for m in users]
    assert [replies[m["id"]]["id"] for m in users] == sorted(r["id"] for r in replies.values()), "in order"
    for request, user in zip(fake_llm.requests, users, strict=True):
        expected = transcript_before(messages, user)
        assert [(t["role"], t["content"]) for t in request["messages"]] == \
            [(m["role"], m["content"]) for m in expected]
        assert replies[user["id"]]["context_upto"] == max(m["id"] for m in expected)
    entries = log_entries(services, session_id)
    starts = [data["reply_to"] for _, kind, data in entries if kind == "start"]
    assert sorted(starts) == [m["id"] for m in users], "one generation (start) per message"
    epochs = {}
    for entry_id, kind, data in entries:
        if kind == "start":
            epochs[data["reply_to"]] = entry_id
        elif kind == "token":
            assert data["epoch"] == epochs[data["reply_to"]], "tokens of one stream per message"


def test_stop_before_the_first_token_leaves_the_message_stopped_with_no_reply(api, services, workers, fake_llm):
    workers.start_worker("w1", "--with-scheduler", "-c", "workers.rq_settings")
    fake_llm.hold()
    session_id = new_session_id()
    posted = api.send(session_id, "never mind").json
    fake_llm.wait_for_requests(1, timeout=REPLY_WAIT_S)  # the generation started; no token yet
    answer = api.post(f"/api/sessions/{session_id}/stop")
    assert answer.status_code == 200
    stopped = answer.json["stopped"]
    assert stopped["message"]["id"] == posted["message"]["id"] and stopped["message"]["status"] == "stopped"
    assert stopped["reply"] is None
    stop_seen = log_entries(services, session_id)[-1][0]
    fake_llm.release()  # the agent now streams: every token is refused, and nothing attaches
    wait_for(lambda: services.queue.finished_job_registry.count == 1, REPLY_WAIT_S, "the job to end")
    assert [(m["role"], m["status"]) for m in messages_of(api, posted["conversation_id"])] == [("user", "stopped")]
    assert [kind for _, kind, _ in after(log_entries(services, session_id), stop_seen)] == []
    assert api.post(f"/api/sessions/{session_id}/stop").json["stopped"] is None  # idempotent
    assert len(fake_llm.requests) == 1


def test_stop_mid_stream_keeps_the_partial_text_once_and_commits_nothing_after(api, services, workers, fake_llm):
    workers.start_worker("w1", "--with-scheduler", "-c", "workers.rq_settings")
    fake_llm.pause_after = 3
    session_id = new_session_id()
    posted = api.send(session_id, "tell me a long story").json
    fake_llm.wait_paused(1, timeout=REPLY_WAIT_S)
    wait_for(lambda: events.partial_text(services.redis, session_id, posted["message"]["id"]).count(" ") == 2,
             10, "three words in the log")
    stopped = api.post(f"/api/sessions/{session_id}/stop").json["stopped"]
    shown = events.partial_text(services.redis, session_id, posted["message"]["id"])
    assert stopped["reply"]["content"] == shown == "LLM heard 'tell"
    assert stopped["reply"]["status"] == "stopped" and stopped["message"]["status"] == "stopped"
    stop_seen = log_entries(services, session_id)[-1][0]
    fake_llm.resume()  # the rest of the reply reaches the worker: refused at its next token
    wait_for(lambda: services.queue.finished_job_registry.count == 1, REPLY_WAIT_S, "the job to end")
    messages = messages_of(api, posted["conversation_id"])
    assert [(m["role"], m["status"], m["content"]) for m in messages] == [
        ("user", "stopped", "tell me a long story"), ("assistant", "stopped", "LLM heard 'tell")]
    assert after(log_entries(services, session_id), stop_seen) == []
    # the next message is answered with the stopped reply's partial text in its history
    api.send(session_id, "go on")
    wait_for(lambda: len(messages_of(api, posted["conversation_id"])) == 4, REPLY_WAIT_S, "the next reply")
    assert [t["content"] for t in fake_llm.requests[-1]["messages"]] == \
        ["tell me a long story", "LLM heard 'tell", "go on"]


def test_stop_around_a_killed_work_horse_is_never_resurrected(api, services, workers, fake_llm):
    """The horse writing the reply is SIGKILLed and Stop comes at once: whatever runs next (RQ's
    retry, the sweeper) finds the message stopped; the partial text is kept once, no other reply."""
    worker = workers.start_worker("w1", "--with-scheduler", "-c", "workers.rq_settings")
    fake_llm.pause_after = 3
    session_id = new_session_id()
    posted = api.send(session_id, "about to crash").json
    fake_llm.wait_paused(1, timeout=REPLY_WAIT_S)
    horse = horse_of(worker.pid)
    # Stop comes before the worker has handled the death: frozen, it cannot schedule RQ's retry
    # (1 s later), which on a busy machine answered the message before this test's Stop arrived.
    os.kill(worker.pid, signal.SIGSTOP)
    try:
        os.kill(horse, signal.SIGKILL)
        stopped = api.post(f"/api/sessions/{session_id}/stop").json["stopped"]
    finally:
        os.kill(worker.pid, signal.SIGCONT)
    assert stopped is not None and stopped["message"]["status"] == "stopped"
    stop_seen = log_entries(services, session_id)[-1][0]
    fake_llm.resume()
    from workers.maintenance import sweep_pending

    sweep_pending(services, older_than_s=0)  # the sweeper looks too: nothing pending to enqueue
    job = services.queue.fetch_job(posted["job_id"])
    wait_for(lambda: job.get_status(refresh=True) in ("finished", "failed"), REPLY_WAIT_S, "RQ's retry to end")
    messages = messages_of(api, posted["conversation_id"])
    assert messages[0]["status"] == "stopped"
    assert [m["status"] for m in messages[1:]] in ([], ["stopped"])
    assert after(log_entries(services, session_id), stop_seen) == []
    assert len(fake_llm.requests) == 1, "a stopped message is never generated again"


def test_if_busy_reject_refuses_and_stores_nothing(api, services, workers, fake_llm):
    workers.start_worker("w1", "--with-scheduler", "-c", "workers.rq_settings")
    fake_llm.pause_after = 2
    session_id = new_session_id()
    posted = api.send(session_id, "slow one").json
    fake_llm.wait_paused(1, timeout=REPLY_WAIT_S)
    refused = api.send(session_id, "me too", if_busy="reject")
    assert refused.status_code == 409
    assert refused.json["error"]["code"] == "session_busy" and int(refused.headers["Retry-After"]) >= 1
    assert len(messages_of(api, posted["conversation_id"])) == 1
    fake_llm.resume()
    wait_for(lambda: messages_of(api, posted["conversation_id"])[0]["status"] == "answered", REPLY_WAIT_S,
             "the slow reply")
    assert api.send(session_id, "me too", if_busy="reject").status_code == 202  # idle now
    assert api.send(session_id, "bad", if_busy="shout").status_code == 422


def test_if_busy_interrupt_stops_the_reply_and_answers_the_new_message_with_it(api, services, workers, fake_llm):
    workers.start_worker("w1", "--with-scheduler", "-c", "workers.rq_settings")
    fake_llm.pause_after = 3
    session_id = new_session_id()
    first = api.send(session_id, "explain everything").json
    fake_llm.wait_paused(1, timeout=REPLY_WAIT_S)
    wait_for(lambda: events.partial_text(services.redis, session_id, first["message"]["id"]).count(" ") == 2,
             10, "three words in the log")
    second = api.send(session_id, "no, just this", if_busy="interrupt")
    assert second.status_code == 202
    fake_llm.resume()
    wait_for(lambda: len(messages_of(api, first["conversation_id"])) == 4, REPLY_WAIT_S, "the new reply")
    messages = messages_of(api, first["conversation_id"])  # the stopped reply was kept before the new message
    assert [(m["role"], m["status"]) for m in messages] == [
        ("user", "stopped"), ("assistant", "stopped"), ("user", "answered"), ("assistant", "complete")]
    assert [t["content"] for t in fake_llm.requests[-1]["messages"]] == \
        ["explain everything", "LLM heard 'explain", "no, just this"]
    assert len(fake_llm.requests) == 2


def test_if_busy_enqueue_answers_in_order_after_the_current_reply(api, services, workers, fake_llm):
    workers.start_worker("w1", "--with-scheduler", "-c", "workers.rq_settings")
    workers.start_worker("w2", "--with-scheduler", "-c", "workers.rq_settings")
    fake_llm.pause_after = 2
    session_id = new_session_id()
    first = api.send(session_id, "first").json
    fake_llm.wait_paused(1, timeout=REPLY_WAIT_S)
    sent = []
    threads = [threading.Thread(target=lambda n=n: sent.append(api.send(session_id, f"then {n}",
                                                                         if_busy="enqueue").status_code))
               for n in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sent == [202, 202, 202]
    fake_llm.resume()
    wait_for(lambda: len(messages_of(api, first["conversation_id"])) == 8, REPLY_WAIT_S, "four replies")
    messages = messages_of(api, first["conversation_id"])
    users = [m for m in messages if m["role"] == "user"]
    assert len(fake_llm.requests) == 4
    for request, user in zip(fake_llm.requests, users, strict=True):
        assert [t["content"] for t in request["messages"]] == \
            [m["content"] for m in transcript_before(messages, user)]


def test_a_stopped_message_is_not_pending_for_the_sweeper_or_a_retry(api, services, workers):
    """Stop marks the message in the database: the sweeper's query and a reply job skip it."""
    from workers import jobs
    from workers.maintenance import sweep_pending

    session_id = new_session_id()
    posted = api.send(session_id, "queued, never run").json  # no worker: the job waits in the queue
    stopped = api.post(f"/api/sessions/{session_id}/stop").json["stopped"]
    assert stopped["message"]["status"] == "stopped" and stopped["reply"] is None
    assert sweep_pending(services, older_than_s=0) == []
    assert jobs.reply(posted["message"]["id"])["attached_for"] == []
    with services.db.read() as db:
        rows = db.scalars(select(Message).where(Message.conversation_id == posted["conversation_id"])).all()
    assert [(m.role, m.status, m.attempts) for m in rows] == [("user", "stopped", 0)]


def test_two_regenerate_calls_at_once_through_gunicorn_leave_one_current_reply(workers, fake_llm):
    """Two web processes take two regenerate calls at the same instant: one new generation (one
    agent call), one current reply, the first version kept."""
    fake_llm.numbered = True
    workers.start_web(workers=2)
    workers.start_worker("w1", "--with-scheduler", "-c", "workers.rq_settings")
    workers.start_worker("w2", "--with-scheduler", "-c", "workers.rq_settings")
    token = workers.create_user("regenerator")
    session_id = new_session_id()
    status, posted = workers.request("POST", f"/api/sessions/{session_id}/messages", {"content": "twice?"}, token)
    assert status == 202
    path = f"/api/conversations/{posted['conversation_id']}"

    def replies():
        return [m for m in workers.request("GET", path, token=token)[1]["messages"] if m["role"] == "assistant"]

    wait_for(lambda: replies() and replies()[0]["status"] == "complete", REPLY_WAIT_S, "the first reply")
    barrier = threading.Barrier(2)
    codes = []

    def regenerate():
        barrier.wait(10)
        codes.append(workers.request("POST", f"{path}/messages/{posted['message']['id']}/regenerate",
                                     token=token)[0])

    threads = [threading.Thread(target=regenerate) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(codes) == [202, 409]
    wait_for(lambda: replies()[0]["current_version"] == 2 and
             workers.request("GET", path, token=token)[1]["messages"][0]["status"] == "answered",
             REPLY_WAIT_S, "the new version")
    (reply,) = replies()
    assert [v["content"][-4:] for v in reply["versions"]] == ["(#1)", "(#2)"]
    assert len(fake_llm.requests) == 2
