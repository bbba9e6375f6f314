"""Live events: what the chat page learns without asking, and how it resumes exactly.

Two kinds of event log, each a Redis Stream (a log whose entries have ids) plus a pub/sub channel:

- a session's log, `arzani:session:{SID}:log`: a user message stored (`message`), a generation
  starting (`start`, whose own id is the generation's epoch), its tokens (`token`), the reply
  attached (`reply`), a reply given up on (`failed`). Kept while a reply is being written, then
  expiring `ARZANI_EVENTS_RETAIN_S` after the reply is attached.
- a user's log, `arzani:user:{UID}:log`: a conversation created, renamed or deleted, a new message,
  a reply attached or failed, in any of the user's chats (the sidebar of every tab and device).

Appending is one Lua script: XADD, PEXPIRE, and PUBLISH of the new entry (id, type and data) on the
log's channel. Atomic, so the channel carries the entries in log order, which is what makes the
reader exact: it subscribes first, reads the log after the client's last id, then takes the
channel's entries, skipping any id it has already sent. Server-Sent Events carry the entry id as
`id:`; a reconnecting EventSource sends it back as `Last-Event-ID` (or a client passes `?after=`).

Each web process holds one pub/sub connection (`Hub`) for all its open streams, subscribing to a
channel while at least one stream wants it: an open stream costs no Redis connection of its own,
and under gunicorn's gevent worker no thread either (one greenlet).

Events are hints about the database, which stays the truth: a page that is told `reset` (its
position fell out of the log) reads the conversation again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import NoScriptError, RedisError

from app import defaults, keys
from app.errors import BadRequest, Unavailable

log = logging.getLogger("arzani.events")

HEARTBEAT_S = 10.0
"""A comment line this often keeps proxies from closing an idle stream and finds closed clients."""

SESSION_LOG_MAXLEN = 20_000
"""Entries kept in a session's log at most (XADD MAXLEN ~): a reply of 20,000 tokens still resumes
from its first token; a runaway generation cannot grow the log without bound."""

SESSION_LOG_LIVE_S = 3600
"""A session's log expires this long after its last entry when no reply attaches (a worker died)."""

USER_LOG_MAXLEN = 1000
USER_LOG_TTL_S = 86_400
"""A user's log: the last 1,000 events of a day; a tab away longer is told `reset`."""

GONE_CHECK_S = 1.0
"""How often an open stream looks whether its client has closed the connection."""

SUBSCRIBE_TIMEOUT_S = 5.0
MAX_QUEUED = 10_000
"""Entries waiting for one slow stream before it is made to re-read the log instead."""

ID_PATTERN_MAX = 41
ORIGIN = "0-0"

