"""Live delivery on the real stack (issue 10): gunicorn's gevent workers hold hundreds of open
event streams without a request thread or a Redis connection each, the API stays responsive
beside them, and each stream carries its own session's events (one subscription per process
fanned out)."""

from __future__ import annotations

import http.client
import json
import threading

import pytest
import redis as redis_lib

from tests.helpers import new_session_id, wait_for

pytestmark = pytest.mark.slow

OPEN_STREAMS = 200
WEB_WORKERS = 2


class SSE:
    """One open event stream over its own HTTP connection, read line by line."""

    def __init__(self, port: int, path: str, token: str, headers: dict | None = None):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.conn.request("GET", path, headers={"Authorization": f"Bearer {token}", **(headers or {})})
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.read()

    def next_event(self) -> tuple[str | None, str, dict]:
        fields: dict[str, str] = {}
        while True:
            line = self.response.readline().decode()
            if line in ("\n", "\r\n", ""):
                if "event" in fields:
                    return fields.get("id"), fields["event"], json.loads(fields.get("data") or "{}")
                if line == "":
                    raise EOFError("the stream ended")
                fields = {}
                continue
            if line.startswith(":"):
                continue
            name, _, value = line.rstrip("\n").partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value

    def until(self, kind: str) -> list[tuple[str | None, str, dict]]:
        got = []
        while not got or got[-1][1] != kind:
            got.append(self.next_event())
        return got

    def close(self) -> None:
        self.conn.close()


def test_hundreds_of_open_streams_hold_no_thread_and_no_redis_connection_each(make_stack, redis_url, database_url):
    # One user on one address holds them all: the per-user and per-address caps are raised, and
    # so is ARZANI_MAX_RESERVATIONS (100): each stream listens to a session before its first
    # message, which reserves it.
    stack = make_stack(database_url, ARZANI_MAX_STREAMS_PER_USER="1000", ARZANI_MAX_STREAMS_PER_IP="1000",
                       ARZANI_MAX_RESERVATIONS="10000")
    stack.init_db()
    stack.start_web(workers=WEB_WORKERS)
    token = stack.create_user("many-tabs")
    probe = redis_lib.Redis.from_url(redis_url)
    clients_before = len(probe.client_list())

    sessions = [new_session_id() for _ in range(OPEN_STREAMS)]
    streams = []
    try:
        for session_id in sessions:  # listening before the first message: no 404
            stream = SSE(stack.port, f"/api/sessions/{session_id}/events", token)
            assert stream.until("ready")[-1][1] == "ready"
            streams.append(stream)

        # The API answers beside them. With one thread per open stream (the gthread worker these
        # replaced) these POSTs would wait for a stream to end: the socket timeout would fail them.
        posted = {}
        for session_id in sessions[:20]:
            conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
            conn.request("POST", f"/api/sessions/{session_id}/messages",
                         body=json.dumps({"content": f"hello {session_id}"}),
                         headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            response = conn.getresponse()
            assert response.status == 202
            posted[session_id] = json.loads(response.read())
            conn.close()
        assert stack.request("GET", "/readyz")[0] == 200

        # Each stream got its own session's message, through its process's one subscription.
        for stream, session_id in zip(streams[:20], sessions[:20], strict=True):
            _, kind, data = stream.next_event()
            assert (kind, data["message"]["id"]) == ("message", posted[session_id]["message"]["id"])

        clients = probe.client_list()
        pubsub = [c for c in clients if c.get("sub") not in (None, "0") or c.get("psub") not in (None, "0")]
        assert 1 <= len(pubsub) <= WEB_WORKERS, pubsub
        # a small constant per process (pool connections in use at once), not one per stream
        assert len(clients) - clients_before < OPEN_STREAMS // 4, len(clients) - clients_before
    finally:
        for stream in streams:
            stream.close()
    wait_for(lambda: not probe.pubsub_channels("arzani:session:*"), 30, "every stream to unsubscribe")
    probe.close()


def test_a_stream_resumes_across_web_processes_with_last_event_id(make_stack, database_url):
    """A reply's events read through one stream, which is then dropped; a new connection (to
    whichever process) with Last-Event-ID gets exactly what followed, and a worker's reply too."""
    stack = make_stack(database_url)
    stack.init_db()
    stack.start_web(workers=WEB_WORKERS)
    token = stack.create_user("resumer")
    session_id = new_session_id()
    first = SSE(stack.port, f"/api/sessions/{session_id}/events", token)
    first.until("ready")
    status, _ = stack.request("POST", f"/api/sessions/{session_id}/messages", {"content": "one two three"},
                              token=token)
    assert status == 202
    message_id, _, _ = first.next_event()
    first.close()
    worker = threading.Thread(target=stack.run_burst_worker)
    worker.start()
    second = SSE(stack.port, f"/api/sessions/{session_id}/events", token, {"Last-Event-ID": message_id})
    replies = second.until("reply")
    worker.join()
    second.close()
    kinds = [kind for _, kind, _ in replies if kind != "ready"]
    assert kinds[0] == "start" and kinds[-1] == "reply"
    assert "message" not in kinds  # already received before the reconnect
    text = "".join(data["delta"] for _, kind, data in replies if kind == "token")
    assert text == replies[-1][2]["message"]["content"]
