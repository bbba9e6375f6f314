"""Per-process wiring: settings, database, Redis clients, session service, reply queue.

A container, not a service: everything is made lazily on first use, never at import time, and
handed to the code that needs it. The web app keeps one (`get_wiring()` inside a request, like
flaskr's `get_db()`); each RQ worker process keeps one too (workers/jobs.py), and so does each
`arzani` command. `process_kind` (web, worker, cli) says which process it wires. redis-py pools
notice a fork by themselves; the SQLAlchemy engine is disposed in forked children by app/db.py.

Redis is one of three shapes: a URL (REDIS_URL), a Redis Cluster (ARZANI_REDIS_CLUSTER=1, the queue
elsewhere), or a master found through Sentinel (ARZANI_REDIS_SENTINELS): every new connection asks
the sentinels where the master is, so after a failover the clients follow it by themselves.
"""

from __future__ import annotations

from functools import cached_property

from flask import Flask, current_app
from redis import BlockingConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.connection import SSLConnection, parse_url
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from app import defaults, events, jobqueue
from app.config import Settings
from app.db import Database
from app.errors import ConfigurationError
from app.ratelimit import RateLimiter
from app.sessions import SessionService

REDIS_SOCKET_TIMEOUT_S = defaults.REDIS_SOCKET_TIMEOUT_S

NO_CLIENT_SETINFO = {"driver_info": None}
"""redis-py (5.0 on) names itself on every new connection with two CLIENT SETINFO round trips
(about 0.6 ms each here). An RQ work-horse is a fresh process per job and opens its connections
afresh, so they were a fixed cost of every reply. `driver_info=None` (redis-py 7.2 on) sends
neither: CLIENT LIST then shows no lib-name / lib-ver for our connections, nothing else changes."""
_EXTENSION = "arzani"


def get_wiring() -> Wiring:
    """The web process's wiring, inside a request or app context."""
    return current_app.extensions[_EXTENSION]


def init_app(app: Flask, wiring: Wiring) -> None:
    app.extensions[_EXTENSION] = wiring


class SentinelBlockingConnectionPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's SentinelConnectionPool (a connection asks the sentinels for the master's address
    when it connects, and one still open to a demoted master is dropped on release), bounded like
    our other pools: redis-py (7.4) has no blocking variant, and its plain pool opens a connection
    for every concurrent command. The MRO runs Sentinel's __init__, reset and owns_connection
    over BlockingConnectionPool's queue of connections."""


def sentinel_master_kwargs(settings: Settings) -> dict:
    """What REDIS_URL says about the master when sentinels give its address: username, password,
    db, TLS (`rediss://` and its `ssl_*` query options). Its host and port are not used."""
    if not settings.redis_url:
        return {}
    kwargs = parse_url(settings.redis_url)
    for name in ("host", "port", "path"):
        kwargs.pop(name, None)
    if kwargs.pop("connection_class", None) is SSLConnection:
        kwargs["ssl"] = True
    return kwargs


def sentinel_kwargs(settings: Settings) -> dict:
    """How to talk to the sentinels themselves (their own password, if they require one)."""
    # No retries (redis-py's default for a client made without a pool is 3, with backoff): the
    # master's address is asked of each sentinel in turn, and a dead one must be skipped at once.
    kwargs = {"socket_timeout": REDIS_SOCKET_TIMEOUT_S, "socket_connect_timeout": REDIS_SOCKET_TIMEOUT_S,
              "retry": Retry(NoBackoff(), 0)}
    if settings.redis_sentinel_password:
        kwargs["password"] = settings.redis_sentinel_password
    return kwargs


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
                                         socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S, **NO_CLIENT_SETINFO)
        if self.settings.redis_sentinels:
            return self._sentinel_client(decode_responses=True)
        return self._redis_client(self.settings.redis_url, decode_responses=True)

    @cached_property
    def rq_redis(self) -> Redis:
        """Client for RQ, which stores pickled bytes and needs decode_responses=False."""
        if self.settings.redis_sentinels and not self.settings.queue_redis_url:
            return self._sentinel_client(decode_responses=False)
        return self._redis_client(self.settings.queue_redis_url or self.settings.redis_url,
                                  decode_responses=False)

    @cached_property
    def sentinel(self) -> Sentinel:
        """The sentinels, asked for the master's address by every new master connection."""
        return Sentinel(list(self.settings.redis_sentinels), sentinel_kwargs=sentinel_kwargs(self.settings))

    def _sentinel_client(self, *, decode_responses: bool) -> Redis:
        # While no master is known (the minutes of a failover: the old one is down, the sentinels
        # have not promoted a replica yet) a command fails with MasterNotFoundError, a
        # ConnectionError: the web edge answers 503 and RQ's worker retries, as for any outage.
        return self.sentinel.master_for(
            self.settings.redis_sentinel_master,
            connection_pool_class=SentinelBlockingConnectionPool,
            **self._pool_options(decode_responses),
            **sentinel_master_kwargs(self.settings),
        )

    def _pool_options(self, decode_responses: bool) -> dict:
        """Every pool of ours, plain or through the sentinels: bounded, with the same timeouts."""
        return {"max_connections": self.settings.redis_max_connections, "timeout": REDIS_SOCKET_TIMEOUT_S,
                "decode_responses": decode_responses, "socket_timeout": REDIS_SOCKET_TIMEOUT_S,
                "socket_connect_timeout": REDIS_SOCKET_TIMEOUT_S, "health_check_interval": 30,
                **NO_CLIENT_SETINFO}

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
        pool = BlockingConnectionPool.from_url(self._redis_url(url), **self._pool_options(decode_responses))
        return Redis(connection_pool=pool)

    @cached_property
    def sessions(self) -> SessionService:
        return SessionService(
            self.redis,
            self.db,
            lock_ttl_ms=self.settings.lock_ttl_ms,
            session_ttl_s=self.settings.session_ttl_s,
            max_reservations=self.settings.max_reservations,
            process_kind=self.process_kind,
            hub=self.event_hub if self.process_kind == "web" else None,
            # only POST .../messages uses it (resolve_recent): a worker or a command keeps none
            recent_sessions=defaults.RECENT_SESSIONS if self.process_kind == "web" else 0,
        )

    def _limiter(self, limit: str | None) -> RateLimiter | None:
        if not limit:
            return None
        if self.settings.redis_sentinels:  # the `limits` library's sentinel storage, master only
            hosts = ",".join(f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
                             for host, port in self.settings.redis_sentinels)
            return RateLimiter(f"redis+sentinel://{hosts}/{self.settings.redis_sentinel_master}",
                               limit, use_replicas=False,
                               sentinel_kwargs=sentinel_kwargs(self.settings),
                               socket_timeout=REDIS_SOCKET_TIMEOUT_S, socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S,
                               **sentinel_master_kwargs(self.settings))
        url = self.settings.redis_url
        if self.settings.redis_cluster:  # the `limits` library's name for a cluster
            url = url.replace("redis://", "redis+cluster://", 1)
        return RateLimiter(url, limit)

    @cached_property
    def rate_limiter(self) -> RateLimiter | None:
        """Per user (ARZANI_RATE_LIMIT)."""
        return self._limiter(self.settings.rate_limit)

    @cached_property
    def client_rate_limiter(self) -> RateLimiter | None:
        """Per client address (ARZANI_RATE_LIMIT_IP)."""
        return self._limiter(self.settings.rate_limit_ip)

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
        if "sentinel" in self.__dict__:
            for client in self.sentinel.sentinels:
                client.close()
        if "db" in self.__dict__:
            self.db.dispose()
