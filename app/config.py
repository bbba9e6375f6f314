"""Settings read from the environment once per process (see CONTRACT.md, Configuration)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

from app.errors import ConfigurationError

DEFAULT_DATABASE_URL = "sqlite:///instance/arzani.db"
"""SQLite file relative to the working directory: what a developer gets with nothing installed."""

DEFAULT_SESSION_TTL_S = 604_800
"""A session key lives a week after its last message."""

DEFAULT_LOCK_TTL_MS = 10_000
"""The creation lock outlives any sane conversation insert; a dead holder frees it after this."""

DEFAULT_QUEUE = "arzani"
"""RQ queue that carries reply jobs."""

DEFAULT_RATE_LIMIT = "300/minute"
"""API requests per user, across all processes (the chat page polls about 90 a minute)."""

AGENTS = ("echo", "openai")


def _int(environ: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, got {value}")
    return value


def _rate_limit(raw: str) -> str | None:
    if raw.strip().lower() in ("", "0", "off", "none"):
        return None
    from limits import parse

    try:
        parse(raw)
    except ValueError:
        raise ConfigurationError(f"ARZANI_RATE_LIMIT must look like '300/minute' or 'off', got {raw!r}") from None
    return raw


@dataclass(frozen=True)
class Settings:
    redis_url: str | None
    redis_cluster: bool = False  # REDIS_URL names a node of a Redis Cluster (sessions and locks)
    queue_redis_url: str | None = None  # RQ's Redis if not REDIS_URL (RQ does not run on a cluster)
    database_url: str = DEFAULT_DATABASE_URL
    secret_key: str = field(default_factory=lambda: secrets.token_hex(32), repr=False)
    env: str = "development"
    agent: str = "echo"
    session_ttl_s: int = DEFAULT_SESSION_TTL_S
    lock_ttl_ms: int = DEFAULT_LOCK_TTL_MS
    queue_name: str = DEFAULT_QUEUE
    openai_base_url: str = "https://api.openai.com/v1"
    openai_api_key: str | None = field(default=None, repr=False)
    model: str = "gpt-4o-mini"
    reply_retries: int = 3
    job_timeout_s: int = 120
    rate_limit: str | None = None  # e.g. "300/minute"; None: off
    agent_timeout_s: float = 60.0  # an agent call that stalls this long fails (and is retried)
    sse_max_s: float = 55.0  # an event stream ends after this; the browser reconnects

    @property
    def production(self) -> bool:
        return self.env == "production"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        env = environ.get("ARZANI_ENV", "development")
        secret_key = environ.get("ARZANI_SECRET_KEY") or None
        if secret_key is None and env == "production":
            raise ConfigurationError("ARZANI_SECRET_KEY is required when ARZANI_ENV=production")
        agent = environ.get("ARZANI_AGENT", "echo")
        if agent not in AGENTS:
            raise ConfigurationError(f"ARZANI_AGENT must be one of {', '.join(AGENTS)}, got {agent!r}")
        extra = {"secret_key": secret_key} if secret_key else {}
        redis_cluster = (environ.get("ARZANI_REDIS_CLUSTER") or "").lower() in ("1", "true", "yes")
        queue_redis_url = environ.get("ARZANI_QUEUE_REDIS_URL") or None
        if redis_cluster and not queue_redis_url:
            raise ConfigurationError("ARZANI_REDIS_CLUSTER=1 needs ARZANI_QUEUE_REDIS_URL: RQ cannot use a cluster")
        return cls(
            redis_url=environ.get("REDIS_URL") or None,
            redis_cluster=redis_cluster,
            queue_redis_url=queue_redis_url,
            database_url=environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
            env=env,
            agent=agent,
            session_ttl_s=_int(environ, "ARZANI_SESSION_TTL", DEFAULT_SESSION_TTL_S),
            lock_ttl_ms=_int(environ, "ARZANI_LOCK_TTL_MS", DEFAULT_LOCK_TTL_MS, minimum=100),
            queue_name=environ.get("ARZANI_QUEUE") or DEFAULT_QUEUE,
            openai_base_url=environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1",
            openai_api_key=environ.get("OPENAI_API_KEY") or None,
            model=environ.get("ARZANI_MODEL") or "gpt-4o-mini",
            reply_retries=_int(environ, "ARZANI_REPLY_RETRIES", 3, minimum=0),
            job_timeout_s=_int(environ, "ARZANI_JOB_TIMEOUT", 120),
            sse_max_s=float(environ.get("ARZANI_SSE_MAX_S") or 55.0),
            agent_timeout_s=float(environ.get("ARZANI_AGENT_TIMEOUT") or 60.0),
            # On by default in production; off in development so load tests such as `arzani race`
            # measure the service, not the limiter.
            rate_limit=_rate_limit(environ.get("ARZANI_RATE_LIMIT",
                                               DEFAULT_RATE_LIMIT if env == "production" else "off")),
            **extra,
        )
