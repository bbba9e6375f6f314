"""Live events: the worker publishes tokens and replies, the web side relays them as SSE."""

from __future__ import annotations

import pytest

from app import events
from tests.helpers import new_session_id, sse_events
from workers import agents, jobs


def test_a_client_listens_before_its_first_message_and_resumes_exactly(api, services):
    """Subscribe first (no 404 before the first message), then everything in log order with ids;
    a reconnect with Last-Event-ID (or ?after=) gets exactly what followed."""
    session_id = new_session_id()
    stream = api.get(f"/api/sessions/{session_id}/events", buffered=False)
    assert stream.status_code == 200 and stream.mimetype == "text/event-stream"
    body = iter(stream.response)
    assert [kind for _, kind, _ in sse_events(body, until="ready")] == ["ready"]
    posted = api.send(session_id, "stream to me").json
    jobs.reply(posted["message"]["id"])
    got = sse_events(body, until="reply")
    stream.close()
    kinds = [kind for _, kind, _ in got]
    assert kinds[:2] == ["message", "start"] and kinds[-1] == "reply" and "token" in kinds
    assert got[0][2]["message"]["id"] == posted["message"]["id"]
    epoch = got[1][0]
    tokens = [data for _, kind, data in got if kind == "token"]
    assert {data["epoch"] for data in tokens} == {epoch}
    reply = got[-1][2]
    assert reply["reply_to"] == posted["message"]["id"]
    assert reply["message"]["conversation_id"] == posted["conversation_id"]
    assert "".join(data["delta"] for data in tokens) == reply["message"]["content"]
    ids = [events.parse_id(entry_id) for entry_id, _, _ in got]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)

    resume_from = got[3][0]  # the second token
    for how in ({"headers": {"Last-Event-ID": resume_from}}, {"query_string": {"after": resume_from}}):
        again = api.get(f"/api/sessions/{session_id}/events", buffered=False, **how)
        rest = sse_events(iter(again.response), until="ready")
        again.close()
        assert [entry_id for entry_id, _, _ in rest[:-1]] == [entry_id for entry_id, _, _ in got[4:]]

    replayed = api.get(f"/api/sessions/{session_id}/events", buffered=False)
    assert [entry_id for entry_id, _, _ in sse_events(iter(replayed.response), until="ready")][:-1] == \
        [entry_id for entry_id, _, _ in got], "a page (re)loaded gets the retained log from its start"
    replayed.close()


def test_the_log_is_kept_a_while_after_the_reply_then_expires(api, services):
    session_id = new_session_id()
    posted = api.send(session_id, "keep me briefly").json
    jobs.reply(posted["message"]["id"])
    ttl = services.redis.ttl(events.session_log(session_id).key)
    assert 0 < ttl <= services.settings.events_retain_s


def test_a_bad_resume_position_is_a_clear_400(api):
    session_id = new_session_id()
    for how in ({"headers": {"Last-Event-ID": "yesterday"}}, {"query_string": {"after": "1-2-3"}}):
        response = api.get(f"/api/sessions/{session_id}/events", **how)
        assert response.status_code == 400 and "Last-Event-ID" in response.json["error"]["message"]
        assert api.get("/api/events", **how).status_code == 400


def test_the_user_stream_carries_every_change_of_the_users_chats(api, make_api, services):
    stream = api.get("/api/events", buffered=False)
    body = iter(stream.response)
    assert [kind for _, kind, _ in sse_events(body, until="ready")] == ["ready"]
    session_id = new_session_id()
    posted = api.send(session_id, "hello").json
    conversation_id = posted["conversation_id"]
    jobs.reply(posted["message"]["id"])
    assert api.patch(f"/api/conversations/{conversation_id}", json={"title": "Renamed"}).status_code == 200
    assert api.delete(f"/api/conversations/{conversation_id}").status_code == 204
    make_api("mallory").send(new_session_id(), "not alice's business")
    got = sse_events(body, until="deleted")
    stream.close()
    assert [kind for _, kind, _ in got] == ["created", "message", "reply", "renamed", "deleted"]
    assert {data["conversation_id"] for _, _, data in got} == {conversation_id}
    assert got[3][2]["title"] == "Renamed" and got[2][2]["message"]["role"] == "assistant"


