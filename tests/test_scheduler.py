"""`arzani cron` (the Procfile's `cron:`) outlives a Redis outage (issue 11, hole 2): `rq cron`
exits on the first connection error, and nothing would run the sweeper again."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis as redis_lib
from rq import Queue

from tests.helpers import wait_for
from tests.stack import BIN

pytestmark = pytest.mark.slow


def sweeps_queued(redis_url: str, queue_name: str) -> int:
    client = redis_lib.Redis.from_url(redis_url)
    try:
        queue = Queue(queue_name, connection=client)
        return sum(1 for job in queue.get_jobs() if job.func_name == "workers.maintenance.sweep_job")
    except redis_lib.ConnectionError:
        return 0
    finally:
        client.close()


def test_the_cron_scheduler_outlives_a_redis_outage(make_stack, redis_server, redis_url):
    stack = make_stack(ARZANI_SWEEP_INTERVAL="1", ARZANI_RECONCILE_INTERVAL="0", ARZANI_CLEANUP_INTERVAL="0")
    cron = stack._spawn("cron", [str(BIN / "arzani"), "cron"])
    queue_name = stack.env["ARZANI_QUEUE"]
    wait_for(lambda: sweeps_queued(redis_url, queue_name) >= 1, 30, "the first scheduled sweep")
    redis_server.stop()
    wait_for(lambda: "lost Redis" in stack.log("cron"), 30, "the scheduler to notice Redis is gone")
    wait_for(lambda: stack.log("cron").count("lost Redis") >= 2, 30, "a second try while Redis is still away")
    assert cron.poll() is None, stack.log("cron")
    redis_server.start()  # back, and empty
    wait_for(lambda: sweeps_queued(redis_url, queue_name) >= 1, 60, "a sweep scheduled after the outage")
    assert cron.poll() is None, stack.log("cron")


def test_the_scheduler_stops_cleanly_after_redis_lost_its_data(redis_url):
    """`start()` registers the scheduler's death in a `finally`; after Redis restarted empty RQ's
    own CronScheduler raised SchedulerNotFound there, replacing the connection error `arzani cron`
    handles: it crashed instead of starting again."""
    from workers.scheduler import Scheduler

    client = redis_lib.Redis.from_url(redis_url)
    scheduler = Scheduler(connection=client)
    scheduler.register_birth()
    client.flushall()  # what a restart without persistence leaves
    scheduler.register_death()  # no SchedulerNotFound


def test_a_worker_connection_rides_out_a_redis_restart(redis_server, redis_url):
    """The Procfile's `rq worker --connection-class workers.rq_settings.Redis`: a command sent while
    Redis is down for two seconds is sent again until it answers (redis-py's default may give up
    within a fraction of a second)."""
    import threading
    import time

    from workers.rq_settings import Redis

    assert "--connection-class workers.rq_settings.Redis" in (Path(__file__).parents[1] / "Procfile").read_text()
    client = Redis.from_url(redis_url)
    client.ping()
    answers = []
    redis_server.stop()
    # The command from a thread; the restart from this one (the server dies with the thread that
    # started it: PR_SET_PDEATHSIG).
    sender = threading.Thread(target=lambda: answers.append(client.hset("arzani:test:rides-out", "state", "idle")))
    sender.start()
    time.sleep(2)  # the outage's length (the fault itself, not a wait for a state)
    assert sender.is_alive()  # still trying
    redis_server.start()
    sender.join(30)
    assert answers == [1]
