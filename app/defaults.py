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

IF_BUSY = "enqueue"
"""ARZANI_IF_BUSY: what a message sent while the assistant is still answering does, unless the
request says (`if_busy`): `enqueue` (answered in order, after the current reply), `reject` (409
session_busy, nothing stored) or `interrupt` (the current reply is stopped, then this message is
answered with the whole history, the stopped reply's partial text included)."""

IF_BUSY_POLICIES = ("enqueue", "reject", "interrupt")

MAX_CONVERSATION_MESSAGES = 2000
"""ARZANI_MAX_CONVERSATION_MESSAGES: messages (user messages and replies) one conversation may hold;
a message beyond is refused (409 conversation_full). 1,000 exchanges of up to 32 KiB each."""

HISTORY_BUDGET_CHARS = 60_000
"""ARZANI_HISTORY_BUDGET_CHARS: the most characters of history an agent is given (about 15,000
tokens): the conversation's first message and the newest messages that fit, the message being
answered always among them; older ones are left out first."""

GENERATION_LEASE_S = 15.0
"""ARZANI_GENERATION_LEASE_S: a reply being written is claimed in the database for this long and
renewed every third of it by the worker writing it; a claim not renewed (its worker died or
stalled) may be taken over by another run."""

JOB_TIMEOUT_S = 120
"""ARZANI_JOB_TIMEOUT: RQ kills a reply job's work-horse after this."""

RATE_LIMIT = "300/minute"
"""ARZANI_RATE_LIMIT: API requests per user across all processes (the chat page polls about 90 a
minute); on by default in production only, so load tests such as `arzani race` measure the
service, not the limiter. `off` turns it off."""

RATE_LIMIT_IP = "600/minute"
"""ARZANI_RATE_LIMIT_IP: requests per client address to the API and the page (`GET /`), across all
processes, counted before authentication: so 401s (guessing tokens) and fresh identities (a new
cookie per request) are limited too. Twice the per-user limit, so that a few users behind one
address (an office's NAT) are not limited by each other; raise it for more. On by default in
production only, like ARZANI_RATE_LIMIT; `off` turns it off."""

TRUSTED_PROXIES = 0
"""ARZANI_TRUSTED_PROXIES: how many reverse proxies in front of gunicorn append to
X-Forwarded-For; the client address is the one the outermost of them saw. 0: X-Forwarded-For is
never trusted (any client can write it), the address is the TCP peer's."""

MAX_RESERVATIONS = 100
"""ARZANI_MAX_RESERVATIONS: session ids one user may hold reserved and unused (POST /api/sessions,
or listening to a session before its first message); one more is 429 too_many_sessions. A
reservation is a Redis hash that lives ARZANI_SESSION_TTL: without a cap one client could fill
Redis (2,000 reservations in 3 s). A reservation stops counting once its session has a
conversation, or when it expires."""

SSE_MAX_S = 55.0
"""ARZANI_SSE_MAX_S: an event stream ends after this and the browser reconnects, so no web thread
is held forever (and proxies with a 60 s idle timeout never cut one)."""

EVENTS_RETAIN_S = 120.0
"""ARZANI_EVENTS_RETAIN_S: a session's event log (the reply's tokens) is kept this long after the
reply is attached, so a page that reconnects or reloads just then still resumes exactly."""

MAX_STREAMS_PER_USER = 32
"""ARZANI_MAX_STREAMS_PER_USER: event streams one user may hold open at once, over every web
process (a tab holds two); beyond, 429 too_many_streams."""

MAX_STREAMS_PER_IP = 256
"""ARZANI_MAX_STREAMS_PER_IP: event streams one client address may hold open at once (many users
behind one NAT share it); beyond, 429 too_many_streams."""

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

RECOVERY_INTERVAL_S = 2.0
"""ARZANI_RECOVERY_INTERVAL: how often `arzani cron`'s recovery watcher looks for Redis having lost
its data, replies nobody is writing and retries due (workers/recovery.py; 0: never)."""

STUCK_AFTER_S = 10.0
"""ARZANI_STUCK_AFTER: a pending message whose job left the queue this long ago and that nobody
claimed (its worker died between taking the job and starting it) gets a takeover job."""

RQ_RECONNECT_MAX_S = 2.0
"""The longest an `rq worker` waits between two attempts to reach Redis (RQ's own default is 60 s:
after an outage of a minute, workers would start again up to a minute after Redis)."""

RQ_COMMAND_RETRIES = 12
"""How often an `rq worker` sends a Redis command again after a connection error, waiting 0.1,
0.2, 0.4... at most RQ_RECONNECT_MAX_S between tries: about 17 s in all, longer than a Redis
restart or a Sentinel failover takes (workers/rq_settings.py). A longer outage at such a moment
makes the worker quit, and its supervisor (supervisord under `make run`) starts it again."""

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

RECENT_SESSIONS = 10_000
"""Sessions each web process remembers the conversation of (sessions.RecentSessions), so that a
message to one of them asks Redis nothing before its insert. About 200 bytes each."""

RECENT_SESSION_MAX_AGE_S = 60.0
"""How long such an entry is used after Redis last named its conversation (each message's renewal
names it again). A stale entry costs nothing but a second try: the insert validates it."""
