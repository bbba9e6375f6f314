"""Live events of a session, for the chat page: reply tokens as the agent writes them, the reply
once attached, a reply given up on. Workers publish on the pub/sub channel
`arzani:session:{SID}:events` (a channel, not a key: nothing is stored); the web side relays
them to the browser as Server-Sent Events. Events are hints: the database stays the truth, and a
page that misses one reads the conversation again."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from redis import Redis

from app import keys

HEARTBEAT_S = 10.0
"""A comment line this often keeps proxies from closing an idle stream."""

def publish(redis: Redis, session_id: str, event: dict) -> None:
    redis.publish(keys.events_channel(session_id), json.dumps(event))


def sse_stream(redis: Redis, session_id: str, max_s: float) -> Iterator[str]:
    """Server-Sent Events relayed from the session's channel until `max_s` has passed (then the
    browser's EventSource reconnects: no web thread is held forever)."""
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(keys.events_channel(session_id))
    try:
        yield "retry: 1000\nevent: ready\ndata: {}\n\n"
        end = time.monotonic() + max_s
        next_beat = time.monotonic() + HEARTBEAT_S
        while (now := time.monotonic()) < end:
            message = pubsub.get_message(timeout=min(end - now, next_beat - now, 1.0))
            if message and message.get("type") == "message":
                event = json.loads(message["data"])
                yield f"event: {event.get('type', 'message')}\ndata: {message['data']}\n\n"
            elif time.monotonic() >= next_beat:
                next_beat = time.monotonic() + HEARTBEAT_S
                yield ": heartbeat\n\n"
    finally:
        pubsub.close()
