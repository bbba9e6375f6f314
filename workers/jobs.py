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

from app import events, metrics, runs
from app.config import Settings
from app.conversations import earlier_versions, message_json, replace_reply
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


def warm_up() -> None:
    """Walk a reply's database steps once, in the worker's parent before it forks any work-horse
    (workers/rq_settings.py), inside a transaction of the service's database that is rolled back
    (Database.rehearsal: nothing is committed, no Redis is touched). SQLAlchemy builds much of its
    machinery on first use (mapper configuration, each statement's compiled form, cached per
    engine, its result plumbing) and a horse is a fresh fork that throws away what it built when
    its job ends: without this every reply job built it all again, the largest part of a job's
    own time (in a forked horse here: about 35 ms cold, 8 ms warm). A failure is logged and the
    worker starts all the same, only slower."""
    from app.models import User

    svc = services()
    try:
        with svc.db.rehearsal() as database:
            rehearsing = dataclasses.make_dataclass("Rehearsing", ["db", "settings"])(database, svc.settings)
            with database.write() as db:
                user = User(name="warm-up", kind="api")
                db.add(user)
                db.flush()
                conversation = Conversation(session_id=f"warm-up-{os.getpid()}", user_id=user.id,
                                            created_by=process_name(svc.process_kind))
                db.add(conversation)
                db.flush()
                message = Message(conversation_id=conversation.id, role=MessageRole.USER, content="warm up",
                                  status=MessageStatus.PENDING, created_at=utcnow())
                db.add(message)
                db.flush()
                message_id = message.id
            # What a job does, in its order: the first read, the claim, a renewal, the attach.
            with database.read() as db:
                message = db.get(Message, message_id)
                conversation = db.get(Conversation, message.conversation_id)
                turn = _next_turn(rehearsing, db, conversation.id)
            held = runs.claim(rehearsing, turn.message_id, "warm-up")
            runs.renew(rehearsing, held)
            _store_reply(rehearsing, conversation, held, "warmed", context_upto=turn.message_id)
            runs.claim(rehearsing, turn.message_id, "warm-up")  # answered now: a refused claim's statements
    except Exception as error:
        log.warning("warm-up of the reply path failed: each job builds it instead",
                    extra={"error": repr(error)})


def use_services(replacement: Wiring | None) -> None:
    """Hand this process a wiring of its own (tests running jobs in-process)."""
    global _services
    _services = replacement


def reply(message_id: int) -> dict:
    """Answer user message `message_id`, in order: the conversation's earliest pending message
    first, then the next, while this run holds their claims (app/runs.py)."""
    outcome = "error"
    with metrics.job_seconds.time():
        try:
            result = _reply(message_id)
            outcome = result.get("outcome", "ok")
            return result
        finally:
            metrics.jobs.labels(outcome=outcome).inc()


def _run_owner() -> str:
    """Who claims: this RQ job (a retry of it takes over its own dead attempt at once), or a run
    of its own outside RQ."""
    from rq import get_current_job

    job = get_current_job()
    return job.id if job is not None else runs.new_owner()


@dataclasses.dataclass(frozen=True)
class _Turn:
    """The conversation's earliest pending user message and what the agent is given to answer it
    (read together, in one read transaction)."""

    message_id: int
    seen: list[Message]


_UNKNOWN = object()  # the attach could not tell which message is pending next: look


def _next_turn(svc: Wiring, db, conversation_id: str) -> _Turn | None:
    pending_id = runs.next_pending_in(db, conversation_id)
    if pending_id is None:
        return None
    return _Turn(pending_id, history(db, conversation_id, pending_id, svc.settings.history_budget_chars))


def _reply(message_id: int) -> dict:
    svc = services()
    # One read transaction for the message, its conversation and the first turn: a job's database
    # work is then this read, the claim, and the attach (which also says what is pending next).
    with svc.db.read() as db:
        message = db.get(Message, message_id)
        if message is None or message.role != MessageRole.USER:
            log.warning("reply job for a message that is not a user message",
                        extra={"message_id": message_id})
            return {"message_id": message_id, "outcome": "no_such_user_message"}
        conversation = db.get(Conversation, message.conversation_id)
        turn = _next_turn(svc, db, conversation.id) if conversation.deleted_at is None else None
    if conversation.deleted_at is not None:
        log.info("conversation deleted before its reply: nothing attached",
                 extra={"conversation_id": conversation.id, "message_id": message_id})
        return {"message_id": message_id, "outcome": "conversation_deleted"}

    _check_session_key(svc, conversation)

    agent = make_agent(svc.settings)
    owner = _run_owner()
    attached: list[int] = []
    outcome = "ok"
    # One message at a time, the earliest pending first: each claimed before the agent is called.
    # A message claimed by another live run: that run goes on with the later ones when done.
    while turn is not None:
        pending_id = turn.message_id
        held = runs.claim(svc, pending_id, owner)
        after = _UNKNOWN
        if held == runs.BUSY:
            outcome = "deferred"
            break
        if held == runs.EXHAUSTED:
            reason = _failure_reason(svc, pending_id)
            _announce_failure(svc, conversation, pending_id, reason)
        elif held != runs.GONE:
            result, after = _generate(svc, agent, conversation, held, turn.seen)
            if result == "attached":
                attached.append(pending_id)
            elif result == "superseded":  # a newer attempt (another run) writes it now, and goes on
                outcome = "superseded"
                break
            elif result == "deleted":
                outcome = "conversation_deleted"
                break
        if after is None:  # the attach saw nothing pending after its reply
            break
        with svc.db.read() as db:
            turn = _next_turn(svc, db, conversation.id)
    return {"message_id": message_id, "conversation_id": conversation.id, "attached_for": attached,
            "outcome": outcome}


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


