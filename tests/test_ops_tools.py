"""Operators' RQ tools against a running deployment: `rq info` and rq-dashboard."""

from __future__ import annotations

import subprocess
import time
import uuid

import pytest

from tests.stack import BIN, Stack

pytestmark = pytest.mark.slow


@pytest.fixture
def deployment(redis_url, tmp_path):
    stack = Stack(redis_url, f"sqlite:///{tmp_path / 'ops.db'}", tmp_path)
    stack.init_db()
    stack.start_web(workers=1, threads=2)
    token = stack.create_user("ops")
    stack.start_worker("ops-worker", "-c", "workers.rq_settings")
    for n in range(3):
        assert stack.request("POST", f"/api/sessions/{uuid.uuid4().hex}/messages", {"content": f"m{n}"},
                             token=token)[0] == 202
    yield stack
    stack.close()


def test_rq_info_shows_the_queue_and_the_worker(deployment):
    deadline = time.monotonic() + 30
    while True:
        out = subprocess.run([str(BIN / "rq"), "info", "--url", deployment.env["REDIS_URL"], "--raw"],
                             capture_output=True, text=True, timeout=30).stdout
        if "queue arzani 0" in out and "ops-worker" in out:
            break
        assert time.monotonic() < deadline, out
        time.sleep(0.3)
    assert "1 workers" in out or "worker ops-worker" in out


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
