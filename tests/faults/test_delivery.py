"""Faults 4 and 7: Redis unavailable when a message arrives, the enqueue refused after the
message was committed, and a client retrying a POST it gave up waiting for."""

from __future__ import annotations

import http.client
import json

import pytest
from sqlalchemy import func, select

from app.models import Message
from tests.helpers import new_session_id, wait_for
from workers.maintenance import sweep_pending


def test_redis_down_when_a_message_arrives_is_503_and_nothing_is_stored(api, redis_server, services):
    redis_server.stop()
    try:
        response = api.send(new_session_id(), "is anyone home?")
        assert response.status_code == 503
        assert response.json["error"]["code"] == "unavailable"
        assert api.client.get("/readyz").status_code == 503
        assert api.client.get("/healthz").status_code == 200
    finally:
        redis_server.start()
    assert api.get("/api/conversations").json["conversations"] == []
    with services.db.read() as db:
        assert db.scalar(select(func.count()).select_from(Message)) == 0


@pytest.mark.slow
def test_an_enqueue_refused_after_commit_is_answered_anyway(api, services, workers):
    queue_key = services.queue.key
    services.rq_redis.set(queue_key, "not a list")  # Redis now refuses RQ's push (WRONGTYPE)
    posted = api.send(new_session_id(), "committed, then the enqueue fails")
    assert posted.status_code == 202  # it is stored: "accepted" must now mean "will be answered"
    services.rq_redis.delete(queue_key)
    assert services.queue.count == 0

    assert sweep_pending(services, older_than_s=0) == [posted.json["message"]["id"]]
    workers.start_worker("w1")
    conversation_id = posted.json["conversation_id"]
    wait_for(lambda: api.get(f"/api/conversations/{conversation_id}").json["messages"][0]["status"]
             == "answered", 60, "the swept message to be answered")


@pytest.mark.slow
def test_a_client_retrying_after_a_timeout_makes_one_message_and_one_job(settings, services, api, make_stack):
    stack = make_stack(settings.database_url)
    stack.start_web(workers=2)
    session_id, body = new_session_id(), {"content": "did you get this?", "client_message_id": "cm-7"}
    path = f"/api/sessions/{session_id}/messages"
    # The client sends, then gives up before reading the answer (its timeout fired)...
    impatient = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=5)
    impatient.request("POST", path, body=json.dumps(body),
                      headers={"Content-Type": "application/json", "Authorization": f"Bearer {api.token}"})
    impatient.close()
    # ...and retries at once, while the first may still be in flight.
    status, retried = stack.request("POST", path, body, token=api.token)
    assert status in (200, 202)
    wait_for(lambda: stack.request("POST", path, body, token=api.token)[0] == 200, 30,
             "the retry to be recognised")
    _, third = stack.request("POST", path, body, token=api.token)
    assert third["message"]["id"] == retried["message"]["id"]
    with services.db.read() as db:
        assert db.scalar(select(func.count()).select_from(Message)) == 1
    assert services.queue.get_job_ids() == [third["job_id"]]
