"""Issue 13, item 1: event streams are capped per user and per client address across processes
(429 too_many_streams beyond), a closed page frees its stream within seconds, and slow-header
connections cannot hold the web processes (gunicorn's gevent worker reads a request's headers
within --keep-alive seconds or closes the connection). Real Redis; the last tests on real
gunicorn with 100 slow-header connections and 100 open streams beside another user's POSTs."""

from __future__ import annotations

import socket
import time

import pytest

from app import streamslots
from app.errors import TooManyStreams
from tests.helpers import new_session_id, wait_for


def test_slots_are_capped_per_user_and_per_address_and_freed(services):
    redis = services.redis
    first = streamslots.take(redis, 1, "10.0.0.1", per_user=2, per_ip=3)
    streamslots.take(redis, 1, "10.0.0.1", per_user=2, per_ip=3)
    with pytest.raises(TooManyStreams):
        streamslots.take(redis, 1, "10.0.0.2", per_user=2, per_ip=3)  # the user's cap
    streamslots.take(redis, 2, "10.0.0.1", per_user=2, per_ip=3)
    with pytest.raises(TooManyStreams):
        streamslots.take(redis, 3, "10.0.0.1", per_user=2, per_ip=3)  # the address's cap
    assert redis.zcard(streamslots.user_key(3)) == 0  # a refused slot holds nothing
    first.release()
    streamslots.take(redis, 1, "10.0.0.9", per_user=2, per_ip=3)


def test_a_slot_whose_process_died_expires(services, monkeypatch):
    redis = services.redis
    streamslots.take(redis, 1, None, per_user=1, per_ip=1)  # never renewed nor released
    with pytest.raises(TooManyStreams):
        streamslots.take(redis, 1, None, per_user=1, per_ip=1)
    later = time.time() + streamslots.SLOT_TTL_S + 1
    monkeypatch.setattr(streamslots.time, "time", lambda: later)
    streamslots.take(redis, 1, None, per_user=1, per_ip=1)


def test_the_event_route_answers_429_beyond_the_cap(settings, services, make_api):
    import dataclasses

    from app import create_app
    from app.wiring import Wiring

    wiring = Wiring(dataclasses.replace(settings, max_streams_per_user=2))
    client = create_app({"TESTING": True}, services=wiring).test_client()
    api = make_api("streamer")
    opened = [client.get("/api/events", headers=api.headers, buffered=False) for _ in range(2)]
    assert [r.status_code for r in opened] == [200, 200]
    refused = client.get(f"/api/sessions/{new_session_id()}/events", headers=api.headers)
    assert refused.status_code == 429 and refused.json["error"]["code"] == "too_many_streams"
    assert refused.headers["Retry-After"] == "5"
    for response in opened:
        response.close()  # the WSGI close: the slots are free again
    assert client.get("/api/events", headers=api.headers, buffered=False).status_code == 200
    wiring.close()


# -- real gunicorn ------------------------------------------------------------------------------

def _raw(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(data)
    return sock


def _open_stream(port: int, token: str, path: str = "/api/events") -> socket.socket:
    sock = _raw(port, f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                      "Accept: text/event-stream\r\n\r\n".encode())
    seen = b""
    while b"event: ready" not in seen:
        chunk = sock.recv(65536)
        assert chunk, seen
        seen += chunk
    assert seen.startswith(b"HTTP/1.1 200"), seen[:200]
    return sock


@pytest.mark.slow
def test_slow_headers_and_open_streams_from_one_client_leave_another_users_posts_alone(make_stack):
    stack = make_stack(ARZANI_MAX_STREAMS_PER_IP="1000", ARZANI_MAX_STREAMS_PER_USER="200")
    stack.start_web(workers=2)
    attacker, victim = stack.create_user("attacker"), stack.create_user("victim")
    slow = [_raw(stack.port, b"GET /api/events HTTP/1.1\r\nHost: x\r\nX-Slow: ") for _ in range(100)]
    streams = [_open_stream(stack.port, attacker) for _ in range(100)]
    answered = []
    for n in range(20):
        status, _ = stack.request("POST", f"/api/sessions/{new_session_id()}/messages",
                                  {"content": f"still here {n}"}, token=victim)
        answered.append(status)
    assert answered == [202] * 20
    # The slow-header connections are closed by the server (--keep-alive 5: a request's headers
    # must arrive within it), while the streams stay open.
    for sock in slow:
        sock.settimeout(20)
        assert sock.recv(1024) == b"", "a slow-header connection was answered instead of closed"
    for sock in streams:
        sock.settimeout(0)
        try:
            assert sock.recv(65536) != b""
        except BlockingIOError:
            pass  # nothing to read: open
    for sock in slow + streams:
        sock.close()


@pytest.mark.slow
def test_a_closed_page_frees_its_stream_within_seconds(make_stack, redis_url):
    import redis as redis_lib

    stack = make_stack(ARZANI_MAX_STREAMS_PER_USER="3")
    stack.start_web(workers=2)
    token = stack.create_user("tabs")
    probe = redis_lib.Redis.from_url(redis_url, decode_responses=True)
    tabs = [_open_stream(stack.port, token) for _ in range(3)]
    status, body = stack.request("GET", "/api/events", token=token)
    assert status == 429 and body["error"]["code"] == "too_many_streams"
    (key,) = list(probe.scan_iter("arzani:streams:user:*"))
    assert probe.zcard(key) == 3
    closed = time.monotonic()
    tabs[0].close()  # the browser closed a tab
    wait_for(lambda: probe.zcard(key) == 2, 5, "the closed tab's stream to be freed")
    print(f"\na closed page's stream freed after {time.monotonic() - closed:.1f} s")
    tabs.append(_open_stream(stack.port, token))  # and a new tab may open one
    for sock in tabs:
        sock.close()
    probe.close()
