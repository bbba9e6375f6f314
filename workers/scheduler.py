"""`arzani cron`: RQ's cron scheduler running the maintenance schedule of workers/cron.py, kept
alive across Redis outages.

`rq cron` exits on the first Redis connection error, and it is what runs the sweeper, reconcile
and cleanup; under a Procfile runner one exiting process stops the others too. This runs the same
`rq.cron.CronScheduler` and, when Redis goes away, says so in one line and starts it again with
backoff (1 s, doubling, at most 30 s) until Redis answers; a stop (SIGTERM, Ctrl-C) still ends it.
Beside it runs the recovery watcher (workers/recovery.py), which does not back off.
"""

from __future__ import annotations

import logging
import time

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq.cron import CronScheduler
from rq.exceptions import SchedulerNotFound

log = logging.getLogger("arzani.scheduler")

SCHEDULE = "workers.cron"
MAX_BACKOFF_S = 30.0


class Scheduler(CronScheduler):
    """RQ's cron scheduler, whose stop survives Redis restarted empty."""

    def register_death(self) -> None:
        # `start()` calls this in a `finally`: after Redis came back empty (its registry entry went
        # with the data) RQ raises SchedulerNotFound there, which replaced the connection error being
        # handled and crashed `arzani cron` (seen in test_fast_recovery's Redis restarts).
        try:
            super().register_death()
        except SchedulerNotFound:
            self.log.info("CronScheduler %s: its registry entry was gone (Redis lost its data)", self.name)


def run(connection: Redis, *, schedule: str = SCHEDULE, sleep=time.sleep, services=None) -> None:
    """Run the scheduler until it is asked to stop; outlive any Redis outage. With `services`
    (a Wiring), the recovery watcher (workers/recovery.py) runs beside it, in a thread of its own
    that ticks through outages every ARZANI_RECOVERY_INTERVAL, whatever this loop's backoff."""
    if services is not None and services.settings.recovery_interval_s:
        from workers.recovery import Recovery

        Recovery(services).start()
    backoff = 1.0
    while True:
        scheduler = Scheduler(connection=connection, logging_level=logging.WARNING)
        scheduler.load_config_from_file(schedule)
        started = time.monotonic()
        try:
            scheduler.start()  # returns on SIGTERM, SIGINT (StopRequested, KeyboardInterrupt)
            return
        except (RedisConnectionError, RedisTimeoutError, OSError) as error:
            if time.monotonic() - started > MAX_BACKOFF_S:
                backoff = 1.0  # it ran a while: a new outage starts the backoff again
            log.warning("cron scheduler lost Redis (%s): starting it again in %.0f s",
                        type(error).__name__, backoff)
        sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF_S)
