"""Rate limiting per user and per client address, shared by every process through Redis.

The `limits` library (the engine under Flask-Limiter) does the counting: a sliding-window counter
in Redis, one round trip per request. We call it from the API blueprint rather than through
Flask-Limiter because the key is the authenticated user, known only after our own auth, and the
429 must be our JSON error with Retry-After.

Two limits (issue 13): ARZANI_RATE_LIMIT per user (`g.rate_limit_key`: the user's id, or a browser
identity with no row yet), and ARZANI_RATE_LIMIT_IP per client address, counted before anything
else on the API and on the page (`GET /`), so requests that fail authentication (401s: guessing
tokens) and fresh identities (a new cookie per request) count too. The client address is the TCP
peer's (`request.remote_addr`); behind ARZANI_TRUSTED_PROXIES reverse proxies it is the one they
name in X-Forwarded-For (werkzeug's ProxyFix, app/__init__.py), never X-Forwarded-For otherwise.
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItem, parse
from limits.storage import storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter

from app.errors import ArzaniError


class RateLimited(ArzaniError):
    """Too many requests; slow down."""

    code = "rate_limited"
    status = 429

    def __init__(self, retry_after_s: int):
        super().__init__(f"too many requests: retry after {retry_after_s} s")
        self.retry_after_s = retry_after_s


class RateLimiter:
    def __init__(self, redis_url: str, limit: str, **storage_options):
        """`redis_url` in the `limits` library's forms: redis://, rediss://, redis+cluster://,
        redis+sentinel://HOST:PORT,HOST:PORT/MASTER (then `storage_options` carry the rest)."""
        self.item: RateLimitItem = parse(limit)
        self.storage = storage_from_string(redis_url, key_prefix="arzani:ratelimit", **storage_options)
        self.strategy = SlidingWindowCounterRateLimiter(self.storage)

    def hit(self, key: str) -> None:
        """Count one request of `key` (a user, a client address); RateLimited if over the limit."""
        if self.strategy.hit(self.item, key):
            return
        reset_at = self.strategy.get_window_stats(self.item, key).reset_time
        raise RateLimited(max(1, math.ceil(reset_at - time.time())))


def hit_client_limit(wiring) -> None:
    """Count this request against its client address (ARZANI_RATE_LIMIT_IP), if that limit is on."""
    from flask import request

    limiter = wiring.client_rate_limiter
    if limiter is not None:
        limiter.hit("ip:" + (request.remote_addr or "unknown"))
