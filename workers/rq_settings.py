"""`rq worker -c workers.rq_settings`: imported once by the worker's parent process, before it
forks a work-horse per job. Importing the job modules here means every horse inherits them
already loaded; without it each horse imports Flask, SQLAlchemy and the app afresh, about 0.7 s
of a job that otherwise takes a few milliseconds (measured with `arzani race`). Nothing here
connects to Redis, and the database only for the warm-up (workers/jobs.py warm_up: a reply's
statements run once inside a transaction that is rolled back, the connection closed and the pool
disposed before any fork); a horse makes its own connections, lazily.

It also tells RQ where its Redis is, from the service's own settings (app/config.py): `REDIS_URL`
(ARZANI_QUEUE_REDIS_URL, else REDIS_URL), or, with ARZANI_REDIS_SENTINELS, the `SENTINEL` dict
that RQ's CLI turns into `Sentinel(...).master_for(...)`, so a stock `rq worker -c
workers.rq_settings` follows the master through a failover. A `--url` (or RQ_REDIS_URL) given
to `rq worker` wins over both."""

from __future__ import annotations

import gc
import os

import redis
from prometheus_client import values

_WORKER_PID = os.getpid()


class _HorseFile(str):
    """The identifier prometheus-client names a process's metric files by. As a string it is the
    worker's pid, so every horse of this worker writes to the worker's files (one set per worker,
    not one per job). It compares unequal from one process to the next, so that each new horse
    sees "a fork happened" and re-reads the values from the file instead of carrying on from the
    parent's stale copy. The horses of one worker run one at a time, so no two write at once."""

    def __new__(cls, pid: int) -> _HorseFile:
        made = super().__new__(cls, str(_WORKER_PID))
        made.pid = pid
        return made

    def __eq__(self, other: object) -> bool:
        return str.__eq__(self, other) and getattr(other, "pid", None) == self.pid

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = str.__hash__


if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: _HorseFile(os.getpid()))

# After an outage RQ's workers try to reach Redis again after 1, 2, 4... up to 60 s: a worker could
# start again a minute after Redis is back. RQ has no setting for it but this class attribute.
from rq.worker import BaseWorker  # noqa: E402

from app.defaults import RQ_RECONNECT_MAX_S  # noqa: E402
from app.errors import ConfigurationError  # noqa: E402

BaseWorker.max_connection_wait_time = RQ_RECONNECT_MAX_S


def _riding_out_restarts():
    """What every Redis command of the worker does on a connection error: try again, for about
    RQ_COMMAND_RETRY_S. RQ reconnects by itself only inside its blocking dequeue; a command it
    sends anywhere else (the worker's state just after a job, the job's result, a heartbeat)
    raises through `work()`, whose catch-all then quits the worker. redis-py's default retry
    (3 tries, full jitter) can give up within a fraction of a second, less than a Redis restart
    takes: a worker that was finishing a job when Redis restarted quit (seen in
    test_fast_recovery). The workaround RQ's maintainers point to (rq/rq#1836) is this one: a
    retry policy on the worker's connection."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    from app.defaults import RQ_COMMAND_RETRIES

    return Retry(ExponentialBackoff(cap=RQ_RECONNECT_MAX_S, base=0.05), RQ_COMMAND_RETRIES)


class Redis(redis.Redis):
    """`rq worker --connection-class workers.rq_settings.Redis` (the Procfile's `worker:` line):
    redis-py's client with the retry policy above, whether RQ makes it from `--url` or from the
    REDIS_URL below. (The SENTINEL setting's connections get the same policy, below.)"""

    @classmethod
    def from_url(cls, url: str, **kwargs):
        kwargs.setdefault("retry", _riding_out_restarts())
        return super().from_url(url, **kwargs)

import workers.jobs  # noqa: E402  (after the value class: metrics are made at import)
import workers.maintenance  # noqa: E402, F401

# The wiring too (an engine, Redis clients, the session service and the event publisher, none of
# them connected yet): each horse inherits them instead of building its own. app/db.py disposes
# the engine's pool in the child; redis-py pools notice the fork by themselves.
_services = workers.jobs.services()
_settings = _services.settings
try:
    _services.sessions, _services.events  # noqa: B018  (built now, in the parent)
except ConfigurationError:
    pass  # (no Redis URL yet, or a bad DATABASE_URL): the job says so, where RQ records it

# And SQLAlchemy's first-use machinery and the reply's compiled statements, built once here.
workers.jobs.warm_up()

# Last, everything loaded so far is moved out of the garbage collector's sight (gc.freeze, as the
# Python docs advise before a fork): a horse's collections then walk only what its job made. A
# collection over the whole inherited heap (Flask, SQLAlchemy, RQ, the app: hundreds of
# thousands of objects) costs tens of ms in a job of a few, and writes to every page it walks,
# which the fork then has to copy.
gc.collect()
gc.freeze()


def _sentinel(settings) -> dict:
    """RQ's SENTINEL setting (rq/cli/helpers.py get_redis_from_config) from ours."""
    from app.wiring import REDIS_SOCKET_TIMEOUT_S, sentinel_kwargs, sentinel_master_kwargs

    master = sentinel_master_kwargs(settings)
    return {
        "INSTANCES": list(settings.redis_sentinels),
        "MASTER_NAME": settings.redis_sentinel_master,
        "DB": master.pop("db", 0),
        "USERNAME": master.pop("username", None),
        "PASSWORD": master.pop("password", None),
        "SSL": master.pop("ssl", False),
        "SOCKET_TIMEOUT": REDIS_SOCKET_TIMEOUT_S,  # RQ raises it above its blocking dequeue's timeout
        "CONNECTION_KWARGS": {"socket_connect_timeout": REDIS_SOCKET_TIMEOUT_S, **master,
                              "retry": _riding_out_restarts()},
        "SENTINEL_KWARGS": sentinel_kwargs(settings),
    }


if _settings.redis_sentinels and not _settings.queue_redis_url:
    SENTINEL = _sentinel(_settings)
else:
    REDIS_URL = _settings.queue_redis_url or _settings.redis_url
