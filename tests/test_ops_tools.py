"""Operators' RQ tools against a running deployment: `rq info` and rq-dashboard."""

from __future__ import annotations

import re
import subprocess
import time
import uuid

import pytest

from tests.stack import BIN

pytestmark = pytest.mark.slow


@pytest.fixture
def deployment(make_stack):
    stack = make_stack()
    stack.start_web(workers=1)
    token = stack.create_user("ops")
    stack.start_worker("ops-worker", "-c", "workers.rq_settings")
    for n in range(3):
        assert stack.request("POST", f"/api/sessions/{uuid.uuid4().hex}/messages", {"content": f"m{n}"},
                             token=token)[0] == 202
    return stack


def test_rq_info_shows_the_queue_and_the_worker(deployment):
    # An empty queue with 3 finished jobs, and the worker listed on our queue with the 3 reply
    # jobs it ran (`worker NAME (HOST IP PID) STATE QUEUES. jobs: N finished, M failed`).
    queue = re.compile(r"^queue arzani 0, 0 executing, 3 finished, 0 failed$", re.MULTILINE)
    worker = re.compile(r"^worker ops-worker\S* \(.*\) \w+ arzani\. jobs: 3 finished, 0 failed$", re.MULTILINE)
    deadline = time.monotonic() + 30
    while True:
        out = subprocess.run([str(BIN / "rq"), "info", "--url", deployment.env["REDIS_URL"], "--raw"],
                             capture_output=True, text=True, timeout=30).stdout
        if queue.search(out) and worker.search(out):
            break
        assert time.monotonic() < deadline, out
        time.sleep(0.3)


def test_rq_dashboard_mounted_on_the_same_redis_sees_the_jobs(deployment):
    import rq_dashboard
    from flask import Flask

    dashboard = Flask("dashboard")
    dashboard.config.from_object(rq_dashboard.default_settings)
    dashboard.config["RQ_DASHBOARD_REDIS_URL"] = deployment.env["REDIS_URL"]
    rq_dashboard.web.setup_rq_connection(dashboard)
    dashboard.register_blueprint(rq_dashboard.blueprint, url_prefix="/rq")
    client = dashboard.test_client()
    deadline = time.monotonic() + 30
    while True:
        queues = {q["name"]: q for q in client.get("/rq/0/data/queues.json").json["queues"]}
        if queues.get("arzani", {}).get("finished_job_registry_count") == 3:
            break
        assert time.monotonic() < deadline, queues
        time.sleep(0.3)
    workers = client.get("/rq/0/data/workers.json").json["workers"]
    assert any("ops-worker" in w["name"] for w in workers)
