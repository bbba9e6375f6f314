"""The whole path through the API: message -> one conversation -> job -> reply in it."""

from __future__ import annotations

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


def test_a_message_to_a_known_session_is_two_round_trips_of_ours(api, services, monkeypatch):
    """Beyond RQ's enqueue (its own client, bytes): the session hash read and renewed in one
    script, and the announcements to the session's and the user's logs in one more (issue 15)."""
    from redis.connection import Connection

    session_id = new_session_id()
    assert api.send(session_id, "first").status_code == 202
    sent = []
    real = Connection.send_packed_command

    def counted(self, command, check_health=True):
        if self.encoder.decode_responses:  # our client (str); RQ's is bytes
            sent.append(command)
        return real(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counted)
    assert api.send(session_id, "second").status_code == 202
    assert len(sent) == 2
    from app import keys

    log = services.redis.xrange(keys.session_log(session_id))
    assert [fields["type"] for _, fields in log][-1] == "message"
