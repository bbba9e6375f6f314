"""Per-user rate limiting, shared by every process through Redis.

The `limits` library (the engine under Flask-Limiter) does the counting: a sliding-window counter
in Redis, one round trip per request. We call it from the API blueprint rather than through
Flask-Limiter because the key is the authenticated user, known only after our own auth, and the
429 must be our JSON error with Retry-After.
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

    def hit(self, user_id: int) -> None:
        """Count one request of `user_id`; RateLimited if over the limit."""
        if self.strategy.hit(self.item, str(user_id)):
            return
        reset_at = self.strategy.get_window_stats(self.item, str(user_id)).reset_time
        raise RateLimited(max(1, math.ceil(reset_at - time.time())))
