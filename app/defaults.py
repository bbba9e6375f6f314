"""Every default of the service's configuration, once, each with why it is what it is (like RQ's
`rq/defaults.py`). app/config.py reads the environment over these; nothing else reads the
environment for the service's own variables. The README's configuration table lists them."""

from __future__ import annotations

ENV = "development"
"""ARZANI_ENV: `development` or `production` (production requires ARZANI_SECRET_KEY)."""

ENVS = ("development", "production")

DATABASE_URL = "sqlite:///instance/arzani.db"
"""DATABASE_URL: a SQLite file relative to the working directory, what a developer gets with
nothing installed."""

QUEUE = "arzani"
"""ARZANI_QUEUE: the RQ queue that carries reply jobs and maintenance jobs."""

SESSION_TTL_S = 604_800
"""ARZANI_SESSION_TTL: a session key lives a week after its last message."""

LOCK_TTL_MS = 10_000
"""ARZANI_LOCK_TTL_MS: the creation lock outlives any sane conversation insert; a dead holder
frees it after this."""

AGENT = "echo"
"""ARZANI_AGENT: `echo` answers offline and deterministically; `openai` calls OPENAI_BASE_URL."""

AGENT_NAMES = ("echo", "openai")
"""The names workers/agents.py's registry answers to (app/ does not import workers/; a test
checks that the two agree)."""

OPENAI_BASE_URL = "https://api.openai.com/v1"
"""OPENAI_BASE_URL: any OpenAI-compatible endpoint; the path ends in /v1 by convention."""

MODEL = "gpt-4o-mini"
"""ARZANI_MODEL: the model named in chat completions calls."""

AGENT_TIMEOUT_S = 60.0
"""ARZANI_AGENT_TIMEOUT: an agent call whose stream stalls this long fails (and is retried)."""

REPLY_RETRIES = 3
"""ARZANI_REPLY_RETRIES: attempts after the first before a message is marked failed."""

RETRY_INTERVALS_S = (1, 5, 15)
"""Waits between reply attempts (run by the worker's scheduler, `rq worker --with-scheduler`)."""

JOB_TIMEOUT_S = 120
"""ARZANI_JOB_TIMEOUT: RQ kills a reply job's work-horse after this."""

RATE_LIMIT = "300/minute"
"""ARZANI_RATE_LIMIT: API requests per user across all processes (the chat page polls about 90 a
minute); on by default in production only, so load tests such as `arzani race` measure the
service, not the limiter. `off` turns it off."""

SSE_MAX_S = 55.0
"""ARZANI_SSE_MAX_S: an event stream ends after this and the browser reconnects, so no web thread
is held forever (and proxies with a 60 s idle timeout never cut one)."""

EVENTS_RETAIN_S = 120.0
"""ARZANI_EVENTS_RETAIN_S: a session's event log (the reply's tokens) is kept this long after the
reply is attached, so a page that reconnects or reloads just then still resumes exactly."""

REDIS_MAX_CONNECTIONS = 10
"""ARZANI_REDIS_MAX_CONNECTIONS: Redis connections one process may hold for our keys (one of them
is the pub/sub connection its event streams and lock waiters share), and as many for the queue.
A command takes a connection for well under a millisecond, so ten serve thousands of requests a
second; a command beyond them waits for a free one (up to the socket timeout), it does not fail."""

LOG_LEVEL = "INFO"
"""ARZANI_LOG_LEVEL: the level of the `arzani` loggers."""

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

SWEEP_INTERVAL_S = 60
"""ARZANI_SWEEP_INTERVAL: how often the scheduler runs the sweeper (0: never)."""

SWEEP_AFTER_S = 60
"""ARZANI_SWEEP_AFTER: a pending message older than this with no live job is enqueued again."""

RECONCILE_INTERVAL_S = 600
"""ARZANI_RECONCILE_INTERVAL: how often `arzani reconcile --fix` runs (0: never)."""

CLEANUP_INTERVAL_S = 3600
"""ARZANI_CLEANUP_INTERVAL: how often `arzani cleanup` runs (0: never)."""

CLEANUP_AFTER_S = 86_400
"""ARZANI_CLEANUP_AFTER: orphans (a conversation with no message, a key with no row) older than
this are removed."""

REDIS_SENTINEL_MASTER = "mymaster"
"""ARZANI_REDIS_SENTINEL_MASTER: the name the sentinels monitor the master under (`sentinel
monitor NAME ...`); `mymaster` is the name in Redis's sample sentinel.conf, RQ's and most charts'."""

REDIS_SOCKET_TIMEOUT_S = 5.0
"""A Redis command that takes longer than this is treated as Redis being unavailable."""
