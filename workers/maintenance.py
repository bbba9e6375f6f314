"""Maintenance jobs: the sweeper that makes "accepted" mean "answered or visibly failed".

A user message is committed before its job is enqueued. If the enqueue fails (Redis down for a
moment), or the queued job is lost (Redis restarted empty), the message would wait forever. The
sweeper finds user messages still `pending` after a threshold whose reply job is not queued,
scheduled or running, and enqueues it again (same job id, so never twice at once).
Run by `rq cron workers.cron` (see Procfile) and by `arzani sweep`.
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

_ALIVE = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}


def sweep_pending(services: Wiring, older_than_s: int = defaults.SWEEP_AFTER_S,
                  limit: int = 1000) -> list[int]:
    """Enqueue again the reply jobs of stranded pending messages; returns their message ids."""
    cutoff = utcnow() - timedelta(seconds=older_than_s)
    with services.db.read() as db:
        stranded = db.scalars(
            select(Message.id)
            .join(Conversation, Conversation.id == Message.conversation_id)
            .where(
                Message.role == MessageRole.USER,
                Message.status == MessageStatus.PENDING,
                Message.created_at <= cutoff,
                Conversation.deleted_at.is_(None),
            )
            .order_by(Message.id)
            .limit(limit)
        ).all()
    requeued = []
    for message_id in stranded:
        try:
            job = Job.fetch(reply_job_id(message_id), connection=services.rq_redis)
        except NoSuchJobError:
            job = None
        if job is not None:
            if _alive(services, job):
                continue
            job.delete()  # finished, failed or orphaned, yet the message is pending: run it afresh
        enqueue_reply(services.queue, services.settings, message_id)
        requeued.append(message_id)
    if requeued:
        log.warning("stranded pending messages enqueued again",
                    extra={"count": len(requeued), "message_ids": requeued[:20]})
    return requeued


def _alive(services: Wiring, job: Job) -> bool:
    """Will RQ run this job without our help? A `queued` job must really be in the queue (or in
    its intermediate list, between BLMOVE and start): an enqueue whose push failed leaves a job
    hash that says `queued` and is in no list (Redis applies the rest of a MULTI when one command
    fails)."""
    status = job.get_status(refresh=False)
    if status != JobStatus.QUEUED:
        return status in _ALIVE
    queue = services.queue
    pipe = services.rq_redis.pipeline(transaction=False)
    pipe.lpos(queue.key, job.id)
    pipe.lpos(queue.intermediate_queue_key, job.id)
    return any(position is not None for position in pipe.execute())


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
