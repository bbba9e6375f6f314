"""The event logs and the per-process hub (app/events.py) against a real Redis server: exact
resume, subscribe-first ordering under concurrent appends, one pub/sub connection per process,
and a Redis restart under open streams."""

from __future__ import annotations

import json
import random
import threading

import pytest
import redis as redis_lib

from app import events, keys
from tests.helpers import new_session_id, wait_for


@pytest.fixture
def hub(services):
    hub = events.Hub(services.redis)
    yield hub
    hub.close()


def open_stream(services, hub, target, **kw) -> events.EventStream:
    kw.setdefault("replay", True)
    kw.setdefault("max_s", 30)
    kw.setdefault("after", None)
    return events.EventStream(services.redis, hub, target, **kw)


def frames_of(stream, until_ready_then: int = 0):
    """The stream's events up to `ready`, then `until_ready_then` more events."""
    from tests.helpers import sse_events

    iterator = iter(stream)
    got = sse_events(iterator, until="ready")
    if until_ready_then:
        got += sse_events(iterator, limit=until_ready_then)
    return got, iterator


def test_resume_after_an_id_sends_exactly_what_follows(services, hub):
    session_id = new_session_id()
    ids = [services.events.session(session_id, "token", n=n) for n in range(10)]
    stream = open_stream(services, hub, events.session_log(session_id), after=ids[3])
    got, rest = frames_of(stream)
    assert [entry_id for entry_id, kind, _ in got if kind == "token"] == ids[4:]
    assert got[-1][1] == "ready" and got[-1][2]["position"] == ids[-1]
    later = [services.events.session(session_id, "token", n=n) for n in range(10, 13)]
    from tests.helpers import sse_events

    live = sse_events(rest, limit=3)
    assert [entry_id for entry_id, _, _ in live] == later and [d["n"] for _, _, d in live] == [10, 11, 12]
    stream.close()


def test_a_position_no_longer_in_the_log_is_told_to_reset(services, hub):
    session_id = new_session_id()
    gone = services.events.session(session_id, "token", n=0)
    services.redis.pexpire(events.session_log(session_id).key, 1)  # expired (or trimmed, or Redis restarted)
    wait_for(lambda: not services.redis.exists(events.session_log(session_id).key), 5, "the log to expire")
    kept = services.events.session(session_id, "token", n=1)
    assert events.parse_id(kept) > events.parse_id(gone)
    got, _ = frames_of(open_stream(services, hub, events.session_log(session_id), after=gone))
    assert [kind for _, kind, _ in got] == ["reset", "token", "ready"]
    assert got[1][0] == kept


def test_a_user_stream_without_a_position_starts_at_the_end(services, hub):
    services.events.user(7, "renamed", conversation_id="c", title="old")
    got, rest = frames_of(open_stream(services, hub, events.user_log(7), after=None, replay=False))
    assert [kind for _, kind, _ in got] == ["ready"]
    new = services.events.user(7, "deleted", conversation_id="c")
    from tests.helpers import sse_events

    assert sse_events(rest, limit=1) == [(new, "deleted", {"type": "deleted", "conversation_id": "c"})]


def test_the_id_a_client_sends_back_must_be_an_event_id():
    assert events.resume_position(None, None) is None
    assert events.resume_position("1-2", None) == "1-2"
    assert events.resume_position("1-2", "3-4") == "3-4"
    for bad in ["abc", "1", "1-", "-1", "1-2-3", "١-٢", "9" * 50 + "-0"]:
        with pytest.raises(events.BadRequest):
            events.resume_position(bad, None)


def test_streams_opened_while_appends_race_see_every_entry_once_in_order(services, hub):
    """Four writers append at full speed while streams open at random moments: each stream's
    events are exactly the log's entries after its starting position, in log order."""
    session_id = new_session_id()
    target = events.session_log(session_id)
    stop = threading.Event()

    def writer(name: str) -> None:
        n = 0
        while not stop.is_set():
            services.events.session(session_id, "token", w=name, n=n)
            n += 1

    writers = [threading.Thread(target=writer, args=(f"w{i}",)) for i in range(4)]
    for thread in writers:
        thread.start()
    received = []
    try:
        for _ in range(6):
            wait_for(lambda: random.random() < 0.3, 1, "a random moment", interval=0.01)
            stream = open_stream(services, hub, target, after=None)
            got, rest = frames_of(stream)
            from tests.helpers import sse_events

            got += sse_events(rest, limit=200)
            received.append(got)
            stream.close()
    finally:
        stop.set()
        for thread in writers:
            thread.join()
    log_ids = [entry_id for entry_id, _ in services.redis.xrange(target.key)]
    for got in received:
        ids = [entry_id for entry_id, kind, _ in got if kind == "token"]
        assert ids == log_ids[: len(ids)], "a stream skipped, repeated or reordered an entry"
        assert len(ids) > 200


