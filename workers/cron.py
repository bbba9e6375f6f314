"""`rq cron workers.cron`: the maintenance schedule. RQ's cron has no lock: run exactly one
(the Procfile's `cron:` line; `make run` starts one). Every interval is configurable; 0 turns a
job off.

| variable | job | default |
| --- | --- | --- |
| `ARZANI_SWEEP_INTERVAL` / `ARZANI_SWEEP_AFTER` | re-enqueue replies of messages pending this long | 60 s / 60 s |
| `ARZANI_RECONCILE_INTERVAL` | `arzani reconcile --fix` | 600 s |
| `ARZANI_CLEANUP_INTERVAL` / `ARZANI_CLEANUP_AFTER` | `arzani cleanup --older-than` | 3600 s / 86400 s |
"""

from __future__ import annotations

import os

from rq import cron

from workers.maintenance import DEFAULT_SWEEP_AFTER_S, cleanup_job, reconcile_job, sweep_job


def _seconds(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


QUEUE = os.environ.get("ARZANI_QUEUE") or "arzani"

if _seconds("ARZANI_SWEEP_INTERVAL", 60):
    cron.register(sweep_job, QUEUE, kwargs={"older_than_s": _seconds("ARZANI_SWEEP_AFTER", DEFAULT_SWEEP_AFTER_S)},
                  interval=_seconds("ARZANI_SWEEP_INTERVAL", 60), job_timeout=300, name="arzani-sweep")
if _seconds("ARZANI_RECONCILE_INTERVAL", 600):
    cron.register(reconcile_job, QUEUE, interval=_seconds("ARZANI_RECONCILE_INTERVAL", 600),
                  job_timeout=600, name="arzani-reconcile")
if _seconds("ARZANI_CLEANUP_INTERVAL", 3600):
    cron.register(cleanup_job, QUEUE, kwargs={"older_than_s": _seconds("ARZANI_CLEANUP_AFTER", 86400)},
                  interval=_seconds("ARZANI_CLEANUP_INTERVAL", 3600), job_timeout=600, name="arzani-cleanup")