_APPEND = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'type', ARGV[2], 'data', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], id .. '\\n' .. ARGV[2] .. '\\n' .. ARGV[3])
return id
"""


# Several appends in one script (Publisher.announce): for each log i, KEYS[i] and ARGV[5i-4..5i]
# as _APPEND's (maxlen, type, data, ttl_ms, channel); then, if ARGV has one more, KEYS[#logs + 1]
# is a session's log whose retention starts now, ARGV[last] ms (its reply is attached).
_APPEND_MANY = """
local logs = math.floor(#ARGV / 5)
for i = 1, logs do
    local a = (i - 1) * 5
    local id = redis.call('XADD', KEYS[i], 'MAXLEN', '~', ARGV[a + 1], '*', 'type', ARGV[a + 2], 'data', ARGV[a + 3])
    redis.call('PEXPIRE', KEYS[i], ARGV[a + 4])
    redis.call('PUBLISH', ARGV[a + 5], id .. '\\n' .. ARGV[a + 2] .. '\\n' .. ARGV[a + 3])
end
if #ARGV > logs * 5 then
    redis.call('PEXPIRE', KEYS[logs + 1], ARGV[#ARGV])
end
return logs
"""


@dataclass(frozen=True)
class Log:
    key: str
    channel: str
    maxlen: int
    ttl_ms: int


def session_log(session_id: str) -> Log:
    return Log(keys.session_log(session_id), keys.events_channel(session_id), SESSION_LOG_MAXLEN,
               SESSION_LOG_LIVE_S * 1000)


def user_log(user_id: int) -> Log:
    return Log(keys.user_log(user_id), keys.user_events_channel(user_id), USER_LOG_MAXLEN, USER_LOG_TTL_S * 1000)


def parse_id(raw: str | None) -> tuple[int, int] | None:
    """A stream id `MS-SEQ` as a tuple; None if it is not one."""
    if raw is None or len(raw) > ID_PATTERN_MAX:
        return None
    ms, sep, seq = raw.partition("-")
    if not (sep and ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit()):
        return None
    return int(ms), int(seq)


def resume_position(header: str | None, query: str | None) -> str | None:
    """The position a client resumes after: `?after=` wins over `Last-Event-ID`; BadRequest if it
    is not a log id (an EventSource only ever sends back ids we gave it)."""
    raw = query if query is not None else header
    if raw is None or raw == "":
        return None
    if parse_id(raw) is None:
        raise BadRequest("Last-Event-ID / after must be an event id such as 1764100000000-0")
    return raw


# -- writing ---------------------------------------------------------------------------------

class Publisher:
    """Appends events to the logs. A failure to append is logged, never raised: the database
    already holds what the event announces, and pages read it again on `reset` or reconnect."""

    def __init__(self, redis: Redis, retain_s: float = defaults.EVENTS_RETAIN_S):
        self.redis = redis
        self.retain_ms = int(retain_s * 1000)
        self._append = redis.register_script(_APPEND)
        self._append_many = redis.register_script(_APPEND_MANY)
        self._cluster = is_cluster(redis)

    def append(self, target: Log, kind: str, data: dict) -> str | None:
        try:
            return self._append(keys=[target.key],
                                args=[target.maxlen, kind, json.dumps(data), target.ttl_ms, target.channel])
        except RedisError as error:
            log.warning("event not appended (Redis unavailable): pages catch up from the database",
                        extra={"log": target.key, "event": kind, "error": type(error).__name__})
            return None

    def session(self, session_id: str, kind: str, **data) -> str | None:
        return self.append(*self.to_session(session_id, kind, **data))

    def user(self, user_id: int, kind: str, **data) -> str | None:
        return self.append(*self.to_user(user_id, kind, **data))

    @staticmethod
    def to_session(session_id: str, kind: str, **data) -> tuple[Log, str, dict]:
        return session_log(session_id), kind, {"type": kind, **data}

    @staticmethod
    def to_user(user_id: int, kind: str, **data) -> tuple[Log, str, dict]:
        return user_log(user_id), kind, {"type": kind, **data}

    def announce(self, *entries: tuple[Log, str, dict], settle: str | None = None,
                 along: Pipeline | None = None) -> list | None:
        """Append several events (to_session, to_user) in one round trip; with `settle` (a session
        id), also start that session's retention (its reply is attached). One script for them all
        (EVALSHA of a registered script: not a pipeline of EVALs, whose script text is sent and
        hashed for every entry, nor of EVALSHAs, which redis-py checks with an extra SCRIPT
        EXISTS round trip on every execute). The logs are in different slots (`{SID}`, `{UID}`):
        fine on one Redis, refused by a cluster, where each is appended on its own.

        `along`: a pipeline of another client on the same Redis, with commands of its own queued
        (RQ's bookkeeping of the reply's enqueue, `jobqueue.bookkeeping_pipeline`). The script
        goes with them, as a bare EVALSHA (so no SCRIPT EXISTS first), and the pipeline is
        executed here, whatever befalls the events, and its answers are returned (an error in
        place of a command's answer; None if Redis answered nothing). A Redis that lost its
        scripts (restarted) runs the rest and answers NOSCRIPT for ours: the script is then sent
        on its own."""
        if self._cluster:  # the logs live in different slots: one call each
            # (no `along` here: a cluster needs ARZANI_QUEUE_REDIS_URL, so RQ's Redis is not ours)
            for target, kind, data in entries:
                self.append(target, kind, data)
            if settle is not None:
                self.settle(settle)
            return None
        logs, args = [], []
        for target, kind, data in entries:
            logs.append(target.key)
            args += [target.maxlen, kind, json.dumps(data), target.ttl_ms, target.channel]
        if settle is not None:
            logs.append(keys.session_log(settle))
            args.append(self.retain_ms)
        answers = None
        if along is not None:
            along.evalsha(self._append_many.sha, len(logs), *logs, *args)
            answers = self._execute(along, entries)
            if answers is None or not isinstance(answers[-1], NoScriptError):
                return answers
        try:
            self._append_many(keys=logs, args=args)
        except RedisError as error:
            self._not_appended(entries, error)
        return answers

    def _execute(self, pipeline: Pipeline, entries) -> list | None:
        """Send `pipeline` (our script is its last command): its answers, errors in place, or
        None if Redis answered nothing. Each command's error is its own: the others' (RQ's, a
        session's renewal) must not be taken for ours, which is looked at alone."""
        try:
            answers = pipeline.execute(raise_on_error=False)
        except RedisError as error:
            self._not_appended(entries, error)
            return None
        if isinstance(answers[-1], RedisError) and not isinstance(answers[-1], NoScriptError):
            self._not_appended(entries, answers[-1])
        for answer in answers[:-1]:
            if isinstance(answer, RedisError) and not isinstance(answer, NoScriptError):
                log.warning("a command sent with the announcements failed",
                            extra={"error": f"{type(answer).__name__}: {answer}"})
        return answers

    @staticmethod
    def _not_appended(entries, error: RedisError) -> None:
        log.warning("events not appended (Redis unavailable): pages catch up from the database",
                    extra={"events": ",".join(kind for _, kind, _ in entries), "error": type(error).__name__})

    def settle(self, session_id: str) -> None:
        """A reply is attached: its session's log is kept `retain_s` more for late readers."""
        try:
            self.redis.pexpire(keys.session_log(session_id), self.retain_ms)
        except RedisError:
            pass  # the log keeps its live TTL instead


def is_cluster(client) -> bool:
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


_OPEN_RUN = """
-- KEYS[1]: the session's log; KEYS[2]: its run key (keys.run_key)
-- ARGV[1..5]: as _APPEND (maxlen, type, data, ttl_ms, channel)
-- ARGV[6]: this generation, MID:ATTEMPT; ARGV[7]: the stop mark of its message, stopped:MID
-- Makes this generation the one whose tokens the log takes, and appends its `start`, unless the
-- message was stopped first: then nothing, and false.
if redis.call('GET', KEYS[2]) == ARGV[7] then return false end
redis.call('SET', KEYS[2], ARGV[6], 'PX', ARGV[4])
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'type', ARGV[2], 'data', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], id .. '\\n' .. ARGV[2] .. '\\n' .. ARGV[3])
return id
"""

_APPEND_FENCED = """
-- KEYS[1]: the session's log; KEYS[2]: its run key
-- ARGV[1..5]: as _APPEND; ARGV[6]: this generation, MID:ATTEMPT
-- Appends (and announces) a token only while the run key still names this generation: after a
-- Stop (stopped:MID) or a newer attempt's start, false, and nothing is written; 0 if the run key
-- is gone (Redis lost it): nothing written either.
local run = redis.call('GET', KEYS[2])
if not run then return 0 end
if run ~= ARGV[6] then return false end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'type', ARGV[2], 'data', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PUBLISH', ARGV[5], id .. '\\n' .. ARGV[2] .. '\\n' .. ARGV[3])
return id
"""


class GenerationStopped(Exception):
    """The log refused this generation's token: its message was stopped, or a newer attempt took
    over. Raised from the agent's on_token, so the agent call ends there."""


def stop_mark(message_id: int) -> str:
    return f"stopped:{message_id}"


_CLEAR_STOP_MARK = """
-- KEYS[1]: a session's run key; ARGV[1]: the stop mark of one message. Deleted only if it is that.
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def clear_stop_mark(redis: Redis, session_id: str, message_id: int) -> None:
    """A stopped message answered again (Regenerate): its stop mark must not refuse the new
    generation's start. Only that mark goes; any other run key is left alone."""
    redis.eval(_CLEAR_STOP_MARK, 1, keys.run_key(session_id), stop_mark(message_id))


class Generation:
    """One attempt at writing one reply: a `start` event whose id is the attempt's epoch, then its
    tokens, each naming the epoch. A retry's new epoch tells pages to drop the dead attempt's text.

    Fenced: the start makes this generation the session's run (keys.run_key) and each token is
    appended only while it still is, in one script, so no token is committed after a Stop or once
    a newer attempt started; token() then raises GenerationStopped. If Redis fails instead, the
    attempt stops streaming (a page must never show text with a hole in it): the reply still
    attaches, and its `reply` event carries the whole text."""

    def __init__(self, publisher: Publisher, session_id: str, reply_to: int, attempt: int):
        self.publisher = publisher
        self.session_id = session_id
        self.reply_to = reply_to
        self.attempt = attempt
        self.run = f"{reply_to}:{attempt}"
        self.log = session_log(session_id)
        self.run_key = keys.run_key(session_id)
        self.refused = False
        self.epoch = self._append(_OPEN_RUN, "start", {"reply_to": reply_to, "attempt": attempt},
                                  stop_mark(reply_to))
        self.broken = self.epoch is None

    def _append(self, script: str, kind: str, data: dict, *extra: str) -> str | None:
        target = self.log
        try:
            entry = self.publisher.redis.eval(script, 2, target.key, self.run_key, target.maxlen, kind,
                                              json.dumps({"type": kind, **data}), target.ttl_ms, target.channel,
                                              self.run, *extra)
        except RedisError as error:
            log.warning("event not appended (Redis unavailable): the reply is no longer streamed",
                        extra={"log": target.key, "event": kind, "error": type(error).__name__})
            return None
        if entry is None:
            self.refused = True
            raise GenerationStopped(self.run)
        if entry == 0:  # Redis lost the run key (a restart): stream no more; the attach decides
            log.warning("the session's run key is gone (Redis restarted?): the reply is no longer streamed",
                        extra={"log": target.key, "event": kind})
            return None
        return entry

    def token(self, delta: str) -> None:
        if self.broken:
            return
        appended = self._append(_APPEND_FENCED, "token",
                                {"reply_to": self.reply_to, "epoch": self.epoch, "delta": delta})
        self.broken = appended is None


def partial_text(redis: Redis, session_id: str, reply_to: int) -> str:
    """The text the last generation of `reply_to` wrote to the session's log (its latest `start`,
    then that epoch's tokens): what the page showed when the reply was stopped. Empty if the log
    holds none (no token yet, or the log is gone). A `message` event of `reply_to` (Regenerate
    made it pending again) starts afresh: the tokens before it are the reply being replaced."""
    epoch, pieces = None, []
    for entry_id, fields in redis.xrange(keys.session_log(session_id)):
        kind = fields.get("type")
        if kind not in ("start", "token", "message"):
            continue
        data = json.loads(fields.get("data") or "{}")
        if kind == "message":  # the message (again: a regeneration): what came before is an old reply's
            if (data.get("message") or {}).get("id") == reply_to:
                epoch, pieces = None, []
            continue
        if data.get("reply_to") != reply_to:
            continue
        if kind == "start":
            epoch, pieces = entry_id, []
        elif data.get("epoch") == epoch:
            pieces.append(data.get("delta") or "")
    return "".join(pieces)


# -- reading ---------------------------------------------------------------------------------

class _Lost:
    """Queued to every stream when the hub's connection dropped: re-read the log."""


LOST = _Lost()


class Subscription:
    def __init__(self, channel: str):
        self.channel = channel
        self.ready = threading.Event()
        self._signal = threading.Event()
        self._items: deque = deque()

    def push(self, item) -> None:
        if len(self._items) >= MAX_QUEUED:
            self._items.clear()
            item = LOST  # re-reading the log catches this stream up exactly
        self._items.append(item)
        self._signal.set()

    def take(self, timeout: float) -> list:
        """What arrived, waiting up to `timeout` for something."""
        if not self._items:
            self._signal.wait(timeout)
        self._signal.clear()
        taken = []
        while self._items:
            taken.append(self._items.popleft())
        return taken


class Hub:
    """One pub/sub connection for all the event streams of this process.

    A background thread (a greenlet under gevent) owns the connection: it subscribes to a channel
    when its first stream arrives and unsubscribes after its last leaves, and hands each message
    to the channel's streams. If the connection drops, every stream is told (LOST), and the thread
    reconnects and subscribes again; each stream then re-reads its log from its position."""

    POLL_S = 0.05

    def __init__(self, redis: Redis):
        self.redis = redis
        self._lock = threading.Lock()
        self._subs: dict[str, set[Subscription]] = {}
        self._confirmed: set[str] = set()
        self._pending: set[str] = set()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.reconnects = 0
        # The thread waits on the connection in POLL_S steps; a new channel wakes it at once with a
        # message on this private channel (a round trip, where the next poll could be 50 ms away:
        # a request waiting for a session lock's release must not wait for the poll).
        self._wake_channel = f"arzani:hub:{uuid.uuid4().hex}"

    def subscribe(self, channel: str, timeout: float = SUBSCRIBE_TIMEOUT_S) -> Subscription:
        """A subscription whose channel is confirmed subscribed; Unavailable if Redis is not there."""
        sub = Subscription(channel)
        with self._lock:
            self._subs.setdefault(channel, set()).add(sub)
            if channel in self._confirmed:
                sub.ready.set()
            else:
                self._pending.add(channel)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="arzani-event-hub", daemon=True)
                self._thread.start()
            wake = not sub.ready.is_set()
        if wake:
            try:
                self.redis.publish(self._wake_channel, "")
            except RedisError:
                pass  # the thread finds it on its next poll, or Redis is away (then the wait says so)
        if not sub.ready.wait(timeout):
            self.unsubscribe(sub)
            raise Unavailable("live events are unavailable (Redis did not answer): retry shortly")
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.channel)
            if subs is None:
                return
            subs.discard(sub)
            if not subs:
                del self._subs[sub.channel]
                self._pending.add(sub.channel)

    def close(self) -> None:
        """Stop the background thread (its process's wiring is being closed)."""
        self._closed = True
        if self._thread is not None:
            self._thread.join(2 * self.POLL_S + 1)

    @property
    def channels(self) -> int:
        with self._lock:
            return len(self._subs)

    def _run(self) -> None:
        pubsub = None
        backoff = 0.1
        while not self._closed:
            try:
                if pubsub is None:
                    pubsub = self.redis.pubsub()
                    pubsub.subscribe(self._wake_channel)
                    with self._lock:
                        self._confirmed.clear()
                        self._pending = set(self._subs)
                self._apply(pubsub)
                message = pubsub.get_message(timeout=self.POLL_S)
                while message is not None:
                    self._handle(message)
                    message = pubsub.get_message(timeout=0)
                backoff = 0.1
            except Exception as error:  # noqa: BLE001 - whatever it was, the streams must hear of it
                if isinstance(error, (RedisError, OSError)):
                    log.warning("event hub lost its Redis connection: reconnecting",
                                extra={"error": type(error).__name__})
                else:
                    log.exception("event hub failed: starting over")
                self.reconnects += 1
                with self._lock:
                    self._confirmed.clear()
                    for subs in self._subs.values():
                        for sub in subs:
                            sub.ready.clear()
                            sub.push(LOST)
                try:
                    if pubsub is not None:
                        pubsub.reset()
                except (RedisError, OSError):
                    pass
                pubsub = None
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
        if pubsub is not None:
            try:
                pubsub.reset()
            except (RedisError, OSError):
                pass

    def _apply(self, pubsub) -> None:
        with self._lock:
            pending, self._pending = self._pending, set()
            wanted = [channel for channel in pending if channel in self._subs and channel not in self._confirmed]
            unwanted = [channel for channel in pending if channel not in self._subs]
            self._confirmed.difference_update(unwanted)
        try:
            if wanted:
                pubsub.subscribe(*wanted)
            if unwanted:
                pubsub.unsubscribe(*unwanted)
        except BaseException:
            with self._lock:
                self._pending.update(wanted + unwanted)
            raise

    def _handle(self, message: dict) -> None:
        kind, channel = message.get("type"), message.get("channel")
        if channel == self._wake_channel:
            return  # woken: the loop applies what is pending
        if kind == "subscribe":
            with self._lock:
                if channel in self._subs:
                    self._confirmed.add(channel)
                    for sub in self._subs[channel]:
                        sub.ready.set()
                else:
                    self._pending.add(channel)  # everyone left while it was being subscribed
        elif kind == "message":
            with self._lock:
                subs = list(self._subs.get(channel, ()))
            for sub in subs:
                sub.push(message["data"])


def socket_closed(sock) -> bool:
    """True if the peer of `sock` has closed the connection (it is readable and reads as EOF). An
    SSE client sends nothing after its request, so a readable socket means EOF or an error."""
    import select
    import socket

    try:
        readable, _, _ = select.select([sock], [], [], 0)
        if not readable:
            return False
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def frame(entry_id: str | None, event_type: str, data: str) -> str:
    head = f"id: {entry_id}\n" if entry_id else ""
    return f"{head}event: {event_type}\ndata: {data}\n\n"


class EventStream:
    """One client's stream of one log: opened (subscribed, caught up) before the response starts,
    so that an unavailable Redis is a JSON 503, not a broken stream."""

    def __init__(self, redis: Redis, hub: Hub, target: Log, *, after: str | None, replay: bool, max_s: float,
                 heartbeat_s: float = HEARTBEAT_S, slot=None, client_gone=None):
        """`after`: the client's position (resume exactly after it). Without one, `replay` sends the
        whole retained log (a session: the reply being written), else only what comes next (a user).
        `slot` (app/streamslots.py) is renewed at each heartbeat and released when the stream ends;
        `client_gone()` is asked every GONE_CHECK_S, so a closed page frees its stream within
        seconds instead of at the next failed write."""
        self.redis, self.hub, self.target = redis, hub, target
        self.max_s, self.heartbeat_s = max_s, heartbeat_s
        self.slot, self.client_gone = slot, client_gone
        self.sub = hub.subscribe(target.channel)
        try:
            self.position, self.backlog, self.reset = self._catch_up(after, replay)
        except RedisError:
            hub.unsubscribe(self.sub)
            raise

    def _catch_up(self, after: str | None, replay: bool) -> tuple[str, list, bool]:
        """(position, entries to send, whether the client must re-read the database first)."""
        if after is None and not replay:
            last = self.redis.xrevrange(self.target.key, count=1)
            return (last[0][0] if last else ORIGIN), [], False
        if after is None or after == ORIGIN:
            entries = self.redis.xrange(self.target.key)
            return (entries[-1][0] if entries else ORIGIN), entries, False
        entries = self.redis.xrange(self.target.key, min=after)
        if entries and entries[0][0] == after:
            entries = entries[1:]  # the client's last entry is still here: nothing was lost after it
            return (entries[-1][0] if entries else after), entries, False
        # The position fell out of the log (trimmed, expired, Redis restarted): the client re-reads
        # the database, then takes what the log still holds. A log made again after it expired
        # numbers its entries from the clock again, so an old position is never reissued (the log
        # outlives its last entry by ARZANI_EVENTS_RETAIN_S, at least a second).
        entries = self.redis.xrange(self.target.key)
        return (entries[-1][0] if entries else ORIGIN), entries, True

    def __iter__(self) -> Iterator[str]:
        try:
            yield "retry: 1000\n\n"
            if self.reset:
                yield frame(None, "reset", "{}")
            for entry_id, fields in self.backlog:
                yield frame(entry_id, fields.get("type", "message"), fields.get("data", "{}"))
            self.backlog = []
            yield frame(self.position, "ready", json.dumps({"position": self.position}))
            yield from self._live()
        finally:
            self.close()

    def close(self) -> None:
        """Called by the WSGI server when the response ends, even one never iterated."""
        self.hub.unsubscribe(self.sub)
        if self.slot is not None:
            slot, self.slot = self.slot, None
            try:
                slot.release()
            except RedisError:
                pass  # it expires by itself (streamslots.SLOT_TTL_S)

    def _live(self) -> Iterator[str]:
        end = time.monotonic() + self.max_s
        next_beat = time.monotonic() + self.heartbeat_s
        position = parse_id(self.position)
        while (now := time.monotonic()) < end:
            if self.client_gone is not None and self.client_gone():
                return  # the page was closed: free the stream (and its slot) now
            wait = min(end - now, max(next_beat - now, 0.0))
            items = self.sub.take(min(wait, GONE_CHECK_S) if self.client_gone is not None else wait)
            for item in items:
                if item is LOST:
                    if not self.sub.ready.wait(max(end - time.monotonic(), 0.0)):
                        return  # Redis is still away: the client reconnects, and is told 503 until it is back
                    try:
                        self.position, backlog, reset = self._catch_up(self.position, True)
                    except RedisError:
                        return
                    if reset:
                        yield frame(None, "reset", "{}")
                    for entry_id, fields in backlog:
                        yield frame(entry_id, fields.get("type", "message"), fields.get("data", "{}"))
                    position = parse_id(self.position)
                    continue
                entry_id, _, rest = item.partition("\n")
                event_type, _, data = rest.partition("\n")
                entry_position = parse_id(entry_id)
                if entry_position is None or (position is not None and entry_position <= position):
                    continue  # already sent from the log
                position, self.position = entry_position, entry_id
                yield frame(entry_id, event_type, data)
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + self.heartbeat_s
                if self.slot is not None:
                    try:
                        self.slot.renew()
                    except RedisError:
                        pass  # Redis away: the hub's LOST tells the stream
                yield ": heartbeat\n\n"


class HubListener:
    """One channel's messages through the process's hub (no connection of its own): what a request
    waiting for a session lock's release listens with in a web process."""

    def __init__(self, hub: Hub, channel: str):
        self.hub = hub
        self.sub = hub.subscribe(channel)

    def next_message(self, timeout_s: float) -> str | None:
        end = time.monotonic() + timeout_s
        while (left := end - time.monotonic()) > 0:
            for item in self.sub.take(left):
                if item is not LOST:
                    return item
        return None

    def close(self) -> None:
        self.hub.unsubscribe(self.sub)


class PubSubListener:
    """The same on a pub/sub connection of its own (workers and commands, which have no hub)."""

    def __init__(self, redis: Redis, channel: str):
        self.pubsub = redis.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(channel)

    def next_message(self, timeout_s: float) -> str | None:
        """The next published payload within `timeout_s`, skipping subscribe confirmations."""
        end = time.monotonic() + timeout_s
        while (left := end - time.monotonic()) > 0:
            message = self.pubsub.get_message(timeout=left)
            if message and message.get("type") == "message":
                return message["data"]
        return None

    def close(self) -> None:
        self.pubsub.close()
