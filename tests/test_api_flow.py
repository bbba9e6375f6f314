"""The whole path through the API: message -> one conversation -> job -> reply in it."""

from __future__ import annotations

import json

from tests.helpers import new_session_id


def test_first_message_creates_one_conversation_and_reply_lands_in_it(api, services, run_jobs):
    session_id = new_session_id()
    first = api.send(session_id, "hello there")
    assert first.status_code == 202, first.json
    assert first.headers["Arzani-Session-Resolution"] == "created"
    body = first.json
    assert body["session_id"] == session_id
    assert body["message"]["status"] == "pending"
    assert body["message"]["role"] == "user"
    assert body["job_id"].startswith(f"reply-{services.queue.name}-{body['message']['id']}-")

    second = api.send(session_id, "and again")
    assert second.status_code == 202
    assert second.headers["Arzani-Session-Resolution"] == "tracked"
    assert second.json["conversation_id"] == body["conversation_id"]

    run_jobs()

    conversation = api.get(f"/api/conversations/{body['conversation_id']}").json
    roles = [(m["role"], m["status"]) for m in conversation["messages"]]
    assert roles == [("user", "answered"), ("user", "answered"), ("assistant", "complete"),
                     ("assistant", "complete")]
    replies = [m for m in conversation["messages"] if m["role"] == "assistant"]
    user_ids = [m["id"] for m in conversation["messages"] if m["role"] == "user"]
    assert [r["reply_to"] for r in replies] == user_ids
    assert body["conversation_id"] in replies[0]["content"]
    assert 'first was "hello there"' in replies[1]["content"]
    assert "message 2 of this chat" in replies[1]["content"]

    listing = api.get("/api/conversations").json
    assert [c["id"] for c in listing["conversations"]] == [body["conversation_id"]]
    assert listing["conversations"][0]["message_count"] == 4
    assert listing["conversations"][0]["last_message"]["role"] == "assistant"


def test_status_shows_redis_and_database_agree(api, run_jobs):
    session_id = new_session_id()
    posted = api.send(session_id, "hi").json
    status = api.get(f"/api/sessions/{session_id}").json
    assert status["conversation_id"] == posted["conversation_id"]
    assert status["tracked"]["key"] == f"arzani:session:{{{session_id}}}"
    assert status["tracked"]["conversation_id"] == posted["conversation_id"]
    assert "created_by" not in status["tracked"]  # host name and pid: for operators (the CLI), not clients
    assert 0 < status["tracked"]["ttl_ms"] <= 604_800_000
    assert status["lock"] == {"held": False, "ttl_ms": None}
    assert status["consistent"] is True
    assert status["pending_replies"] == 1
    run_jobs()
    assert api.get(f"/api/sessions/{session_id}").json["pending_replies"] == 0


def _count_round_trips(monkeypatch) -> dict[str, list[bytes]]:
    """What each client sends from now on: one `send_packed_command` is one round trip."""
    from redis.connection import Connection

    sent: dict[str, list[bytes]] = {"ours": [], "rq": []}
    real = Connection.send_packed_command

    def counted(self, command, check_health=True):
        # our client decodes (str); RQ's is bytes
        sent["ours" if self.encoder.decode_responses else "rq"].append(b"".join(command) if isinstance(command, list)
                                                                       else command)
        return real(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counted)
    return sent


def test_a_message_to_a_recent_session_asks_our_redis_nothing_beyond_rqs_enqueue(api, services, monkeypatch):
    """A session this process resolved lately: no round trip of ours at all (issue 15). The
    insert validates the conversation; RQ's enqueue is its two round trips, the unique job's
    script and its bookkeeping (the queue in `rq:queues`), and that transaction carries the
    session hash's renewal and the announcements to the session's and the user's logs."""
    from app import keys

    session_id = new_session_id()
    assert api.send(session_id, "first").status_code == 202
    services.rq_redis.delete("rq:queues")  # to see the bookkeeping done again
    services.redis.hset(keys.session_key(session_id), "seen", 1)
    services.redis.pexpire(keys.session_key(session_id), 5000)
    sent = _count_round_trips(monkeypatch)
    posted = api.send(session_id, "second")
    assert posted.status_code == 202
    assert posted.headers["Arzani-Session-Resolution"] == "tracked"
    assert sent["ours"] == []
    assert len(sent["rq"]) == 2
    bookkeeping = sent["rq"][1]
    assert b"MULTI" in bookkeeping and b"SADD" in bookkeeping and bookkeeping.count(b"EVALSHA") == 2
    # renewed: its last activity and its TTL (ARZANI_SESSION_TTL, a week by default)
    assert int(services.redis.hget(keys.session_key(session_id), "seen")) > 1
    assert services.redis.pttl(keys.session_key(session_id)) > 5000
    log = services.redis.xrange(keys.session_log(session_id))
    assert [fields["type"] for _, fields in log][-1] == "message"
    user_log = services.redis.xrange(keys.user_log(api.user_id))
    assert [fields["type"] for _, fields in user_log][-1] == "message"
    assert services.queue.key.encode() in services.rq_redis.smembers("rq:queues")
    assert posted.json["job_id"] in services.queue.job_ids


