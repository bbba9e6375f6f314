"""The RQ seam: the only module in app/ that imports rq.

Reply jobs are enqueued by dotted path (`workers.jobs.reply`) with the user message's id, never an
ORM object: app/ never imports workers/. One job id per user message, so a second enqueue of the
same message (a client's retry, the sweeper) is refused by RQ instead of making a second job; the
id is namespaced by queue and creation time (see reply_job_id).
"""

from __future__ import annotations

import calendar
import logging
import time
from datetime import datetime
from typing import Protocol

from redis import Redis
from redis.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Callback, Queue, Retry
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job

from app import defaults
from app.config import Settings

log = logging.getLogger("arzani.jobqueue")

REPLY_JOB = "workers.jobs.reply"
"""The reply job, by dotted path."""

REPLY_FAILED_CALLBACK = "workers.jobs.reply_failed"
"""Runs after each failed attempt; marks the message `failed` after the last one."""


def make_queue(settings: Settings, connection: Redis) -> Queue:
    """The queue of reply (and maintenance) jobs, on RQ's own connection (bytes, not str)."""
    return Queue(settings.queue_name, connection=connection)


class Stored(Protocol):
    """A stored user message, as far as its job id goes: a Message, or a row of (id, created_at)."""

    id: int
    created_at: datetime


def reply_job_id(queue_name: str, message: Stored) -> str:
    """One job id per user message: a second enqueue of the same message is refused by RQ.

    RQ's job ids are global to a Redis, not per queue: the id carries the queue's name and the
    message's creation time (in microseconds) beside its id, so that two deployments sharing a
    Redis, or one database restored to an earlier state that hands out message ids again, never
    meet a job of another message under the same id (a refused duplicate would leave the new
    message to the sweeper)."""
    created = message.created_at
    micros = calendar.timegm(created.utctimetuple()) * 1_000_000 + created.microsecond
    return f"reply-{queue_name}-{message.id}-{micros}"


def _retry(retries: int) -> Retry:
    """`retries` agent attempts after the first, then one more run: a work-horse killed on the last
    attempt runs no failure callback, and this last run finds the message's attempts used up
    (counted in the database) and fails it visibly, within the retry schedule."""
    intervals = [*defaults.RETRY_INTERVALS_S[:retries], defaults.RETRY_INTERVALS_S[0]]
    return Retry(max=retries + 1, interval=intervals)


def enqueue_reply(queue: Queue, settings: Settings, message: Stored, pipeline: Pipeline | None = None) -> str:
    """Enqueue the reply job of a committed user message; a job already there is left alone.

    If Redis refuses, the error propagates: the message is committed and `pending`, and the
    sweeper enqueues it again (it uses this same function and job id). `pipeline`: see
    `bookkeeping_pipeline`.
    """
    job_id = reply_job_id(queue.name, message)
    _enqueue(queue, settings, message, job_id, f"reply to message {message.id}", pipeline)
    return job_id


def bookkeeping_pipeline(queue: Queue, settings: Settings) -> Pipeline | None:
    """A transaction on the queue's connection for `enqueue_reply(pipeline=)`, or None when the
    queue has a Redis of its own (ARZANI_QUEUE_REDIS_URL: then nothing of ours can share it).

    With a unique job id, RQ saves and pushes the job at once, in its own atomic script (so a
    duplicate is refused at once, and the caller learns it before anything else is sent); what it
    queues on the pipeline is only its bookkeeping, the queue's name in `rq:queues`. The caller
    adds its own commands for the same Redis (the message's announcements) and executes the
    pipeline: one round trip for both, where RQ alone would have sent one of its own."""
    return None if settings.queue_redis_url else queue.connection.pipeline()


def _enqueue(queue: Queue, settings: Settings, message: Stored, job_id: str, description: str,
             pipeline: Pipeline | None = None) -> bool:
    """One reply job under `job_id`, with the retry schedule and the failure callback; False if a
    job of that id is there already (RQ refuses it atomically)."""
    try:
        queue.enqueue(
            REPLY_JOB,
            message.id,
            job_id=job_id,
            unique=True,
            job_timeout=settings.job_timeout_s,
            retry=_retry(settings.reply_retries),
            on_failure=Callback(REPLY_FAILED_CALLBACK),
            description=description,
            pipeline=pipeline,
        )
    except DuplicateJobError:
        return False
    return True


def enqueue_reply_or_leave_to_sweeper(queue: Queue, settings: Settings, message: Stored,
                                      pipeline: Pipeline | None = None, *, unreachable_raises: bool = False) -> str:
    """The message is committed: answering 503 now would invite a duplicate. If Redis refuses
    the job, the message stays `pending` and the sweeper (workers/maintenance.py) enqueues it.
    `unreachable_raises`: a Redis that does not answer (connection, timeout) raises instead, for
    a caller that answers 503 then (conversations.py: a message it withdraws, a retry of one)."""
    try:
        return enqueue_reply(queue, settings, message, pipeline)
    except RedisError as exc:
        if unreachable_raises and isinstance(exc, (RedisConnectionError, RedisTimeoutError)):
            raise
        log.error("reply enqueue failed; the sweeper will enqueue it",
                  extra={"message_id": message.id, "error": repr(exc)})
        return reply_job_id(queue.name, message)


def takeover_key(queue_name: str, message: Stored) -> str:
    """`arzani:recovery:{QUEUE}:takeover:{REPLY JOB ID}`: there while a takeover of the message
    was enqueued less than `ARZANI_STUCK_AFTER` ago."""
    return f"arzani:recovery:{{{queue_name}}}:takeover:{reply_job_id(queue_name, message)}"


def enqueue_takeover(queue: Queue, settings: Settings, message: Stored) -> bool:
    """A reply job under an id of its own, for a message whose reply nobody is writing (its
    worker died: workers/recovery.py). At most one per message per `ARZANI_STUCK_AFTER` seconds,
    however many watchers look at once; True if enqueued. The original job stays where it is
    (RQ's recovery may still retry it): the generation claim lets only one of them call the agent.

    The spacing is a key set NX with that TTL, so it is measured from the last takeover. (It was a
    job id per fixed window of time: two looks either side of a window's edge, milliseconds apart,
    made two takeovers.) A process killed between the SET and the enqueue delays the takeover by
    one such interval; Redis restarted empty forgets the spacing, which costs at most one no-op job."""
    every_ms = max(1, int(settings.stuck_after_s * 1000))
    if not queue.connection.set(takeover_key(queue.name, message), 1, nx=True, px=every_ms):
        return False
    job_id = f"{reply_job_id(queue.name, message)}-takeover-{time.time_ns() // 1_000_000}"
    return _enqueue(queue, settings, message, job_id, f"reply to message {message.id} (takeover)")


def requeue_reply(queue: Queue, settings: Settings, message: Stored) -> str:
    """A new round of attempts for a message whose job failed for good. The failed job keeps its
    id in RQ's failed registry: delete it to make room for the new one."""
    try:
        Job.fetch(reply_job_id(queue.name, message), connection=queue.connection).delete()
    except NoSuchJobError:
        pass
    return enqueue_reply(queue, settings, message)
