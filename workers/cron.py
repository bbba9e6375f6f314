"""The maintenance schedule, run by `arzani cron` (workers/scheduler.py: RQ's cron scheduler, kept
alive across Redis outages). RQ's cron has no lock: run exactly one (the Procfile's `cron:` line;
`make run` starts one). Every interval is configurable; 0 turns a job off.

| variable | job | default |
| --- | --- | --- |
| `ARZANI_SWEEP_INTERVAL` / `ARZANI_SWEEP_AFTER` | re-enqueue replies of messages pending this long | 60 s / 60 s |
| `ARZANI_RECONCILE_INTERVAL` | `arzani reconcile --fix` | 600 s |
| `ARZANI_CLEANUP_INTERVAL` / `ARZANI_CLEANUP_AFTER` | `arzani cleanup --older-than` | 3600 s / 86400 s |

The values are read and validated by app/config.py (defaults in app/defaults.py).
"""

from __future__ import annotations

from rq import cron

from app.config import Settings
from workers.maintenance import cleanup_job, reconcile_job, sweep_job

settings = Settings.from_env()

if settings.sweep_interval_s:
    cron.register(sweep_job, settings.queue_name, kwargs={"older_than_s": settings.sweep_after_s},
                  interval=settings.sweep_interval_s, job_timeout=300, name="arzani-sweep")
if settings.reconcile_interval_s:
    cron.register(reconcile_job, settings.queue_name, interval=settings.reconcile_interval_s,
                  job_timeout=600, name="arzani-reconcile")
if settings.cleanup_interval_s:
    cron.register(cleanup_job, settings.queue_name, kwargs={"older_than_s": settings.cleanup_after_s},
                  interval=settings.cleanup_interval_s, job_timeout=600, name="arzani-cleanup")
