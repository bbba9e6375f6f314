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
