"""Reply jobs, run by the stock `rq worker` (enqueued by app/ as "workers.jobs.reply").

A job may run twice, even at the same time (an RQ retry, a work-horse that outlived its parent):
the database's unique `messages.reply_to` makes the second run a no-op instead of a second reply.
Exceptions propagate so that RQ records them and retries; when the retries are spent, the
failure callback marks the user message `failed`, visibly.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
from urllib.parse import quote

from redis.exceptions import RedisError
from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError

from app import events, metrics
from app.config import Settings
from app.conversations import message_json
from app.logs import configure_logging
from app.models import Conversation, FailureReason, Message, MessageRole, MessageStatus, utcnow
from app.sessions import process_name
from app.wiring import Wiring
from workers.agents import AgentError, Turn, make_agent

log = logging.getLogger("arzani.jobs")

_services: Wiring | None = None


def services() -> Wiring:
    """This worker process's wiring, made from the environment on first use."""
    global _services
    # Made again inside a job if it was made (by workers.rq_settings, in the worker's parent)
    # without a Redis URL: `rq worker --url URL` with no REDIS_URL exported uses the worker's Redis.
    # With sentinels configured the settings know where Redis is: never the worker's connection.
    if _services is None or (not _services.settings.redis_configured and _current_worker_redis_url()):
        settings = Settings.from_env()
        if not settings.redis_configured:
            settings = dataclasses.replace(settings, redis_url=_current_worker_redis_url())
        configure_logging(settings.log_level)
        _services = Wiring(settings, process_kind="worker")
        if settings.redis_configured:
            _warn_if_not_preloaded(_services)
    return _services


RQ_SETTINGS_WARNING_KEY = "arzani:warned:rq-settings"
"""Set (for an hour) when a worker without `-c workers.rq_settings` was reported: one warning an
hour for the whole deployment, not one per job."""


def _current_worker_redis_url() -> str | None:
    """The URL of the Redis the running job came from (the worker's --url), or None outside a job."""
    from rq import get_current_job

    job = get_current_job()
    if job is None:
        return None
    kwargs = job.connection.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    scheme = "rediss" if job.connection.connection_pool.connection_class.__name__ == "SSLConnection" else "redis"
    auth = ""
    if kwargs.get("password"):
        auth = f"{quote(kwargs.get('username') or '', safe='')}:{quote(kwargs['password'], safe='')}@"
    return f"{scheme}://{auth}{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


def _warn_if_not_preloaded(svc: Wiring) -> None:
    """`rq worker` without `-c workers.rq_settings` forks each work-horse before this module is
    imported, so every job imports Flask, SQLAlchemy and the app afresh: about 10x slower. Say so."""
    if "workers.rq_settings" in sys.modules:
        return
    try:
        first = svc.redis.set(RQ_SETTINGS_WARNING_KEY, os.getpid(), nx=True, ex=3600)
    except RedisError:
        return
    if first:
        log.warning("this rq worker was started without `-c workers.rq_settings`: each reply job imports "
                    "the app afresh (about 10x slower). Start workers as the Procfile does: "
                    "rq worker -c workers.rq_settings ...")


def use_services(replacement: Wiring | None) -> None:
    """Hand this process a wiring of its own (tests running jobs in-process)."""
    global _services
    _services = replacement


def reply(message_id: int) -> dict:
    """Answer user message `message_id`, and any earlier unanswered one of its conversation first,
    so that replies within a session are attached in the order of the user messages."""
    outcome = "error"
    with metrics.job_seconds.time():
        try:
            result = _reply(message_id)
            outcome = result.get("outcome", "ok")
            return result
        finally:
            metrics.jobs.labels(outcome=outcome).inc()


def _reply(message_id: int) -> dict:
    svc = services()
    with svc.db.read() as db:
        message = db.get(Message, message_id)
        if message is None or message.role != MessageRole.USER:
            log.warning("reply job for a message that is not a user message",
                        extra={"message_id": message_id})
            return {"message_id": message_id, "outcome": "no_such_user_message"}
        conversation = db.get(Conversation, message.conversation_id)
    if conversation.deleted_at is not None:
        log.info("conversation deleted before its reply: nothing attached",
                 extra={"conversation_id": conversation.id, "message_id": message_id})
        return {"message_id": message_id, "outcome": "conversation_deleted"}

    _check_session_key(svc, conversation)

    with svc.db.read() as db:
        waiting = db.scalars(
            select(Message.id)
            .where(
                Message.conversation_id == conversation.id,
                Message.role == MessageRole.USER,
                Message.status == MessageStatus.PENDING,
                Message.id <= message_id,
            )
            .order_by(Message.id)
        ).all()
    agent = make_agent(svc.settings)
    attached = [pending_id for pending_id in waiting if _answer(svc, agent, conversation, pending_id)]
    return {"message_id": message_id, "conversation_id": conversation.id, "attached_for": attached}


