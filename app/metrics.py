"""Prometheus metrics, added up across every process (prometheus-client's multi-process mode).

With PROMETHEUS_MULTIPROC_DIR set (make run sets it; a deployment points every web and worker
process of a host at one directory), each process writes its counters to files there and
GET /metrics sums them: gunicorn workers and RQ work-horses add up. A work-horse is a new process
per job; so that a busy worker does not leave one file per job, its horses write under their
worker's pid (workers/rq_settings.py): one worker's horses never run at the same time, and each
new horse reopens the file and carries on from what the last one wrote.

Without the directory, each process counts for itself (fine for tests and one-process runs).
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest

conversations_created = Counter("arzani_conversations_created", "Conversations created")
messages_accepted = Counter("arzani_messages_accepted", "User messages accepted (committed)")
lock_acquisitions = Counter("arzani_lock_acquisitions", "Session lock acquisitions")
lock_waits = Counter("arzani_lock_waits", "Resolutions that lost the race and waited for the holder")
lock_wait_seconds = Histogram("arzani_lock_wait_seconds", "Time a loser waited for the lock holder",
                              buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 10))
unique_constraint_saves = Counter("arzani_unique_constraint_saves",
                                  "Second conversations kept out by the database's unique index")
session_key_misses = Counter("arzani_session_key_misses", "Sessions resolved from the database (key missing)")
session_key_repairs = Counter("arzani_session_key_repairs", "Session keys rewritten from the database")
session_mismatches = Counter("arzani_session_mismatches", "Session keys that disagreed with the database",
                             ["side"])
jobs = Counter("arzani_reply_jobs", "Reply jobs run", ["outcome"])
job_seconds = Histogram("arzani_reply_job_seconds", "Reply job duration",
                        buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
replies_attached = Counter("arzani_replies_attached", "Replies attached")
replies_stopped = Counter("arzani_replies_stopped", "Replies stopped (Stop, or an interrupting message)")
agent_calls = Counter("arzani_agent_calls", "Agent calls started (one per generation)")
reply_failures = Counter("arzani_reply_failures", "User messages marked failed after the last retry")


def render() -> tuple[bytes, str]:
    """The exposition of every process's metrics (or this process's, outside multi-process mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
