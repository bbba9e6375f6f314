"""Reply jobs: exactly one reply, in order, in the message's conversation, failures visible."""

from __future__ import annotations

import threading
from datetime import timedelta

from sqlalchemy import func, select, update

from app import keys
from app.models import Message, utcnow
from tests.helpers import new_session_id
from workers import agents, jobs


def assistant_count(services, conversation_id) -> int:
    with services.db.read() as db:
        return db.scalar(select(func.count()).where(Message.conversation_id == conversation_id,
                                                    Message.role == "assistant"))


def test_a_job_that_runs_twice_leaves_one_reply(api, services, run_jobs):
    posted = api.send(new_session_id(), "once please").json
    run_jobs()
    again = jobs.reply(posted["message"]["id"])  # a retry, or a horse that outlived its parent
    assert again["attached_for"] == []
    assert assistant_count(services, posted["conversation_id"]) == 1


def test_two_concurrent_runs_of_one_job_call_the_agent_once(api, services, monkeypatch):
    """Two runs of one job at the same instant (an RQ retry beside a horse that outlived its
    parent): the claim lets one call the agent; the other leaves, and one reply results."""
    posted = api.send(new_session_id(), "race me").json
    start_together = threading.Barrier(2)
    calls = []

    class CountingEcho(agents.EchoAgent):
        def reply(self, conversation_id, history, on_token=None):
            calls.append(conversation_id)
            return super().reply(conversation_id, history, on_token)

    monkeypatch.setattr(jobs, "make_agent", lambda settings: CountingEcho())
    real_claim = jobs.runs.claim

    def claim_together(*args, **kwargs):
        start_together.wait(10)  # both runs reach the claim before either has made it
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(jobs.runs, "claim", claim_together)
    outcomes = []
    threads = [threading.Thread(target=lambda: outcomes.append(jobs.reply(posted["message"]["id"])))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(calls) == 1
    assert sorted(len(o["attached_for"]) for o in outcomes) == [0, 1]
    assert assistant_count(services, posted["conversation_id"]) == 1
    conversation = api.get(f"/api/conversations/{posted['conversation_id']}").json
    assert conversation["messages"][0]["status"] == "answered"


def test_a_run_whose_claim_was_taken_over_attaches_nothing(api, services):
    """A run whose lease lapsed (its worker stalled) and was taken over: both have a reply in hand,
    only the newer attempt's is attached, whichever commits first."""
    posted = api.send(new_session_id(), "take me over").json
    message_id = posted["message"]["id"]
    with services.db.read() as db:
        conversation = db.get(jobs.Conversation, posted["conversation_id"])
    stalled = jobs.runs.claim(services, message_id, "stalled-run")
    assert jobs.runs.claim(services, message_id, "another-run") == jobs.runs.BUSY  # its lease is live
    with services.db.write() as db:
        db.execute(update(Message).where(Message.id == message_id)
                   .values(claimed_until=utcnow() - timedelta(seconds=1)))
    newer = jobs.runs.claim(services, message_id, "another-run")
    assert (stalled.attempt, newer.attempt) == (1, 2)
    assert not jobs.runs.renew(services, stalled)
    assert jobs._attach(services, conversation, stalled, "stale text", context_upto=message_id)[0] == "superseded"
    assert jobs._attach(services, conversation, newer, "the reply", context_upto=message_id) == ("attached", None)
    messages = api.get(f"/api/conversations/{posted['conversation_id']}").json["messages"]
    assert [(m["role"], m["content"]) for m in messages][1:] == [("assistant", "the reply")]
    assert messages[1]["context_upto"] == message_id


def test_replies_are_attached_in_the_order_of_the_user_messages(api, services):
    session_id = new_session_id()
    ids = [api.send(session_id, f"question {n}").json["message"]["id"] for n in (1, 2, 3)]
    result = jobs.reply(ids[2])  # the last message's job runs first
    assert result["attached_for"] == ids
    assert jobs.reply(ids[0])["attached_for"] == []
    conversation_id = result["conversation_id"]
    with services.db.read() as db:
        replies = db.scalars(select(Message).where(Message.conversation_id == conversation_id,
                                                   Message.role == "assistant")
                             .order_by(Message.id)).all()
    assert [r.reply_to for r in replies] == ids
    assert "message 3 of this chat" in replies[2].content
    assert 'first was "question 1"' in replies[2].content


def test_a_reply_given_up_on_is_visibly_failed(api, services, run_jobs, monkeypatch):
    class Broken:
        def reply(self, conversation_id, history, on_token=None):
            raise agents.AgentError("the model is down")

    monkeypatch.setattr(jobs, "make_agent", lambda settings: Broken())
    object.__setattr__(services.settings, "reply_retries", 0)  # the first failure is the last
    posted = api.send(new_session_id(), "anyone there?").json
    run_jobs()
    message = api.get(f"/api/conversations/{posted['conversation_id']}").json["messages"][0]
    assert message["status"] == "failed"
    assert assistant_count(services, posted["conversation_id"]) == 0


def test_a_lost_session_key_is_recovered_from_the_database(api, services, run_jobs):
    session_id = new_session_id()
    first = api.send(session_id, "before").json
    services.redis.delete(keys.session_key(session_id))  # evicted, expired, flushed...
    second = api.send(session_id, "after")
    assert second.status_code == 202
    assert second.headers["Arzani-Session-Resolution"] == "recovered"
    assert second.json["conversation_id"] == first["conversation_id"]
    assert services.redis.hget(keys.session_key(session_id), "cid") == first["conversation_id"]
    run_jobs()
    assert assistant_count(services, first["conversation_id"]) == 2


def test_worker_repairs_a_session_key_that_names_another_conversation(api, services, run_jobs):
    session_id = new_session_id()
    posted = api.send(session_id, "where will my reply go?").json
    services.redis.hset(keys.session_key(session_id), "cid", "some-other-conversation")
    run_jobs()
    assert assistant_count(services, posted["conversation_id"]) == 1
    assert services.redis.hget(keys.session_key(session_id), "cid") == posted["conversation_id"]


def test_a_stale_key_on_the_web_side_is_dropped_and_the_database_wins(api, services):
    session_id = new_session_id()
    posted = api.send(session_id, "one").json
    services.redis.hset(keys.session_key(session_id), "cid", "deleted-or-foreign")
    again = api.send(session_id, "two")
    assert again.status_code == 202
    assert again.json["conversation_id"] == posted["conversation_id"]
    assert services.redis.hget(keys.session_key(session_id), "cid") == posted["conversation_id"]


def test_no_reply_resurrects_a_deleted_conversation(api, services, run_jobs):
    session_id = new_session_id()
    posted = api.send(session_id, "forget me").json
    assert api.delete(f"/api/conversations/{posted['conversation_id']}").status_code == 204
    assert services.redis.hget(keys.session_key(session_id), "cid") is None  # untracked (the fence stays)
    run_jobs()
    assert assistant_count(services, posted["conversation_id"]) == 0
    fresh = api.send(session_id, "new start").json
    assert fresh["conversation_id"] != posted["conversation_id"]


def test_a_failed_enqueue_still_answers_202_and_the_sweeper_recovers_it(api, services, run_jobs,
                                                                         monkeypatch):
    from redis.exceptions import ConnectionError as RedisConnectionError

    from workers.maintenance import sweep_pending

    def refuse(*args, **kwargs):
        raise RedisConnectionError("Redis went away between commit and enqueue")

    monkeypatch.setattr(services.queue, "enqueue", refuse)
    posted = api.send(new_session_id(), "stored but not enqueued")
    assert posted.status_code == 202  # committed: a 503 now would invite a duplicate
    assert services.queue.count == 0
    monkeypatch.undo()

    assert sweep_pending(services, older_than_s=3600) == []  # not old enough yet
    assert sweep_pending(services, older_than_s=0) == [posted.json["message"]["id"]]
    assert sweep_pending(services, older_than_s=0) == []  # its job is queued now: left alone
    run_jobs()
    conversation = api.get(f"/api/conversations/{posted.json['conversation_id']}").json
    assert [m["status"] for m in conversation["messages"]] == ["answered", "complete"]


def test_a_client_retry_enqueues_a_job_that_was_lost(api, services, run_jobs):
    session_id = new_session_id()
    first = api.send(session_id, "hello?", client_message_id="retry-1").json
    services.queue.empty()  # the job was lost (say, Redis restarted)
    services.rq_redis.delete(f"rq:job:{first['job_id']}")
    again = api.send(session_id, "hello?", client_message_id="retry-1")
    assert again.status_code == 200 and again.json["message"]["id"] == first["message"]["id"]
    assert services.queue.get_job_ids() == [first["job_id"]]
    run_jobs()
    assert api.get(f"/api/conversations/{first['conversation_id']}").json["messages"][0]["status"] == "answered"


# -- what a reply job costs (issue 15): each horse is a fresh fork, so fixed costs add up --------

class _Counting:
    """Transactions begun, statements run and statements compiled afresh on an engine."""

    def __init__(self, engine):
        from sqlalchemy import event
        from sqlalchemy.orm import Session

        self.transactions = self.statements = self.compiled = 0
        self._engine = engine
        self._listeners = [(Session, "after_begin", self._begun), (engine, "before_cursor_execute", self._ran)]
        for target, name, listener in self._listeners:
            event.listen(target, name, listener)

    def _begun(self, session, transaction, connection):
        if connection.engine.url == self._engine.url:
            self.transactions += 1

    def _ran(self, conn, cursor, statement, parameters, context, executemany):
        self.statements += 1
        self.compiled += context is not None and context.cache_hit == context.dialect.CACHE_MISS

    def close(self):
        from sqlalchemy import event

        for target, name, listener in self._listeners:
            event.remove(target, name, listener)


def test_a_reply_is_three_database_transactions(api, services):
    posted = api.send(new_session_id(), "how many transactions?").json
    counting = _Counting(jobs.services().db.engine)
    try:
        assert jobs.reply(posted["message"]["id"])["attached_for"] == [posted["message"]["id"]]
    finally:
        counting.close()
    # the message, its conversation and its history in one read; the claim; the attach
    assert counting.transactions == 3
    assert counting.statements <= 13  # their BEGINs included (19 before issue 15)


def test_the_warm_up_commits_nothing_and_leaves_a_job_nothing_to_compile(api, services):
    from app.models import Conversation, User

    def rows():
        with services.db.read() as db:
            return [db.scalar(select(func.count()).select_from(model)) for model in (User, Conversation, Message)]

    posted = api.send(new_session_id(), "warm me").json
    before = rows()
    engine = jobs.services().db.engine
    engine.dispose()
    jobs.warm_up()  # as the worker's parent does before it forks
    assert rows() == before
    assert engine.pool.checkedout() == 0  # nothing open for a fork to inherit
    counting = _Counting(engine)
    try:
        assert jobs.reply(posted["message"]["id"])["attached_for"] == [posted["message"]["id"]]
    finally:
        counting.close()
    assert counting.statements > 0 and counting.compiled == 0
