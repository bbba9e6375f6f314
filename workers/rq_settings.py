"""`rq worker -c workers.rq_settings`: imported once by the worker's parent process, before it
forks a work-horse per job. Importing the job modules here means every horse inherits them
already loaded; without it each horse imports Flask, SQLAlchemy and the app afresh, about 0.7 s
of a job that otherwise takes a few milliseconds (measured with `arzani race`). Nothing here
connects to anything: connections are made lazily, in the horse (workers/jobs.py)."""

import workers.jobs
import workers.maintenance  # noqa: F401

# The wiring too (an engine and Redis clients, not yet connected): each horse inherits it instead
# of building its own. app/db.py disposes the engine's pool in the child; redis-py pools notice
# the fork by themselves.
workers.jobs.services()
