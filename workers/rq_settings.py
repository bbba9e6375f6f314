"""`rq worker -c workers.rq_settings`: imported once by the worker's parent process, before it
forks a work-horse per job. Importing the job modules here means every horse inherits them
already loaded; without it each horse imports Flask, SQLAlchemy and the app afresh, about 0.7 s
of a job that otherwise takes a few milliseconds (measured with `arzani race`). Nothing here
connects to anything: connections are made lazily, in the horse (workers/jobs.py)."""

from __future__ import annotations

import os

from prometheus_client import values

_WORKER_PID = os.getpid()


class _HorseFile(str):
    """The identifier prometheus-client names a process's metric files by. As a string it is the
    worker's pid, so every horse of this worker writes to the worker's files (one set per worker,
    not one per job). It compares unequal from one process to the next, so that each new horse
    sees "a fork happened" and re-reads the values from the file instead of carrying on from the
    parent's stale copy. The horses of one worker run one at a time, so no two write at once."""

    def __new__(cls, pid: int) -> _HorseFile:
        made = super().__new__(cls, str(_WORKER_PID))
        made.pid = pid
        return made

    def __eq__(self, other: object) -> bool:
        return str.__eq__(self, other) and getattr(other, "pid", None) == self.pid

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = str.__hash__


if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: _HorseFile(os.getpid()))

# After an outage RQ's workers try to reach Redis again after 1, 2, 4... up to 60 s: a worker could
# start again a minute after Redis is back. RQ has no setting for it but this class attribute.
from rq.worker import BaseWorker  # noqa: E402

from app.defaults import RQ_RECONNECT_MAX_S  # noqa: E402

BaseWorker.max_connection_wait_time = RQ_RECONNECT_MAX_S

import workers.jobs  # noqa: E402  (after the value class: metrics are made at import)
import workers.maintenance  # noqa: E402, F401

# The wiring too (an engine and Redis clients, not yet connected): each horse inherits it instead
# of building its own. app/db.py disposes the engine's pool in the child; redis-py pools notice
# the fork by themselves.
workers.jobs.services()
