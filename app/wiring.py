"""Per-process wiring: settings, database, Redis clients, session service, reply queue.

A container, not a service: everything is made lazily on first use, never at import time, and
handed to the code that needs it. The web app keeps one (`get_wiring()` inside a request, like
flaskr's `get_db()`); each RQ worker process keeps one too (workers/jobs.py), and so does each
`arzani` command. `process_kind` (web, worker, cli) says which process it wires. redis-py pools
notice a fork by themselves; the SQLAlchemy engine is disposed in forked children by app/db.py.
"""

from __future__ import annotations

from functools import cached_property

from flask import Flask, current_app
from redis import BlockingConnectionPool, Redis

from app import defaults, events, jobqueue
from app.config import Settings
from app.db import Database
from app.errors import ConfigurationError
from app.ratelimit import RateLimiter
from app.sessions import SessionService

REDIS_SOCKET_TIMEOUT_S = defaults.REDIS_SOCKET_TIMEOUT_S
_EXTENSION = "arzani"


def get_wiring() -> Wiring:
    """The web process's wiring, inside a request or app context."""
    return current_app.extensions[_EXTENSION]


def init_app(app: Flask, wiring: Wiring) -> None:
    app.extensions[_EXTENSION] = wiring


class Wiring:
    def __init__(self, settings: Settings, process_kind: str = "web"):
        """`process_kind`: web, worker or cli (it names the process in logs and in created_by)."""
        self.settings = settings
        self.process_kind = process_kind

    @cached_property
    def db(self) -> Database:
        return Database(self.settings.database_url)

    @cached_property
    def redis(self) -> Redis:
        """Client for our own keys (str in, str out); a cluster client with ARZANI_REDIS_CLUSTER=1.
        Every key of one session carries the `{SID}` hash tag, so each script and pipeline of
        the session service stays in one slot."""
        if self.settings.redis_cluster:
            from redis.cluster import RedisCluster

            return RedisCluster.from_url(self._redis_url(self.settings.redis_url), decode_responses=True,
                                         socket_timeout=REDIS_SOCKET_TIMEOUT_S,
                                         socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S)
        return self._redis_client(self.settings.redis_url, decode_responses=True)

    @cached_property
    def rq_redis(self) -> Redis:
        """Client for RQ, which stores pickled bytes and needs decode_responses=False."""
        return self._redis_client(self.settings.queue_redis_url or self.settings.redis_url,
                                  decode_responses=False)

    @staticmethod
    def _redis_url(url: str | None) -> str:
        if not url:
            raise ConfigurationError("REDIS_URL is not set, and no `make run` is running in this directory "
                                     "(it writes instance/stack.env): set REDIS_URL, or start `make run` here")
        return url

    def _redis_client(self, url: str | None, *, decode_responses: bool) -> Redis:
        # A bounded pool: under gunicorn's gevent worker thousands of requests (event streams
        # connecting at once) could otherwise open a connection each. Beyond the bound a command
        # waits for a free connection (up to the socket timeout), it does not fail.
        pool = BlockingConnectionPool.from_url(
            self._redis_url(url),
            max_connections=self.settings.redis_max_connections,
            timeout=REDIS_SOCKET_TIMEOUT_S,
            decode_responses=decode_responses,
            socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S,
            health_check_interval=30,
        )
        return Redis(connection_pool=pool)

    @cached_property
    def sessions(self) -> SessionService:
        return SessionService(
            self.redis,
            self.db,
            lock_ttl_ms=self.settings.lock_ttl_ms,
            session_ttl_s=self.settings.session_ttl_s,
            process_kind=self.process_kind,
            hub=self.event_hub if self.process_kind == "web" else None,
        )

    @cached_property
    def rate_limiter(self) -> RateLimiter | None:
        if not self.settings.rate_limit:
            return None
        url = self.settings.redis_url
        if self.settings.redis_cluster:  # the `limits` library's name for a cluster
            url = url.replace("redis://", "redis+cluster://", 1)
        return RateLimiter(url, self.settings.rate_limit)

    @cached_property
    def events(self) -> events.Publisher:
        return events.Publisher(self.redis, self.settings.events_retain_s)

    @cached_property
    def event_hub(self) -> events.Hub:
        """This process's one pub/sub connection, shared by all its event streams."""
        return events.Hub(self.redis)

    @cached_property
    def queue(self) -> jobqueue.Queue:
        return jobqueue.make_queue(self.settings, self.rq_redis)

    def close(self) -> None:
        if "event_hub" in self.__dict__:
            self.event_hub.close()
        for name in ("redis", "rq_redis"):
            client = self.__dict__.get(name)
            if client is not None:
                client.close()
        if "db" in self.__dict__:
            self.db.dispose()