def test_someone_elses_session_has_no_stream(make_api):
    alice, bob = make_api("alice"), make_api("bob")
    session_id = new_session_id()
    alice.send(session_id, "private")
    assert bob.get(f"/api/sessions/{session_id}/events").status_code == 404
    # An id nobody has yet is bob's once he listens to it: alice can then neither use nor hear it.
    fresh = new_session_id()
    listening = bob.get(f"/api/sessions/{fresh}/events", buffered=False)
    assert listening.status_code == 200
    listening.close()
    assert alice.send(fresh, "mine?").status_code == 404
    assert alice.get(f"/api/sessions/{fresh}/events").status_code == 404
    assert bob.send(fresh, "mine").status_code == 202


def test_the_openai_agent_streams_and_sends_the_whole_history(fake_llm):
    agent = agents.OpenAIAgent(fake_llm.url, "sk-test", "tiny-model", timeout_s=5)
    history = [agents.Turn("user", "first"), agents.Turn("assistant", "one"), agents.Turn("user", "second")]
    deltas = []
    text = agent.reply("c-1", history, on_token=deltas.append)
    assert text == "LLM heard 'second' after 3 turns"
    assert len(deltas) > 1 and "".join(deltas) == text
    sent = fake_llm.requests[0]
    assert sent["stream"] is True and sent["model"] == "tiny-model"
    assert [m["content"] for m in sent["messages"]] == ["first", "one", "second"]


def test_the_openai_agent_fails_clearly(fake_llm):
    fake_llm.fail_next = 1
    with pytest.raises(agents.AgentError, match=f"chat completions call to {fake_llm.url}/chat/completions failed"):
        agents.OpenAIAgent(fake_llm.url, None, "m", timeout_s=5).reply("c", [agents.Turn("user", "hi")])


def test_a_base_url_without_v1_names_the_url_and_the_usual_cause(fake_llm):
    """The fake answers 404 off /v1: the error names the URL called and hints at /v1."""
    base = fake_llm.url.removesuffix("/v1")
    with pytest.raises(agents.AgentError) as error:
        agents.OpenAIAgent(base, None, "m", timeout_s=5).reply("c", [agents.Turn("user", "hi")])
    assert f"{base}/chat/completions" in str(error.value)
    assert "HTTP 404" in str(error.value) and "/v1" in str(error.value)
    with pytest.raises(agents.AgentError):
        agents.OpenAIAgent("http://127.0.0.1:1/v1", None, "m", timeout_s=2).reply("c", [agents.Turn("user", "x")])


def test_a_failed_reply_can_be_retried(api, services, run_jobs, monkeypatch):
    class Broken:
        def reply(self, conversation_id, history, on_token=None):
            raise agents.AgentError("down")

    monkeypatch.setattr(jobs, "make_agent", lambda settings: Broken())
    object.__setattr__(services.settings, "reply_retries", 0)
    posted = api.send(new_session_id(), "try me").json
    run_jobs()
    path = f"/api/conversations/{posted['conversation_id']}/messages/{posted['message']['id']}/retry"
    monkeypatch.undo()
    retried = api.post(path)
    assert retried.status_code == 202 and retried.json["message"]["status"] == "pending"
    run_jobs()
    messages = api.get(f"/api/conversations/{posted['conversation_id']}").json["messages"]
    assert [m["status"] for m in messages] == ["answered", "complete"]
    again = api.post(path)
    assert again.status_code == 409 and again.json["error"]["code"] == "conflict"


def test_a_stalled_llm_times_out_as_an_agent_error(fake_llm):
    from app.config import Settings

    fake_llm.hold()  # the endpoint accepts the request and never answers
    agent = agents.make_agent(Settings.from_env({"ARZANI_AGENT": "openai", "OPENAI_BASE_URL": fake_llm.url,
                                                 "ARZANI_AGENT_TIMEOUT": "0.5"}))
    with pytest.raises(agents.AgentError, match="timed out"):
        agent.reply("c", [agents.Turn("user", "hello?")])
    fake_llm.release()


def test_two_users_claiming_one_new_session_id_at_once_get_it_once(make_api, services):
    """The same unknown id listened to by two users at the same instant: one owns it, the other
    is refused (HSETNX), whichever comes first, never both."""
    import threading

    from app.errors import NotFound

    alice, bob = make_api("alice"), make_api("bob")
    session_id = new_session_id()
    barrier, outcomes = threading.Barrier(8), []

    def claim(user_id):
        barrier.wait()
        try:
            services.sessions.require_owner(session_id, user_id, claim=True)
            outcomes.append(user_id)
        except NotFound:
            outcomes.append(None)

    threads = [threading.Thread(target=claim, args=(user.user_id,)) for user in (alice, bob) * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    owners = {o for o in outcomes if o is not None}
    assert len(outcomes) == 8 and len(owners) == 1 and outcomes.count(None) == 4
