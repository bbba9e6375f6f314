"""`rq cron workers.cron`: the maintenance schedule. RQ's cron has no lock: run exactly one
(the Procfile's `cron:` line; `make run` starts one)."""

from __future__ import annotations

import os

from rq import cron

from workers.maintenance import DEFAULT_SWEEP_AFTER_S, sweep_job

QUEUE = os.environ.get("ARZANI_QUEUE") or "arzani"
SWEEP_INTERVAL_S = int(os.environ.get("ARZANI_SWEEP_INTERVAL", "60"))
SWEEP_AFTER_S = int(os.environ.get("ARZANI_SWEEP_AFTER", str(DEFAULT_SWEEP_AFTER_S)))

cron.register(sweep_job, QUEUE, kwargs={"older_than_s": SWEEP_AFTER_S}, interval=SWEEP_INTERVAL_S,
              job_timeout=300, name="arzani-sweep")
