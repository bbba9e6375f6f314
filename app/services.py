"""Per-process wiring: settings, database, Redis clients, session service, reply queue.

Everything is made lazily on first use, never at import time, and handed to the code that needs
it. The web app keeps one `Services` in `app.extensions`; each RQ worker process keeps one too
(workers/jobs.py). redis-py pools notice a fork by themselves; the SQLAlchemy engine is disposed
in forked children by app/db.py.
"""

from __future__ import annotations

from functools import cached_property

from redis import Redis
from rq import Queue

from app.config import Settings
from app.db import Database
from app.errors import ConfigurationError
from app.ratelimit import RateLimiter
from app.sessions import SessionService

REDIS_SOCKET_TIMEOUT_S = 5.0
"""A Redis command that takes longer than this is treated as Redis being unavailable."""


class Services:
    def __init__(self, settings: Settings, process_kind: str = "web"):
        self.settings = settings
        self.process_kind = process_kind

    @cached_property
    def db(self) -> Database:
        return Database(self.settings.database_url)

    @cached_property
    def redis(self) -> Redis:
        """Client for our own keys (str in, str out)."""
        return self._redis_client(decode_responses=True)

    @cached_property
    def rq_redis(self) -> Redis:
        """Client for RQ, which stores pickled bytes and needs decode_responses=False."""
        return self._redis_client(decode_responses=False)

    def _redis_client(self, *, decode_responses: bool) -> Redis:
        if not self.settings.redis_url:
            raise ConfigurationError("REDIS_URL is not set (make run starts a Redis and sets it)")
        return Redis.from_url(
            self.settings.redis_url,
            decode_responses=decode_responses,
            socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S,
            health_check_interval=30,
        )

    @cached_property
    def sessions(self) -> SessionService:
        return SessionService(
            self.redis,
            self.db,
            lock_ttl_ms=self.settings.lock_ttl_ms,
            session_ttl_s=self.settings.session_ttl_s,
            process_kind=self.process_kind,
        )

    @cached_property
    def rate_limiter(self) -> RateLimiter | None:
        if not self.settings.rate_limit:
            return None
        return RateLimiter(self.settings.redis_url, self.settings.rate_limit)

    @cached_property
    def queue(self) -> Queue:
        return Queue(self.settings.queue_name, connection=self.rq_redis)

    def close(self) -> None:
        for name in ("redis", "rq_redis"):
            client = self.__dict__.get(name)
            if client is not None:
                client.close()
        if "db" in self.__dict__:
            self.db.dispose()