def history(db, conversation_id: str, upto_message_id: int, budget_chars: int | None = None) -> list[Message]:
    """What the agent is given to answer `upto_message_id`: the persisted transcript up to it, in
    conversational order (each user message followed by its reply: complete, or stopped with its
    partial text). Failed user messages are left out (the agent never answered them, and a retry
    of one is answered in its place); later messages are never included. Over `budget_chars`
    (ARZANI_HISTORY_BUDGET_CHARS), the oldest are left out first: the conversation's first
    message stays, then the newest that fit, the message being answered always."""
    rows = db.scalars(
        select(Message)
        .where(Message.conversation_id == conversation_id,
               or_((Message.role == MessageRole.USER) & (Message.id <= upto_message_id),
                   (Message.role == MessageRole.ASSISTANT) & (Message.reply_to < upto_message_id)))
        .order_by(Message.id)
    ).all()
    replies = {m.reply_to: m for m in rows if m.role == MessageRole.ASSISTANT}
    transcript: list[Message] = []
    for m in rows:
        if m.role != MessageRole.USER or m.status == MessageStatus.FAILED:
            continue
        transcript.append(m)
        if m.id in replies:
            transcript.append(replies[m.id])
    if budget_chars is None or sum(len(m.content) for m in transcript) <= budget_chars:
        return transcript
    first, kept, used = transcript[0], [], len(transcript[0].content)
    for m in reversed(transcript[1:]):
        if kept and used + len(m.content) > budget_chars:
            break
        kept.append(m)
        used += len(m.content)
    return [first, *reversed(kept)]


def _generate(svc: Wiring, agent, conversation: Conversation, held: runs.Claim,
              seen: list[Message]) -> tuple[str, object]:
    """One generation of the reply to `held.message_id`, given the transcript `seen` (read with
    the turn, just before the claim; a reply already there, its message pending: a regeneration).
    (attached, stopped, superseded, deleted or gone (answered meanwhile); and the message pending
    next if the attach saw it, else _UNKNOWN)."""
    user_message_id = held.message_id
    turns = [Turn(m.role, m.content) for m in seen]
    try:
        # A new epoch in the session's event log: pages drop any text of an earlier attempt at
        # this reply. Refused if the message was stopped before its first token.
        generation = events.Generation(svc.events, conversation.session_id, user_message_id, held.attempt)
    except events.GenerationStopped:
        return _after_refusal(svc, conversation, held), _UNKNOWN
    metrics.agent_calls.inc()
    with runs.Lease(svc, held) as lease:
        def on_token(delta: str) -> None:
            if lease.lost.is_set():
                raise events.GenerationStopped(generation.run)
            generation.token(delta)

        try:
            text = agent.reply(conversation.id, turns, on_token=on_token)
        except events.GenerationStopped:
            return _after_refusal(svc, conversation, held), _UNKNOWN
        except Exception as error:
            _record_failure(svc, conversation, user_message_id, _reason(error))
            runs.release(svc, held)
            raise  # RQ retries the job after its interval
    return _attach(svc, conversation, held, text, context_upto=max(m.id for m in seen))


def _after_refusal(svc: Wiring, conversation: Conversation, held: runs.Claim) -> str:
    """The log refused our generation, or our lease was lost: stopped (finish the Stop if its web
    process did not), or superseded by a newer attempt."""
    with svc.db.read() as db:
        row = db.get(Message, held.message_id)
        status, attempts = row.status, row.attempts
    stop_mark = events.stop_mark(held.message_id)
    if status == MessageStatus.PENDING and runs.run_of(svc, conversation.session_id) == stop_mark:
        runs.finish_stop(svc, conversation, held.message_id)
        return "stopped"
    if status == MessageStatus.PENDING and attempts == held.attempt:
        # Refused, yet still ours and not stopped: the run key moved on without a newer claim
        # (it should not). Not a stop: let RQ try again (this attempt is counted).
        runs.release(svc, held)
        raise RuntimeError("the generation lost its place in the session's event log; retrying")
    log.info("generation ended: its message was stopped or taken over",
             extra={"message_id": held.message_id, "status": status, "attempt": held.attempt})
    return "stopped" if status == MessageStatus.STOPPED else "superseded" if status == MessageStatus.PENDING \
        else "gone"


