"""Live events: the worker publishes tokens and replies, the web side relays them as SSE."""

from __future__ import annotations

import json
import threading
import uuid

import pytest

from app import keys
from tests.helpers import new_session_id
from workers import agents, jobs


def read_events(response, until: str, limit: int = 200) -> list[tuple[str, dict]]:
    """Parse the SSE body until an event of type `until` (or `limit` events)."""
    out, event = [], None
    for raw in response.response:
        for line in raw.decode().splitlines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event:
                out.append((event, json.loads(line[5:])))
                if event == until or len(out) >= limit:
                    return out
    return out


def subscribed(services, session_id) -> bool:
    return services.redis.pubsub_numsub(keys.events_channel(session_id))[0][1] >= 1


def test_tokens_and_the_reply_reach_the_event_stream(api, services, monkeypatch):
    session_id = new_session_id()
    posted = api.send(session_id, "stream to me").json
    stream = api.get(f"/api/sessions/{session_id}/events", buffered=False)
    assert stream.status_code == 200 and stream.mimetype == "text/event-stream"
    got = []
    reader = threading.Thread(target=lambda: got.extend(read_events(stream, until="reply")))
    reader.start()
    from tests.helpers import wait_for

    wait_for(lambda: subscribed(services, session_id), 10, "the stream to subscribe")
    jobs.reply(posted["message"]["id"])
    reader.join(10)
    stream.close()
    kinds = [kind for kind, _ in got]
    assert kinds[0] == "ready" and kinds[-1] == "reply"
    assert "token" in kinds
    reply = got[-1][1]
    assert reply["reply_to"] == posted["message"]["id"]
    assert reply["message"]["conversation_id"] == posted["conversation_id"]
    tokens = "".join(data["delta"] for kind, data in got if kind == "token")
    assert tokens == reply["message"]["content"]


def test_someone_elses_session_has_no_stream(make_api):
    alice, bob = make_api("alice"), make_api("bob")
    session_id = new_session_id()
    alice.send(session_id, "private")
    assert bob.get(f"/api/sessions/{session_id}/events").status_code == 404
    assert bob.get(f"/api/sessions/{uuid.uuid4().hex}/events").status_code == 404


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
