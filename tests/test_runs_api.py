"""Stop and if_busy at the API (in-process app, real Redis, SQLite and PostgreSQL): who may stop,
what Stop answers when nothing runs, and the busy policies' edges (a retried interrupting message,
two rejecting messages at the same instant)."""

from __future__ import annotations

import threading

from app import keys
from app.events import stop_mark
from tests.helpers import new_session_id


def statuses(api, conversation_id):
    return [(m["role"], m["status"]) for m in api.get(f"/api/conversations/{conversation_id}").json["messages"]]


def test_stop_is_the_owners_and_answers_null_when_nothing_runs(api, make_api):
    reserved = api.post("/api/sessions").json["session_id"]
    assert api.post(f"/api/sessions/{reserved}/stop").json == {"session_id": reserved, "stopped": None}
    assert api.post(f"/api/sessions/{new_session_id()}/stop").status_code == 404  # nobody's
    posted = api.send(reserved, "hello").json
    mallory = make_api("mallory")
    assert mallory.post(f"/api/sessions/{reserved}/stop").status_code == 404  # another user's: alike
    assert statuses(api, posted["conversation_id"]) == [("user", "pending")]
    assert api.post("/api/sessions/not a session/stop").status_code in (400, 404)


def test_stop_of_a_queued_reply_marks_it_stopped_with_no_text(api, services):
    session_id = new_session_id()
    posted = api.send(session_id, "queued").json  # no worker runs it
    stopped = api.post(f"/api/sessions/{session_id}/stop").json["stopped"]
    assert stopped["message"]["id"] == posted["message"]["id"] and stopped["reply"] is None
    assert services.redis.get(keys.run_key(session_id)) == stop_mark(posted["message"]["id"])
    assert statuses(api, posted["conversation_id"]) == [("user", "stopped")]
    assert api.post(f"/api/sessions/{session_id}/stop").json["stopped"] is None


def test_a_retried_interrupting_message_does_not_stop_its_own_reply(api):
    session_id = new_session_id()
    first = api.send(session_id, "first").json
    second = api.send(session_id, "second", if_busy="interrupt", client_message_id="m-2")
    assert second.status_code == 202
    assert statuses(api, first["conversation_id"]) == [("user", "stopped"), ("user", "pending")]
    again = api.send(session_id, "second", if_busy="interrupt", client_message_id="m-2")  # a network retry
    assert again.status_code == 200 and again.json["message"]["id"] == second.json["message"]["id"]
    assert statuses(api, first["conversation_id"]) == [("user", "stopped"), ("user", "pending")]


def test_if_busy_is_validated_and_reject_lets_a_first_message_through(api, services):
    session_id = new_session_id()
    for bad in ("shout", 1, ["reject"], ""):
        answer = api.send(session_id, "x", if_busy=bad)
        assert answer.status_code == 422 and answer.json["error"]["code"] == "invalid_body"
    assert api.send(session_id, "first", if_busy="reject").status_code == 202  # nothing to be busy with
    refused = api.send(session_id, "second", if_busy="reject")
    assert refused.status_code == 409 and refused.headers["Retry-After"] == "2"
    assert api.send(session_id, "second", if_busy="enqueue").status_code == 202


