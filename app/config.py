"""Settings read from the environment once per process, validated: a bad value is one line naming
the variable and the value (a ConfigurationError), never a traceback later. The defaults live in
app/defaults.py; nothing else reads the service's variables from the environment."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from app import defaults
from app.errors import ConfigurationError


def _setting(environ: Mapping[str, str], name: str, default, parse, kind: str, accept=None, bounds: str = ""):
    """`name` from the environment, or `default` when unset or empty. A value that `parse` refuses
    is "NAME must be KIND"; one that `accept` refuses is "NAME must be BOUNDS": one line each,
    naming the variable and the value."""
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be {kind}, got {raw!r}") from None
    if accept is not None and not accept(value):
        raise ConfigurationError(f"{name} must be {bounds}, got {raw!r}")
    return value


def _int(environ: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    return _setting(environ, name, default, int, "an integer", lambda v: v >= minimum, f"at least {minimum}")


def _float(environ: Mapping[str, str], name: str, default: float, minimum: float = 0.001) -> float:
    # `minimum <= v < inf` refuses NaN too (every comparison with NaN is false)
    return _setting(environ, name, default, float, "a number of seconds", lambda v: minimum <= v < float("inf"),
                    f"a finite number of at least {minimum}")


def _choice(environ: Mapping[str, str], name: str, default: str, choices: tuple[str, ...],
            normalize=str) -> str:
    one_of = f"one of {', '.join(choices)}"
    return _setting(environ, name, default, normalize, one_of, lambda v: v in choices, one_of)


MIN_PRODUCTION_KEY_BYTES = 32
"""A production cookie signing key shorter than this is refused (a guessable key forges identities)."""

_DATABASE_FORMS = "sqlite:///PATH or postgresql://USER:PASSWORD@HOST/NAME"


def _database_url(raw: str | None) -> str:
    """DATABASE_URL, with the forms users mean taken as they mean them: `postgres://` (Heroku's)
    and `postgresql://` are PostgreSQL through psycopg 3, the driver this package installs."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if not raw:
        return defaults.DATABASE_URL
    scheme, sep, rest = raw.partition("://")
    if not sep:
        raise ConfigurationError(f"DATABASE_URL must be a URL like {_DATABASE_FORMS}, got {raw!r}")
    if scheme in ("postgres", "postgresql"):
        raw = f"postgresql+psycopg://{rest}"
    try:
        url = make_url(raw)
    except ArgumentError:
        raise ConfigurationError(f"DATABASE_URL is not a database URL ({_DATABASE_FORMS}), got {raw!r}") from None
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigurationError(f"DATABASE_URL must be SQLite or PostgreSQL ({_DATABASE_FORMS}), "
                                 f"got a {scheme}:// URL")
    if url.get_backend_name() == "postgresql" and url.get_driver_name() != "psycopg":
        raise ConfigurationError(f"DATABASE_URL: use postgresql:// (psycopg 3 is the driver installed), "
                                 f"got {scheme}://")
    return raw


_REDIS_SCHEMES = ("redis", "rediss", "unix")

STACK_ENV_PATH = "instance/stack.env"
"""Written by `make run` while it runs (scripts/devstack.py): REDIS_URL and DATABASE_URL of the
dev stack, used by commands started in the same directory when REDIS_URL is not set."""


def masked_url(url: str | None) -> str | None:
    """The URL with its password replaced by ***, for anything printed or logged."""
    if not url or "@" not in url:
        return url
    scheme, sep, rest = url.partition("://")
    credentials, _, host = rest.rpartition("@")
    user, colon, _password = credentials.partition(":")
    return f"{scheme}{sep}{user}{':***' if colon else ''}@{host}"


RUN_LOCK_PATH = "instance/run.lock"
"""Held (flock) by `make run` for its whole life; it dies with the process, even a SIGKILLed one."""


def _dev_stack_running(lock_path: str) -> bool:
    import fcntl

    try:
        with open(lock_path) as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True  # `make run` holds it
            return False  # nobody does (closing the file drops our probe's lock)
    except OSError:
        return False


def dev_stack_env(path: str = STACK_ENV_PATH, lock_path: str = RUN_LOCK_PATH) -> dict[str, str]:
    """The running dev stack's URLs (instance/stack.env), or {} when no `make run` runs here. A
    stack.env left by a `make run` that was killed (nothing holds its lock) is ignored."""
    if not _dev_stack_running(lock_path):
        return {}
    try:
        with open(path) as f:
            pairs = (line.strip().partition("=") for line in f if "=" in line)
            return {name: value for name, _, value in pairs if name in ("REDIS_URL", "DATABASE_URL")}
    except OSError:
        return {}


def _redis_url(name: str, raw: str | None) -> str | None:
    if not raw:
        return None
    scheme, sep, _ = raw.partition("://")
    if not sep or scheme not in _REDIS_SCHEMES:
        raise ConfigurationError(f"{name} must be a URL like redis://HOST:6379/0 (or rediss://, unix://), "
                                 f"got {raw.split('@')[-1]!r}")
    return raw


_SENTINELS_FORM = "HOST:PORT[,HOST:PORT...] (e.g. sentinel-1:26379,sentinel-2:26379,sentinel-3:26379)"


def _sentinels(raw: str | None) -> tuple[tuple[str, int], ...]:
    """ARZANI_REDIS_SENTINELS as (host, port) pairs; () when unset. `[::1]:26379` for IPv6."""
    if not raw or not raw.strip():
        return ()
    pairs = []
    for entry in raw.split(","):
        host, sep, port = entry.strip().rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not (sep and host and port.isascii() and port.isdigit() and 0 < int(port) < 65536) or \
                any(c.isspace() or c in "/@[]" for c in host):
            raise ConfigurationError(f"ARZANI_REDIS_SENTINELS must be {_SENTINELS_FORM}, got {entry.strip()!r}")
        pairs.append((host, int(port)))
    return tuple(pairs)


def _sentinel_master(raw: str | None) -> str:
    if not raw:
        return defaults.REDIS_SENTINEL_MASTER
    if any(c.isspace() for c in raw):
        raise ConfigurationError(f"ARZANI_REDIS_SENTINEL_MASTER must be a name without spaces, got {raw!r}")
    return raw


def _sentinel_settings(environ: Mapping[str, str], redis_url: str | None, redis_cluster: bool) -> dict:
    """The Sentinel variables, checked against each other and against REDIS_URL, which with
    sentinels gives only the master's credentials, db and TLS (its host and port are not used)."""
    sentinels = _sentinels(environ.get("ARZANI_REDIS_SENTINELS"))
    master = environ.get("ARZANI_REDIS_SENTINEL_MASTER") or None
    password = environ.get("ARZANI_REDIS_SENTINEL_PASSWORD") or None
    if not sentinels:
        for name, value in (("ARZANI_REDIS_SENTINEL_MASTER", master), ("ARZANI_REDIS_SENTINEL_PASSWORD", password)):
            if value is not None:
                raise ConfigurationError(f"{name} is set but ARZANI_REDIS_SENTINELS is not (list the sentinels)")
        return {}
    if redis_cluster:
        raise ConfigurationError("ARZANI_REDIS_SENTINELS and ARZANI_REDIS_CLUSTER=1 cannot be combined: "
                                 "a cluster fails over by itself, set only one")
    if redis_url and redis_url.partition("://")[0] == "unix":
        raise ConfigurationError("with ARZANI_REDIS_SENTINELS, REDIS_URL must be redis:// or rediss:// "
                                 "(it gives the master's password and db; the sentinels give its address)")
    return {"redis_sentinels": sentinels, "redis_sentinel_master": _sentinel_master(master),
            "redis_sentinel_password": password}


def _rate_limit(raw: str, name: str = "ARZANI_RATE_LIMIT") -> str | None:
    if raw.strip().lower() in ("", "0", "off", "none"):
        return None
    from limits import parse

    try:
        parse(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must look like '300/minute' or 'off', got {raw!r}") from None
    return raw


@dataclass(frozen=True)
class Settings:
    redis_url: str | None
    redis_cluster: bool = False  # REDIS_URL names a node of a Redis Cluster (sessions and locks)
    queue_redis_url: str | None = None  # RQ's Redis if not REDIS_URL (RQ does not run on a cluster)
    # Sentinels to ask for the master's address (sessions, locks and RQ); with them, REDIS_URL
    # only gives the master's username, password, db and TLS.
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    redis_sentinel_master: str = defaults.REDIS_SENTINEL_MASTER
    redis_sentinel_password: str | None = field(default=None, repr=False)
    database_url: str = defaults.DATABASE_URL
    secret_key: str = field(default_factory=lambda: secrets.token_hex(32), repr=False)
    env: str = defaults.ENV
    agent: str = defaults.AGENT
    session_ttl_s: int = defaults.SESSION_TTL_S
    lock_ttl_ms: int = defaults.LOCK_TTL_MS
    queue_name: str = defaults.QUEUE
    openai_base_url: str = defaults.OPENAI_BASE_URL
    openai_api_key: str | None = field(default=None, repr=False)
    model: str = defaults.MODEL
    reply_retries: int = defaults.REPLY_RETRIES
    job_timeout_s: int = defaults.JOB_TIMEOUT_S
    if_busy: str = defaults.IF_BUSY
    max_conversation_messages: int = defaults.MAX_CONVERSATION_MESSAGES
    history_budget_chars: int = defaults.HISTORY_BUDGET_CHARS
    generation_lease_s: float = defaults.GENERATION_LEASE_S
    rate_limit: str | None = None  # e.g. "300/minute"; None: off
    rate_limit_ip: str | None = None  # per client address, e.g. "600/minute"; None: off
    trusted_proxies: int = defaults.TRUSTED_PROXIES
    max_reservations: int = defaults.MAX_RESERVATIONS
    agent_timeout_s: float = defaults.AGENT_TIMEOUT_S
    sse_max_s: float = defaults.SSE_MAX_S
    events_retain_s: float = defaults.EVENTS_RETAIN_S
    redis_max_connections: int = defaults.REDIS_MAX_CONNECTIONS
    max_streams_per_user: int = defaults.MAX_STREAMS_PER_USER
    max_streams_per_ip: int = defaults.MAX_STREAMS_PER_IP
    log_level: str = defaults.LOG_LEVEL
    sweep_interval_s: int = defaults.SWEEP_INTERVAL_S
    sweep_after_s: int = defaults.SWEEP_AFTER_S
    recovery_interval_s: float = defaults.RECOVERY_INTERVAL_S
    stuck_after_s: float = defaults.STUCK_AFTER_S
    reconcile_interval_s: int = defaults.RECONCILE_INTERVAL_S
    cleanup_interval_s: int = defaults.CLEANUP_INTERVAL_S
    cleanup_after_s: int = defaults.CLEANUP_AFTER_S
    metrics_token: str | None = field(default=None, repr=False)  # None: /metrics open in dev, off in production

    @property
    def production(self) -> bool:
        return self.env == "production"

    @property
    def redis_configured(self) -> bool:
        """Whether the settings say where Redis is (a URL, or sentinels to ask)."""
        return bool(self.redis_url or self.redis_sentinels)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        if environ is None:
            environ = os.environ
            if not environ.get("REDIS_URL") and not environ.get("ARZANI_REDIS_SENTINELS"):
                # Not set: the dev stack's, when `make run` runs in this directory.
                stack = dev_stack_env()
                if stack:
                    environ = {**stack, **{k: v for k, v in os.environ.items() if v}}
        env = _choice(environ, "ARZANI_ENV", defaults.ENV, defaults.ENVS)
        secret_key = environ.get("ARZANI_SECRET_KEY") or None
        if secret_key is None and env == "production":
            raise ConfigurationError("ARZANI_SECRET_KEY is required when ARZANI_ENV=production")
        if env == "production" and len(secret_key.encode()) < MIN_PRODUCTION_KEY_BYTES:
            raise ConfigurationError(f"ARZANI_SECRET_KEY must be at least {MIN_PRODUCTION_KEY_BYTES} bytes in "
                                     f"production (e.g. python -c 'import secrets; print(secrets.token_hex(32))')")
        agent = _choice(environ, "ARZANI_AGENT", defaults.AGENT, defaults.AGENT_NAMES)
        extra = {"secret_key": secret_key} if secret_key else {}
        redis_cluster = (environ.get("ARZANI_REDIS_CLUSTER") or "").lower() in ("1", "true", "yes")
        redis_url = _redis_url("REDIS_URL", environ.get("REDIS_URL"))
        extra.update(_sentinel_settings(environ, redis_url, redis_cluster))
        queue_redis_url = _redis_url("ARZANI_QUEUE_REDIS_URL", environ.get("ARZANI_QUEUE_REDIS_URL"))
        if redis_cluster and not queue_redis_url:
            raise ConfigurationError("ARZANI_REDIS_CLUSTER=1 needs ARZANI_QUEUE_REDIS_URL: RQ cannot use a cluster")
        return cls(
            redis_url=redis_url,
            redis_cluster=redis_cluster,
            queue_redis_url=queue_redis_url,
            database_url=_database_url(environ.get("DATABASE_URL")),
            env=env,
            agent=agent,
            session_ttl_s=_int(environ, "ARZANI_SESSION_TTL", defaults.SESSION_TTL_S),
            lock_ttl_ms=_int(environ, "ARZANI_LOCK_TTL_MS", defaults.LOCK_TTL_MS, minimum=100),
            queue_name=environ.get("ARZANI_QUEUE") or defaults.QUEUE,
            openai_base_url=environ.get("OPENAI_BASE_URL") or defaults.OPENAI_BASE_URL,
            openai_api_key=environ.get("OPENAI_API_KEY") or None,
            model=environ.get("ARZANI_MODEL") or defaults.MODEL,
            reply_retries=_int(environ, "ARZANI_REPLY_RETRIES", defaults.REPLY_RETRIES, minimum=0),
            job_timeout_s=_int(environ, "ARZANI_JOB_TIMEOUT", defaults.JOB_TIMEOUT_S),
            if_busy=_choice(environ, "ARZANI_IF_BUSY", defaults.IF_BUSY, defaults.IF_BUSY_POLICIES),
            max_conversation_messages=_int(environ, "ARZANI_MAX_CONVERSATION_MESSAGES",
                                           defaults.MAX_CONVERSATION_MESSAGES, minimum=2),
            history_budget_chars=_int(environ, "ARZANI_HISTORY_BUDGET_CHARS", defaults.HISTORY_BUDGET_CHARS,
                                      minimum=1000),
            generation_lease_s=_float(environ, "ARZANI_GENERATION_LEASE_S", defaults.GENERATION_LEASE_S,
                                      minimum=1.0),
            sse_max_s=_float(environ, "ARZANI_SSE_MAX_S", defaults.SSE_MAX_S),
            events_retain_s=_float(environ, "ARZANI_EVENTS_RETAIN_S", defaults.EVENTS_RETAIN_S,
                                   minimum=1.0),
            redis_max_connections=_int(environ, "ARZANI_REDIS_MAX_CONNECTIONS", defaults.REDIS_MAX_CONNECTIONS,
                                       minimum=2),
            max_streams_per_user=_int(environ, "ARZANI_MAX_STREAMS_PER_USER", defaults.MAX_STREAMS_PER_USER),
            max_streams_per_ip=_int(environ, "ARZANI_MAX_STREAMS_PER_IP", defaults.MAX_STREAMS_PER_IP),
            agent_timeout_s=_float(environ, "ARZANI_AGENT_TIMEOUT", defaults.AGENT_TIMEOUT_S),
            rate_limit=_rate_limit(environ.get("ARZANI_RATE_LIMIT",
                                               defaults.RATE_LIMIT if env == "production" else "off")),
            rate_limit_ip=_rate_limit(environ.get("ARZANI_RATE_LIMIT_IP",
                                                  defaults.RATE_LIMIT_IP if env == "production" else "off"),
                                      "ARZANI_RATE_LIMIT_IP"),
            trusted_proxies=_int(environ, "ARZANI_TRUSTED_PROXIES", defaults.TRUSTED_PROXIES, minimum=0),
            max_reservations=_int(environ, "ARZANI_MAX_RESERVATIONS", defaults.MAX_RESERVATIONS),
            log_level=_choice(environ, "ARZANI_LOG_LEVEL", defaults.LOG_LEVEL, defaults.LOG_LEVELS,
                              normalize=str.upper),
            sweep_interval_s=_int(environ, "ARZANI_SWEEP_INTERVAL", defaults.SWEEP_INTERVAL_S, minimum=0),
            sweep_after_s=_int(environ, "ARZANI_SWEEP_AFTER", defaults.SWEEP_AFTER_S, minimum=0),
            recovery_interval_s=_float(environ, "ARZANI_RECOVERY_INTERVAL", defaults.RECOVERY_INTERVAL_S,
                                       minimum=0.0),
            stuck_after_s=_float(environ, "ARZANI_STUCK_AFTER", defaults.STUCK_AFTER_S, minimum=1.0),
            reconcile_interval_s=_int(environ, "ARZANI_RECONCILE_INTERVAL", defaults.RECONCILE_INTERVAL_S,
                                      minimum=0),
            cleanup_interval_s=_int(environ, "ARZANI_CLEANUP_INTERVAL", defaults.CLEANUP_INTERVAL_S, minimum=0),
            cleanup_after_s=_int(environ, "ARZANI_CLEANUP_AFTER", defaults.CLEANUP_AFTER_S, minimum=0),
            metrics_token=environ.get("ARZANI_METRICS_TOKEN") or None,
            **extra,
        )