def _check_session_key(svc: Wiring, conversation: Conversation) -> None:
    """The session key should name the message's conversation. The database is authoritative:
    on disagreement (or a lost key) log it and rewrite the key from the database."""
    tracked_id = svc.sessions.tracked_conversation_id(conversation.session_id)
    if tracked_id == conversation.id:
        return
    if tracked_id is not None:  # a lost key (Redis restarted empty) is rebuilt quietly by repair()
        metrics.session_mismatches.labels(side="worker").inc()
        log.warning(
            "session key disagrees with the message's conversation: repairing from the database",
            extra={"session_id": conversation.session_id, "conversation_id": conversation.id,
                   "tracked_conversation_id": tracked_id, "proc": process_name(svc.process_kind)},
        )
    svc.sessions.repair(conversation.session_id, replacing=tracked_id)


def _history(db, conversation_id: str, upto_message_id: int) -> list[Turn]:
    rows = db.scalars(
        select(Message)
        .where(
            Message.conversation_id == conversation_id,
            or_(
                (Message.role == MessageRole.USER) & (Message.id <= upto_message_id),
                (Message.role == MessageRole.ASSISTANT) & (Message.reply_to < upto_message_id),
            ),
        )
        .order_by(Message.id)
    ).all()
    return [Turn(m.role, m.content) for m in rows]


def _answer(svc: Wiring, agent, conversation: Conversation, user_message_id: int) -> bool:
    """Attach one reply to `user_message_id`. False if a reply was already there."""
    with svc.db.read() as db:
        if db.scalar(select(Message.id).where(Message.reply_to == user_message_id)) is not None:
            _mark_answered(svc, user_message_id)
            return False
        history = _history(db, conversation.id, user_message_id)
    if not _count_attempt(svc, conversation, user_message_id):
        return False
    # A new epoch in the session's event log: pages drop any text of an earlier attempt at this reply.
    generation = events.Generation(svc.events, conversation.session_id, user_message_id)
    try:
        text = agent.reply(conversation.id, history, on_token=generation.token)
    except Exception as error:
        _record_failure(svc, conversation, user_message_id, _reason(error))
        raise  # RQ retries the job after its interval
    now = utcnow()
    try:
        with svc.db.write() as db:
            live = db.execute(
                update(Conversation)
                .where(Conversation.id == conversation.id, Conversation.deleted_at.is_(None))
                .values(message_count=Conversation.message_count + 1, updated_at=now)
            ).rowcount
            if not live:
                # Deleted while the agent was thinking: a deleted conversation stays deleted.
                return False
            reply_message = Message(conversation_id=conversation.id, role=MessageRole.ASSISTANT, content=text,
                                    status=MessageStatus.COMPLETE, reply_to=user_message_id, created_at=now)
            db.add(reply_message)
            db.execute(update(Message).where(Message.id == user_message_id)
                       .values(status=MessageStatus.ANSWERED))
    except IntegrityError:
        log.info("reply already attached by another run", extra={"message_id": user_message_id,
                                                                  "conversation_id": conversation.id})
        _mark_answered(svc, user_message_id)
        return False
    metrics.replies_attached.inc()
    attached = message_json(reply_message)
    svc.events.announce(
        svc.events.to_session(conversation.session_id, "reply", reply_to=user_message_id, message=attached),
        svc.events.to_user(conversation.user_id, "reply", conversation_id=conversation.id,
                           session_id=conversation.session_id, message=attached),
        settle=conversation.session_id)
    log.info("reply attached", extra={"message_id": user_message_id, "conversation_id": conversation.id,
                                      "session_id": conversation.session_id,
                                      "proc": process_name(svc.process_kind)})
    return True


def _max_attempts(svc: Wiring) -> int:
    return svc.settings.reply_retries + 1


