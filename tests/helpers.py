"""Small helpers shared by the tests (fixtures are in conftest.py)."""

from __future__ import annotations

import time
import uuid


def new_session_id() -> str:
    """A fresh chat session id, as a client would mint one (any ^[A-Za-z0-9_-]{8,128}$)."""
    return uuid.uuid4().hex


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05) -> None:
    """Wait for an observable state (not for time to pass); fail with `what` if it never comes."""
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(interval)


def sse_events(chunks, until: str | None = None, limit: int = 10_000) -> list[tuple[str | None, str, dict]]:
    """Parse Server-Sent Events from an iterable of text or byte chunks into (id, event, data)
    triples, until an event of type `until` (or `limit` events, or the end of the stream)."""
    import json

    out, buffer = [], ""
    for chunk in chunks:
        buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            fields = {}
            for line in block.splitlines():
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
            if "event" not in fields:
                continue
            out.append((fields.get("id"), fields["event"], json.loads(fields.get("data") or "{}")))
            if fields["event"] == until or len(out) >= limit:
                return out
    return out