class _NotOurs(Exception):
    """The attach found the message no longer pending under this claim."""


def _store_reply(svc: Wiring, conversation: Conversation, held: runs.Claim, text: str, *,
                 context_upto: int) -> tuple[dict, int | None]:
    """The attach's one write transaction: (the reply as the API shows it, the message pending
    next). _NotOurs if the claim is no longer this run's or the conversation was deleted."""
    user_message_id = held.message_id
    now = utcnow()
    with svc.db.write() as db:
        # First the user message, under this claim only: a Stop (status) or a newer attempt
        # (attempts) since makes this attach commit nothing.
        owned = db.execute(
            update(Message)
            .where(Message.id == user_message_id, Message.status == MessageStatus.PENDING,
                   Message.attempts == held.attempt)
            .values(status=MessageStatus.ANSWERED, claimed_until=None)
        ).rowcount
        if not owned:
            raise _NotOurs()
        current = db.scalars(select(Message).where(Message.reply_to == user_message_id)).one_or_none()
        live = db.execute(
            update(Conversation)
            .where(Conversation.id == conversation.id, Conversation.deleted_at.is_(None))
            .values(message_count=Conversation.message_count + (0 if current else 1), updated_at=now)
        ).rowcount
        if not live:
            # Deleted while the agent was thinking: a deleted conversation stays deleted.
            raise _NotOurs("deleted")
        if current is None:
            reply_message = Message(conversation_id=conversation.id, role=MessageRole.ASSISTANT, content=text,
                                    status=MessageStatus.COMPLETE, reply_to=user_message_id, created_at=now,
                                    context_upto=context_upto)
            db.add(reply_message)
        else:  # Regenerate: the current reply becomes an earlier version, this one the current
            reply_message = replace_reply(db, current, text, MessageStatus.COMPLETE, now, context_upto)
        db.flush()
        # A first reply has no earlier versions: no query for them.
        earlier = earlier_versions(db, [reply_message.id]).get(reply_message.id, ()) if current else ()
        attached = message_json(reply_message, earlier)
        pending_next = runs.next_pending_in(db, conversation.id)
    return attached, pending_next


def _attach(svc: Wiring, conversation: Conversation, held: runs.Claim, text: str, *,
            context_upto: int) -> tuple[str, object]:
    """Attach the reply (attached, superseded, deleted or gone) and, in the same write
    transaction, look which user message is pending next (None: none; _UNKNOWN if not attached)."""
    user_message_id = held.message_id
    try:
        attached, pending_next = _store_reply(svc, conversation, held, text, context_upto=context_upto)
    except _NotOurs as refused:
        if str(refused) == "deleted":
            return "deleted", _UNKNOWN
        log.info("reply not attached: the message was stopped, answered or taken over meanwhile",
                 extra={"message_id": user_message_id, "attempt": held.attempt})
        with svc.db.read() as db:
            status = db.scalar(select(Message.status).where(Message.id == user_message_id))
        return ("superseded" if status == MessageStatus.PENDING else "gone"), _UNKNOWN
    except IntegrityError:
        log.info("reply already attached by another run", extra={"message_id": user_message_id,
                                                                  "conversation_id": conversation.id})
        _mark_answered(svc, user_message_id)
        return "gone", _UNKNOWN
    metrics.replies_attached.inc()
    svc.events.announce(
        svc.events.to_session(conversation.session_id, "reply", reply_to=user_message_id, message=attached),
        svc.events.to_user(conversation.user_id, "reply", conversation_id=conversation.id,
                           session_id=conversation.session_id, message=attached),
        settle=conversation.session_id)
    log.info("reply attached", extra={"message_id": user_message_id, "conversation_id": conversation.id,
                                      "session_id": conversation.session_id,
                                      "proc": process_name(svc.process_kind)})
    return "attached", pending_next


def _failure_reason(svc: Wiring, user_message_id: int) -> str | None:
    with svc.db.read() as db:
        return db.scalar(select(Message.failure_reason).where(Message.id == user_message_id))


def _max_attempts(svc: Wiring) -> int:
    return svc.settings.reply_retries + 1


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
    """A reply exists: its message is answered, unless it was stopped (a stopped reply exists)."""
    with svc.db.write() as db:
        db.execute(update(Message).where(Message.id == user_message_id, Message.status == MessageStatus.PENDING)
                   .values(status=MessageStatus.ANSWERED, claimed_until=None))


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
