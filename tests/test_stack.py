"""The whole path as separate processes: gunicorn (4 processes x 4 threads) and stock
`rq worker` processes, racing first messages over real HTTP."""

from __future__ import annotations

import http.client
import threading

import pytest

from tests.helpers import new_session_id

pytestmark = pytest.mark.slow


@pytest.fixture
def stack(make_stack):
    return make_stack()


def test_concurrent_first_messages_over_http_make_one_conversation_and_one_reply_each(stack):
    stack.start_web(workers=4)
    # No control socket: gunicorn's default path is one per user, shared by every instance (one
    # stack's shutdown removed another's).
    assert "Control socket" not in stack.log("web")
    token = stack.create_user("racer")
    racers, session_ids = 12, [new_session_id() for _ in range(6)]
    barrier = threading.Barrier(racers)
    results, errors = [], []

    def racer(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=60)
        try:
            for session_id in session_ids:
                barrier.wait(60)
                status, headers, body = stack.exchange(
                    "POST", f"/api/sessions/{session_id}/messages",
                    {"content": f"racer {n} in {session_id}"}, token, conn=conn)
                if status != 202:
                    errors.append((status, body))
                    continue
                results.append((session_id, body["conversation_id"], body["message"]["id"],
                                headers["Arzani-Session-Resolution"]))
        finally:
            conn.close()

    threads = [threading.Thread(target=racer, args=(n,)) for n in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert len(results) == racers * len(session_ids)
    for session_id in session_ids:
        rows = [r for r in results if r[0] == session_id]
        assert len({r[1] for r in rows}) == 1
        assert [r[3] for r in rows].count("created") == 1

    stack.run_burst_worker()  # the stock `rq worker --burst`, as a separate process

    status, listing = stack.request("GET", "/api/conversations?limit=100", token=token)
    assert status == 200
    assert sorted(c["session_id"] for c in listing["conversations"]) == sorted(session_ids)
    for conversation in listing["conversations"]:
        _, full = stack.request("GET", f"/api/conversations/{conversation['id']}", token=token)
        users = {m["id"] for m in full["messages"] if m["role"] == "user"}
        replies = [m["reply_to"] for m in full["messages"] if m["role"] == "assistant"]
        assert len(users) == racers
        assert sorted(replies) == sorted(users)  # each user message: exactly one reply, here
        assert all(m["status"] == "answered" for m in full["messages"] if m["role"] == "user")
        assert all(conversation["id"] in m["content"] for m in full["messages"] if m["role"] == "assistant")
