"""Recovery in seconds: what `arzani cron` watches every `ARZANI_RECOVERY_INTERVAL` (2 s), beside
its schedule, so that a reply in flight when something dies arrives seconds after, not minutes.

RQ alone is slow at three faults (measured in issue 16): a whole `rq worker` SIGKILLed is noticed
when its started-registry entry expires (its monitoring interval + 60 s) and some worker's
maintenance pass runs (80-140 s); a Redis restarted empty loses every queued job, found only by
the sweeper's age threshold (60 s + its interval); retries RQ had scheduled die with Redis, and
so does the scheduler thread of each worker. This watcher does not wait for those:

- **Redis lost its data** (restarted empty, or failed over to a replica that was behind): a marker
  key it keeps (`arzani:recovery:{QUEUE}:marker`, a day's TTL, renewed every tick) is gone, so it
  sweeps at once (every pending message whose job is missing is enqueued, whatever its age).
- **A reply nobody is writing**: for the earliest pending message of each conversation (the only
  one a run may claim, app/runs.py), a generation claim that lapsed (its lease was not renewed:
  the worker died or froze while writing), or no claim for `ARZANI_STUCK_AFTER` (10 s) since this
  watcher first saw its job leave the queue and RQ's scheduled registry (a worker took it and
  died before starting it). It
  then enqueues a takeover job, a reply job under an id of its own, at most one per message per
  `ARZANI_STUCK_AFTER` seconds (app/jobqueue.py). A takeover that was not needed costs one no-op
  job: the claim lets only one run call the agent.
- **Retries whose time has come** are moved from RQ's scheduled registry to the queue, in case
  no worker's scheduler is alive to do it (RQ's own scheduler does the same; a job moved by both
  at the same instant runs twice, and its claim makes the second run a no-op).

What a tick costs: one SET and one EXPIRE (the marker), an LRANGE of the queue, one indexed query
of the pending messages (ix_messages_pending), one SET per takeover, and two reads of RQ's
scheduled registry (the ids waiting in it; those due).
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from redis.exceptions import RedisError
from rq.scheduler import RQScheduler
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from app import jobqueue
from app.models import Conversation, Message, MessageRole, MessageStatus, utcnow
from app.wiring import Wiring

log = logging.getLogger("arzani.recovery")

MARKER_TTL_S = 86_400
LAPSED_GRACE_S = 1.0
"""A claim is taken for lapsed this long after its lease ended (clocks of two hosts differ a little)."""


def marker_key(queue_name: str) -> str:
    return f"arzani:recovery:{{{queue_name}}}:marker"


class Recovery:
    """One tick at a time (`tick()`), or a daemon thread ticking until stopped (`start()`)."""

    def __init__(self, services: Wiring):
        self.services = services
        self.settings = services.settings
        self.unclaimed_since: dict[int, float] = {}  # message id -> when first seen taken but unclaimed
        self._stop = threading.Event()
        self._failing = False

    # -- one tick -------------------------------------------------------------------------

    def tick(self) -> dict:
        """One look; returns what it did (for tests and logs)."""
        swept = self.sweep_if_redis_lost()
        taken_over = self.take_over_stranded()
        scheduled = self.enqueue_due_retries()
        return {"swept": swept, "taken_over": taken_over, "scheduled": scheduled}

    def sweep_if_redis_lost(self) -> list[int] | None:
        """None while the marker is there; else what the immediate sweep enqueued."""
        from workers.maintenance import sweep_pending

        redis = self.services.rq_redis
        key = marker_key(self.settings.queue_name)
        pipe = redis.pipeline(transaction=False)
        pipe.set(key, int(time.time()), nx=True, ex=MARKER_TTL_S)
        pipe.expire(key, MARKER_TTL_S)
        created, _ = pipe.execute()
        if not created:
            return None
        swept = sweep_pending(self.services, older_than_s=0)
        if swept:
            log.warning("Redis lost its data (restarted empty?): %d pending message(s) enqueued again at once",
                        len(swept), extra={"message_ids": swept[:20]})
        return swept

    def take_over_stranded(self) -> list[int]:
        now = utcnow()
        # Waiting its turn: in the queue, or in RQ's scheduled registry (a retry waiting out its
        # interval, which this watcher or a worker's scheduler enqueues when due). Without the
        # registry, a retry whose interval outlasts ARZANI_STUCK_AFTER was "taken over" early: an
        # agent call ahead of the retry schedule, an attempt counted twice.
        waiting = [*self.services.rq_redis.lrange(self.services.queue.key, 0, -1),
                   *self.services.queue.scheduled_job_registry.get_job_ids()]
        queued = {raw.decode() if isinstance(raw, bytes) else raw for raw in waiting}
        with self.services.db.read() as db:
            rows = db.execute(
                select(Message.id, Message.created_at, Message.conversation_id, Message.claimed_until)
                .join(Conversation, Conversation.id == Message.conversation_id)
                .where(Message.role == MessageRole.USER, Message.status == MessageStatus.PENDING,
                       Conversation.deleted_at.is_(None))
                .order_by(Message.id)
            ).all()
        earliest: dict[str, object] = {}
        for row in rows:
            earliest.setdefault(row.conversation_id, row)
        stuck_after = self.settings.stuck_after_s
        monotonic = time.monotonic()
        taken, seen = [], set()
        for row in earliest.values():
            seen.add(row.id)
            prefix = jobqueue.reply_job_id(self.services.queue.name, row)
            if any(job_id.startswith(prefix) for job_id in queued):
                self.unclaimed_since.pop(row.id, None)  # waiting its turn (queued or scheduled)
                continue
            if row.claimed_until is not None and row.claimed_until > now - timedelta(seconds=LAPSED_GRACE_S):
                self.unclaimed_since.pop(row.id, None)  # being written: its lease is live
                continue
            if row.claimed_until is None:
                first = self.unclaimed_since.setdefault(row.id, monotonic)
                if monotonic - first < stuck_after:
                    continue
            if jobqueue.enqueue_takeover(self.services.queue, self.settings, row):
                taken.append(row.id)
        for gone in set(self.unclaimed_since) - seen:
            del self.unclaimed_since[gone]
        if taken:
            log.warning("replies nobody was writing (a worker died?): takeover jobs enqueued",
                        extra={"message_ids": taken[:20]})
        return taken

    def enqueue_due_retries(self) -> int:
        scheduler = RQScheduler([self.settings.queue_name], connection=self.services.rq_redis,
                                logging_level=logging.WARNING)
        registry = self.services.queue.scheduled_job_registry
        due = len(registry.get_jobs_to_schedule())
        if due:
            scheduler.prepare_registries([self.settings.queue_name])
            scheduler.enqueue_scheduled_jobs()
        return due

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> None:
        interval = self.settings.recovery_interval_s
        while not self._stop.wait(interval):
            try:
                self.tick()
                if self._failing:
                    log.warning("recovery watcher: Redis and the database answer again")
                self._failing = False
            except (RedisError, SQLAlchemyError, OSError) as error:
                if not self._failing:  # one line per outage
                    log.warning("recovery watcher: %s; trying again every %.0f s", type(error).__name__, interval)
                self._failing = True
            except Exception:
                log.exception("recovery watcher: tick failed")

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name="arzani-recovery", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()