def test_two_rejecting_messages_at_the_same_instant_store_one(app, api):
    """The busy check runs after the conversation's row is taken in the write transaction, so of
    two rejecting messages racing in an idle session exactly one is stored."""
    session_id = new_session_id()
    first = api.send(session_id, "answered already").json
    from sqlalchemy import update

    from app.models import Message
    from app.wiring import get_wiring

    with app.app_context():
        with get_wiring().db.write() as db:  # the session is idle: its only message is answered
            db.execute(update(Message).where(Message.id == first["message"]["id"]).values(status="answered"))
    barrier = threading.Barrier(4)
    codes = []

    def post(n):
        client = app.test_client()
        barrier.wait(10)
        codes.append(client.post(f"/api/sessions/{session_id}/messages", headers=api.headers,
                                 json={"content": f"racing {n}", "if_busy": "reject"}).status_code)

    threads = [threading.Thread(target=post, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(codes) == [202, 409, 409, 409]
    assert len([s for s in statuses(api, first["conversation_id"]) if s == ("user", "pending")]) == 1


def test_regenerate_keeps_every_version_and_the_agent_sees_the_current_one(api, run_jobs, monkeypatch):
    from workers import agents, jobs

    seen = []

    class Numbered(agents.EchoAgent):
        def reply(self, conversation_id, history, on_token=None):
            seen.append([t.content for t in history])
            text = f"reply number {len(seen)}"
            if on_token:
                on_token(text)
            return text

    monkeypatch.setattr(jobs, "make_agent", lambda settings: Numbered())
    session_id = new_session_id()
    first = api.send(session_id, "question").json
    run_jobs()
    path = f"/api/conversations/{first['conversation_id']}/messages/{first['message']['id']}/regenerate"
    answer = api.post(path)
    assert answer.status_code == 202 and answer.json["message"]["status"] == "pending"
    run_jobs()
    messages = api.get(f"/api/conversations/{first['conversation_id']}").json["messages"]
    reply = messages[1]
    assert (reply["content"], reply["current_version"]) == ("reply number 2", 2)
    assert [(v["version"], v["content"]) for v in reply["versions"]] == [(1, "reply number 1"), (2, "reply number 2")]
    assert messages[0]["status"] == "answered" and len(messages) == 2  # one current reply, its id kept
    assert seen[1] == ["question"]  # a regeneration is given the history without the reply it replaces
    api.send(session_id, "follow-up")
    run_jobs()
    assert seen[2] == ["question", "reply number 2", "follow-up"]  # the current version, not the first
    again = api.post(path)  # no longer the last user message
    assert again.status_code == 409 and again.json["error"]["code"] == "conflict"


def test_two_regenerate_calls_at_once_make_one_new_version(app, api, run_jobs):
    session_id = new_session_id()
    first = api.send(session_id, "once more").json
    run_jobs()
    path = f"/api/conversations/{first['conversation_id']}/messages/{first['message']['id']}/regenerate"
    barrier = threading.Barrier(4)
    codes = []

    def regenerate():
        client = app.test_client()
        barrier.wait(10)
        codes.append(client.post(path, headers=api.headers).status_code)

    threads = [threading.Thread(target=regenerate) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(codes) == [202, 409, 409, 409]
    run_jobs()
    messages = api.get(f"/api/conversations/{first['conversation_id']}").json["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["current_version"] == 2 and len(messages[1]["versions"]) == 2


def test_a_regeneration_stopped_before_its_first_token_keeps_the_reply_it_had(api, run_jobs):
    session_id = new_session_id()
    first = api.send(session_id, "keep this").json
    run_jobs()
    path = f"/api/conversations/{first['conversation_id']}/messages/{first['message']['id']}/regenerate"
    assert api.post(path).status_code == 202
    stopped = api.post(f"/api/sessions/{session_id}/stop").json["stopped"]
    assert stopped["message"]["status"] == "answered" and stopped["reply"] is None
    run_jobs()  # the regeneration's job finds nothing to do
    messages = api.get(f"/api/conversations/{first['conversation_id']}").json["messages"]
    assert [(m["status"], m.get("current_version")) for m in messages] == [("answered", None), ("complete", 1)]


def test_a_stopped_reply_can_be_regenerated(api, run_jobs):
    """Regenerate after Stop: the stop mark of the first generation does not refuse the new one."""
    session_id = new_session_id()
    first = api.send(session_id, "stop me, then try again").json
    assert api.post(f"/api/sessions/{session_id}/stop").json["stopped"]["reply"] is None
    path = f"/api/conversations/{first['conversation_id']}/messages/{first['message']['id']}/regenerate"
    assert api.post(path).status_code == 202
    run_jobs()
    messages = api.get(f"/api/conversations/{first['conversation_id']}").json["messages"]
    assert [(m["role"], m["status"]) for m in messages] == [("user", "answered"), ("assistant", "complete")]


def test_the_sidebar_lists_every_version_of_a_regenerated_last_reply(api, run_jobs):
    session_id = new_session_id()
    first = api.send(session_id, "versions in the sidebar").json
    run_jobs()
    api.post(f"/api/conversations/{first['conversation_id']}/messages/{first['message']['id']}/regenerate")
    run_jobs()
    last = api.get("/api/conversations").json["conversations"][0]["last_message"]
    assert last["current_version"] == 2 and [v["version"] for v in last["versions"]] == [1, 2]


def test_two_stops_at_the_same_instant_stop_the_reply_once(app, api, services):
    """Two tabs press Stop together: one answers with what it stopped, the other null; the
    message is stopped once and no reply row is made twice."""
    session_id = new_session_id()
    posted = api.send(session_id, "stop me twice").json
    barrier = threading.Barrier(4)
    answers = []

    def stop():
        client = app.test_client()
        barrier.wait(10)
        answers.append(client.post(f"/api/sessions/{session_id}/stop", headers=api.headers).json["stopped"])

    threads = [threading.Thread(target=stop) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(a is None for a in answers) == [False, True, True, True]
    assert statuses(api, posted["conversation_id"]) == [("user", "stopped")]