def _count_attempt(svc: Wiring, conversation: Conversation, user_message_id: int) -> bool:
    """Count an agent call in the database before making it. False (no call) when the message is
    no longer pending, or has used all its attempts: then it is marked failed, with the reason an
    attempt recorded, or `worker_died` (a work-horse killed mid-call records nothing). So a message
    that kills every horse that tries it fails visibly, and later messages of its session go on."""
    with svc.db.write() as db:
        counted = db.execute(
            update(Message)
            .where(Message.id == user_message_id, Message.status == MessageStatus.PENDING,
                   Message.attempts < _max_attempts(svc))
            .values(attempts=Message.attempts + 1)
        ).rowcount
        if counted:
            return True
        exhausted = db.execute(
            update(Message)
            .where(Message.id == user_message_id, Message.status == MessageStatus.PENDING)
            .values(status=MessageStatus.FAILED,
                    failure_reason=func.coalesce(Message.failure_reason, FailureReason.WORKER_DIED))
        ).rowcount
        reason = db.scalar(select(Message.failure_reason).where(Message.id == user_message_id))
    if exhausted:
        _announce_failure(svc, conversation, user_message_id, reason)
    return False


def _reason(error: BaseException) -> str:
    from rq.timeouts import JobTimeoutException

    if isinstance(error, JobTimeoutException):
        return FailureReason.TIMEOUT
    if isinstance(error, AgentError):
        return FailureReason.AGENT_ERROR
    return FailureReason.ERROR


def _record_failure(svc: Wiring, conversation: Conversation, user_message_id: int, reason: str) -> None:
    """An attempt failed with an error: remember why; after the last attempt, fail the message now
    (its RQ retry then finds it failed and goes on with the session's later messages)."""
    with svc.db.write() as db:
        db.execute(update(Message).where(Message.id == user_message_id, Message.status == MessageStatus.PENDING)
                   .values(failure_reason=reason))
        failed = db.execute(
            update(Message)
            .where(Message.id == user_message_id, Message.status == MessageStatus.PENDING,
                   Message.attempts >= _max_attempts(svc))
            .values(status=MessageStatus.FAILED)
        ).rowcount
    if failed:
        _announce_failure(svc, conversation, user_message_id, reason)


def _announce_failure(svc: Wiring, conversation: Conversation, user_message_id: int, reason: str | None) -> None:
    metrics.reply_failures.inc()
    svc.events.announce(
        svc.events.to_session(conversation.session_id, "failed", reply_to=user_message_id, message_id=user_message_id,
                              failure_reason=reason),
        svc.events.to_user(conversation.user_id, "failed", conversation_id=conversation.id,
                           session_id=conversation.session_id, reply_to=user_message_id, message_id=user_message_id,
                           failure_reason=reason))
    log.error("reply failed for good: message marked failed",
              extra={"message_id": user_message_id, "conversation_id": conversation.id, "reason": reason})


def _mark_answered(svc: Wiring, user_message_id: int) -> None:
    with svc.db.write() as db:
        db.execute(update(Message).where(Message.id == user_message_id,
                                         Message.status != MessageStatus.ANSWERED)
                   .values(status=MessageStatus.ANSWERED))


def reply_failed(job, connection, exc_type=None, exc_value=None, traceback=None) -> None:
    """RQ failure callback, a fallback: an agent error already failed its message after its last
    attempt (`_record_failure`), and a horse that died is caught by the next attempt's count. This
    acts only when RQ has no retry left for the job and its message is still pending (an error
    outside the agent call, say the database): the message fails visibly rather than wait."""
    if job.should_retry:
        return
    message_id = job.args[0]
    svc = services()
    reason = _reason(exc_value) if isinstance(exc_value, BaseException) else FailureReason.ERROR
    with svc.db.write() as db:
        changed = db.execute(
            update(Message)
            .where(Message.id == message_id, Message.status == MessageStatus.PENDING)
            .values(status=MessageStatus.FAILED, failure_reason=func.coalesce(Message.failure_reason, reason))
        ).rowcount
        conversation = db.scalar(select(Conversation).join(Message, Message.conversation_id == Conversation.id)
                                 .where(Message.id == message_id))
        recorded = db.scalar(select(Message.failure_reason).where(Message.id == message_id))
    if changed and conversation is not None:
        _announce_failure(svc, conversation, message_id, recorded)