def test_many_streams_share_one_pubsub_connection(services, hub):
    streams = [open_stream(services, hub, events.session_log(new_session_id())) for _ in range(50)]
    pubsub_clients = services.redis.client_list(_type="pubsub")
    assert len(pubsub_clients) == 1
    assert hub.channels == 50
    for stream in streams:
        stream.close()
    assert hub.channels == 0
    wait_for(lambda: not services.redis.pubsub_channels("arzani:session:*"), 5, "the hub to unsubscribe")


def test_open_streams_catch_up_exactly_after_redis_restarts(services, hub, redis_server):
    """Redis restarts empty under an open stream: the stream is told to reset (what it had is
    gone), then carries the entries written after the restart."""
    session_id = new_session_id()
    target = events.session_log(session_id)
    services.events.session(session_id, "token", n=0)
    stream = open_stream(services, hub, target, after=None)
    got, rest = frames_of(stream)
    redis_server.stop()
    redis_server.start()
    after = []

    def append_when_back():
        wait_for(lambda: services.redis.pubsub_numsub(target.channel)[0][1] == 1, 20, "the hub to resubscribe")
        after.append(services.events.session(session_id, "token", n=1))

    from tests.helpers import sse_events

    writer = threading.Thread(target=append_when_back)
    writer.start()
    tail = sse_events(rest, until="token")
    writer.join()
    assert [kind for _, kind, _ in tail] == ["reset", "token"]
    assert tail[-1][0] == after[0] and hub.reconnects >= 1
    stream.close()


def test_an_append_while_redis_is_away_is_logged_not_raised(services, redis_server, caplog):
    redis_server.stop()
    try:
        assert services.events.session(new_session_id(), "token", n=0) is None
    finally:
        redis_server.start()
    assert "event not appended" in caplog.text


def test_a_failed_token_append_stops_the_generation_streaming(services, monkeypatch):
    """A page must never show text with a hole: after one lost token, no more tokens are sent."""
    session_id = new_session_id()
    generation = events.Generation(services.events, session_id, reply_to=1, attempt=1)
    generation.token("a")
    real = services.redis.eval

    def unavailable(*args, **kwargs):
        raise redis_lib.ConnectionError("Redis went away")

    monkeypatch.setattr(services.redis, "eval", unavailable)
    generation.token("b")
    monkeypatch.setattr(services.redis, "eval", real)
    generation.token("c")
    entries = services.redis.xrange(events.session_log(session_id).key)
    assert [fields["type"] for _, fields in entries] == ["start", "token"]


def test_a_generation_appends_nothing_once_its_message_is_stopped_or_a_newer_attempt_started(services):
    """The fence is in the append script: after the stop mark (or a newer attempt's start), a token
    of the old generation is refused and never reaches the log or a page."""
    session_id = new_session_id()
    log_key = events.session_log(session_id).key
    first = events.Generation(services.events, session_id, reply_to=7, attempt=1)
    first.token("one ")
    second = events.Generation(services.events, session_id, reply_to=7, attempt=2)  # a retry took over
    with pytest.raises(events.GenerationStopped):
        first.token("stale ")
    second.token("two ")
    assert events.partial_text(services.redis, session_id, 7) == "two "
    services.redis.set(keys.run_key(session_id), events.stop_mark(7))  # Stop
    with pytest.raises(events.GenerationStopped):
        second.token("after the stop")
    with pytest.raises(events.GenerationStopped):  # and no new attempt may start streaming it
        events.Generation(services.events, session_id, reply_to=7, attempt=3)
    deltas = [json.loads(f["data"]).get("delta") for _, f in services.redis.xrange(log_key) if f["type"] == "token"]
    assert deltas == ["one ", "two "]
    # another message of the session may stream after the stop of this one
    events.Generation(services.events, session_id, reply_to=8, attempt=1).token("next")
    assert events.partial_text(services.redis, session_id, 8) == "next"


def test_redis_errors_reach_no_client_as_a_broken_stream(services, hub, redis_server):
    redis_server.stop()
    try:
        with pytest.raises((events.Unavailable, redis_lib.RedisError)):
            open_stream(services, hub, events.session_log(new_session_id()))
    finally:
        redis_server.start()
