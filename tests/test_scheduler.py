"""`arzani cron` (the Procfile's `cron:`) outlives a Redis outage (issue 11, hole 2): `rq cron`
exits on the first connection error, and nothing would run the sweeper again."""

from __future__ import annotations

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