def test_a_session_new_to_the_process_is_one_round_trip_of_ours(api, services, monkeypatch):
    """Another web process (its memory empty) reads and renews the session hash in one script
    before the insert; the rest rides RQ's enqueue as above."""
    session_id = new_session_id()
    assert api.send(session_id, "first").status_code == 202
    services.sessions.recent.drop(session_id)  # as a process that never saw the session
    sent = _count_round_trips(monkeypatch)
    posted = api.send(session_id, "second")
    assert posted.status_code == 202
    assert posted.headers["Arzani-Session-Resolution"] == "tracked"
    assert len(sent["ours"]) == 1 and b"EVALSHA" in sent["ours"][0]
    assert len(sent["rq"]) == 2 and sent["rq"][1].count(b"EVALSHA") == 1  # the announcements only


def test_a_redis_that_lost_its_scripts_still_gets_the_announcements_and_the_bookkeeping(api, services):
    """A restarted Redis (SCRIPT FLUSH here) answers the bare EVALSHA that rides RQ's transaction
    with NOSCRIPT; the rest of the transaction runs, and the script is sent again on its own."""
    from app import keys

    session_id = new_session_id()
    assert api.send(session_id, "first").status_code == 202
    services.redis.script_flush()
    services.rq_redis.delete("rq:queues")
    posted = api.send(session_id, "after a restart")
    assert posted.status_code == 202
    messages = [fields for _, fields in services.redis.xrange(keys.session_log(session_id))
                if fields["type"] == "message"]
    assert [json.loads(fields["data"])["message"]["content"] for fields in messages][-1] == "after a restart"
    assert services.queue.key.encode() in services.rq_redis.smembers("rq:queues")
    assert posted.json["job_id"] in services.queue.job_ids
    assert len(messages) == 2  # once each, not twice: the transaction's EVALSHA did not run


def test_a_queue_on_a_redis_of_its_own_announces_on_ours(settings, monkeypatch):
    """ARZANI_QUEUE_REDIS_URL: RQ's Redis is not ours, so nothing rides its transaction."""
    from dataclasses import replace

    from app import create_app, jobqueue, keys
    from app.auth import create_api_user
    from app.wiring import Wiring

    wiring = Wiring(replace(settings, queue_redis_url=settings.redis_url))
    wiring.db.create_all()
    try:
        assert jobqueue.bookkeeping_pipeline(wiring.queue, wiring.settings) is None
        _user, token = create_api_user(wiring, "q")
        client = create_app({"TESTING": True}, services=wiring).test_client()
        session_id = new_session_id()
        sent = _count_round_trips(monkeypatch)
        posted = client.post(f"/api/sessions/{session_id}/messages", json={"content": "hi"},
                             headers={"Authorization": f"Bearer {token}"})
        assert posted.status_code == 202, posted.json
        assert not any(keys.session_log(session_id).encode() in c for c in sent["rq"])
        log = wiring.redis.xrange(keys.session_log(session_id))
        assert [fields["type"] for _, fields in log] == ["message"]
    finally:
        wiring.close()


def test_a_duplicate_enqueue_on_the_bookkeeping_pipeline_is_refused_at_once(api, services):
    """RQ saves a unique job in its own script, not on the pipeline it is given: the duplicate is
    known before anything is sent, and nothing of the first job changes (our reliance on it)."""
    from sqlalchemy import select

    from app import jobqueue
    from app.models import Message

    posted = api.send(new_session_id(), "once").json
    with services.db.read() as db:
        message = db.execute(select(Message.id, Message.created_at)
                             .where(Message.id == posted["message"]["id"])).one()
    before = services.rq_redis.hgetall(f"rq:job:{posted['job_id']}")
    pipeline = jobqueue.bookkeeping_pipeline(services.queue, services.settings)
    assert not jobqueue._enqueue(services.queue, services.settings, message, posted["job_id"], "again", pipeline)
    pipeline.execute()
    assert services.queue.job_ids.count(posted["job_id"]) == 1
    assert services.rq_redis.hgetall(f"rq:job:{posted['job_id']}") == before


def test_the_bookkeeping_transaction_refused_still_answers_202_with_the_job_queued(api, services, monkeypatch, caplog):
    """Redis gone between the job's script and the transaction with the announcements: the message
    is committed and its job queued; the events are lost (pages read the database), never a 500."""
    from redis.client import Pipeline
    from redis.exceptions import ConnectionError as RedisConnectionError

    def refuse(self, *args, **kwargs):
        raise RedisConnectionError("Redis went away after the enqueue")

    monkeypatch.setattr(Pipeline, "execute", refuse)
    posted = api.send(new_session_id(), "queued, not announced")
    assert posted.status_code == 202, posted.json
    monkeypatch.undo()
    assert posted.json["job_id"] in services.queue.job_ids
    assert "events not appended" in caplog.text
