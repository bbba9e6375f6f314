"""Maintenance jobs: the sweeper that makes "accepted" mean "answered or visibly failed".

A user message is committed before its job is enqueued. If the enqueue fails (Redis down for a
moment), or the queued job is lost (Redis restarted empty), the message would wait forever. The
sweeper finds user messages still `pending` after a threshold whose reply job is not queued,
scheduled or running, and enqueues it again (same job id, so never twice at once).
Run by `arzani cron` (the Procfile's `cron:`, workers/scheduler.py) and by `arzani sweep`.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from sqlalchemy import select

from app import defaults
from app.jobqueue import enqueue_reply, reply_job_id
from app.models import Conversation, Message, MessageRole, MessageStatus, utcnow
from app.wiring import Wiring

log = logging.getLogger("arzani.maintenance")

_TERMINAL = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}
"""The only states in which the sweeper may delete a job (to enqueue it afresh). Anything else
is RQ's to run: deleting it could run the agent twice."""

# One job's state, read in one step with what is done about it. A `queued` job must really be in
# the queue (or in its intermediate list, between BLMOVE and start): an enqueue whose push failed
# leaves a job hash that says `queued` and is in no list (Redis applies the rest of a MULTI when
# one command fails). Such a job is pushed again in the same script, so no worker can take it
# between the look and the push.
_CHECK = """
-- KEYS[1] job hash, KEYS[2] queue list, KEYS[3] intermediate list; ARGV[1] job id
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
    return 'missing'
end
if status == 'queued' then
    if redis.call('LPOS', KEYS[2], ARGV[1]) or redis.call('LPOS', KEYS[3], ARGV[1]) then
        return 'queued'
    end
    redis.call('RPUSH', KEYS[2], ARGV[1])
    return 'pushed'
end
return status
"""


def sweep_pending(services: Wiring, older_than_s: int = defaults.SWEEP_AFTER_S,
                  batch: int = 1000) -> list[int]:
    """Enqueue again the reply jobs of stranded pending messages; returns their message ids.

    Every pending message older than the threshold is looked at, in pages of `batch` (a backlog
    of queued ones cannot hide a stranded one behind it). The queue's lists are read once per
    sweep, so a message whose job is in them costs no Redis call; only the others are checked,
    one script each."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    queue = services.queue
    in_lists = set(services.rq_redis.lrange(queue.key, 0, -1)) | set(
        services.rq_redis.lrange(queue.intermediate_queue_key, 0, -1))
    check = services.rq_redis.register_script(_CHECK)
    requeued, after_id = [], 0
    while True:
        with services.db.read() as db:
            page = db.execute(
                select(Message.id, Message.created_at)
                .join(Conversation, Conversation.id == Message.conversation_id)
                .where(
                    Message.role == MessageRole.USER,
                    Message.status == MessageStatus.PENDING,
                    Message.created_at <= cutoff,
                    Conversation.deleted_at.is_(None),
                    Message.id > after_id,
                )
                .order_by(Message.id)
                .limit(batch)
            ).all()
        if not page:
            break
        after_id = page[-1].id
        for message in page:
            if _sweep_one(services, check, in_lists, message):
                requeued.append(message.id)
    if requeued:
        log.warning("stranded pending messages enqueued again",
                    extra={"count": len(requeued), "message_ids": requeued[:20]})
    return requeued


def _sweep_one(services: Wiring, check, in_lists: set[bytes], message) -> bool:
    """True if the message's job (`message`: a row of id and created_at) was enqueued again."""
    job_id = reply_job_id(services.queue.name, message)
    if job_id.encode() in in_lists:
        return False  # waiting its turn
    queue = services.queue
    state = check(keys=[Job.key_for(job_id), queue.key, queue.intermediate_queue_key], args=[job_id])
    state = state.decode() if isinstance(state, bytes) else state
    if state == "pushed":
        return True
    if state == "missing":
        enqueue_reply(services.queue, services.settings, message)
        return True
    if state not in _TERMINAL:
        return False  # queued, started, scheduled, deferred...: RQ will run it
    # Finished or failed, yet the message is pending (a job whose work was lost): run it afresh.
    # Looked at again right before the delete, which only a terminal job may get.
    try:
        job = Job.fetch(job_id, connection=services.rq_redis)
    except NoSuchJobError:
        job = None
    if job is not None:
        if job.get_status(refresh=True) not in _TERMINAL:
            return False
        job.delete()
    enqueue_reply(services.queue, services.settings, message)
    return True


def sweep_job(older_than_s: int = defaults.SWEEP_AFTER_S) -> dict:
    """The RQ job form of `sweep_pending`, for `rq cron` (workers/cron.py)."""
    from workers.jobs import services

    return {"requeued": sweep_pending(services(), older_than_s)}


def reconcile_job() -> dict:
    """Scheduled `arzani reconcile --fix`."""
    from app.operations import reconcile
    from workers.jobs import services

    findings = reconcile(services(), fix=True)
    # Keys missing in front of a database that has their conversations (a fresh Redis) are
    # rebuilt quietly, counted in one INFO line; anything else is a real disagreement: WARNING.
    rebuilt = [f for f in findings if f.kind == "untracked" and f.fixed]
    for finding in findings:
        if finding not in rebuilt:
            log.warning("reconcile: %s", finding.line(), extra={"session_id": finding.session_id})
    if rebuilt:
        log.info("reconcile: rebuilt %d session key(s) missing from Redis", len(rebuilt))
    return {"findings": len(findings), "fixed": sum(f.fixed for f in findings), "rebuilt": len(rebuilt)}


def cleanup_job(older_than_s: int) -> dict:
    """Scheduled `arzani cleanup --older-than ...`."""
    from app.operations import cleanup
    from workers.jobs import services

    removed = cleanup(services(), older_than=timedelta(seconds=older_than_s), dry_run=False)
    for line in removed:
        log.info("cleanup removed %s", line)
    return {"removed": len(removed)}
