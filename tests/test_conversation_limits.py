"""Issue 13, item 10: unbounded conversations. A conversation's messages are paged (`limit`,
`before`), a conversation holds a bounded number of messages (409 conversation_full beyond, nothing
stored), and the history an agent is given is trimmed to a budget (oldest first, the first message
kept, the message being answered always)."""

from __future__ import annotations

import dataclasses

import pytest
from sqlalchemy import update

from app import create_app
from app.models import Message
from app.wiring import Wiring
from tests.helpers import new_session_id
from workers import jobs


def test_messages_are_paged_newest_page_first(api):
    session_id = new_session_id()
    ids = [api.send(session_id, f"message {n}").json["message"]["id"] for n in range(7)]
    conversation_id = api.get("/api/conversations").json["conversations"][0]["id"]
    path = f"/api/conversations/{conversation_id}"
    page = api.get(f"{path}?limit=3").json
    assert [m["id"] for m in page["messages"]] == ids[4:]
    older = api.get(f"{path}?limit=3&before={page['next_before']}").json
    assert [m["id"] for m in older["messages"]] == ids[1:4]
    oldest = api.get(f"{path}?limit=3&before={older['next_before']}").json
    assert [m["id"] for m in oldest["messages"]] == ids[:1] and oldest["next_before"] is None
    assert api.get(path).json["next_before"] is None  # 7 fit in the default page
    for bad in ("0", "501", "-1", "x", "%C2%B2", "9" * 40):
        answer = api.get(f"{path}?limit={bad}")
        assert answer.status_code == 400 and answer.json["error"]["code"] == "bad_request"
    for bad in ("0", "-1", "x", "%C2%B2", "9" * 40, str(2**31)):
        assert api.get(f"{path}?before={bad}").status_code == 400


@pytest.fixture
def small(settings, services):
    """The app with conversations capped at 4 messages."""
    wiring = Wiring(dataclasses.replace(settings, max_conversation_messages=4))
    app = create_app({"TESTING": True}, services=wiring)
    yield app.test_client()
    wiring.close()


def test_a_full_conversation_refuses_the_next_message_and_stores_nothing(api, small):
    session_id = new_session_id()
    for n in range(4):
        assert small.post(f"/api/sessions/{session_id}/messages", headers=api.headers,
                          json={"content": f"m{n}"}).status_code == 202
    refused = small.post(f"/api/sessions/{session_id}/messages", headers=api.headers, json={"content": "one more"})
    assert refused.status_code == 409 and refused.json["error"]["code"] == "conversation_full"
    assert "new chat" in refused.json["error"]["message"]
    conversation = api.get("/api/conversations").json["conversations"][0]
    assert conversation["message_count"] == 4
    assert len(api.get(f"/api/conversations/{conversation['id']}").json["messages"]) == 4
    # a new session id is a new chat: it takes messages again
    assert small.post(f"/api/sessions/{new_session_id()}/messages", headers=api.headers,
                      json={"content": "fresh"}).status_code == 202


def test_the_history_is_trimmed_oldest_first_keeping_the_first_message(api, services):
    session_id = new_session_id()
    posted = [api.send(session_id, f"{n}:" + "x" * 400).json for n in range(6)]
    with services.db.write() as db:  # answered, so each is in the history with no reply
        db.execute(update(Message).where(Message.id.in_([p["message"]["id"] for p in posted[:-1]]))
                   .values(status="answered"))
    with services.db.read() as db:
        whole = jobs.history(db, posted[0]["conversation_id"], posted[-1]["message"]["id"])
        trimmed = jobs.history(db, posted[0]["conversation_id"], posted[-1]["message"]["id"], budget_chars=1500)
        tiny = jobs.history(db, posted[0]["conversation_id"], posted[-1]["message"]["id"], budget_chars=10)
    assert [m.content[:2] for m in whole] == ["0:", "1:", "2:", "3:", "4:", "5:"]
    assert [m.content[:2] for m in trimmed] == ["0:", "4:", "5:"]  # the first, then the newest that fit
    assert sum(len(m.content) for m in trimmed) <= 1500
    assert [m.content[:2] for m in tiny] == ["0:", "5:"]  # the message being answered, always
