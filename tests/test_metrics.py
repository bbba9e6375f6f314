"""GET /metrics adds up every process: gunicorn workers and RQ work-horses (multi-process mode)."""

from __future__ import annotations

import re
import time

import pytest

from tests.helpers import new_session_id

pytestmark = pytest.mark.slow


def scrape(stack) -> dict[str, float]:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    values = {}
    for line in text.splitlines():
        match = re.match(r"^(arzani_[a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)$", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def test_metrics_add_up_across_web_processes_and_work_horses(make_stack, tmp_path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    stack = make_stack(PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    stack.start_web(workers=3)
    token = stack.create_user("metered")
    for name in ("w1", "w2"):
        stack.start_worker(name, "-c", "workers.rq_settings")
    sessions = [new_session_id() for _ in range(4)]
    for n in range(3):
        for session_id in sessions:
            status, _ = stack.request("POST", f"/api/sessions/{session_id}/messages",
                                      {"content": f"count me {n}"}, token=token)
            assert status == 202
    deadline = time.monotonic() + 60

    def jobs_run(values):
        return sum(v for k, v in values.items() if k.startswith("arzani_reply_jobs_total{"))

    # Replies first, then every job ends (a run may answer its session's later messages too: their
    # own jobs then find nothing left, and end after the replies are attached).
    while (values := scrape(stack)).get("arzani_replies_attached_total", 0) < 12 or jobs_run(values) < 12:
        assert time.monotonic() < deadline, values
        time.sleep(0.2)
    for _ in range(6):  # whichever gunicorn worker answers, it reports every process's counts
        values = scrape(stack)
        assert values["arzani_conversations_created_total"] == 4
        assert values["arzani_messages_accepted_total"] == 12
        assert values["arzani_replies_attached_total"] == 12
        # a job that found its message's reply being written by another run leaves ("deferred")
        assert jobs_run(values) == 12
        assert set(k for k in values if k.startswith("arzani_reply_jobs_total{")) <= {
            'arzani_reply_jobs_total{outcome="ok"}', 'arzani_reply_jobs_total{outcome="deferred"}'}
        assert values["arzani_reply_job_seconds_count"] == 12
        assert values["arzani_lock_acquisitions_total"] == 4
    # 12 jobs ran in 12 work-horses, but horses write under their worker's pid: the files
    # name the 3 web workers, the 2 rq workers and the 2 `arzani` commands that set up the
    # database and the user, not one process per job.
    writers = {re.sub(r"^[a-z]+_", "", p.stem) for p in metrics_dir.glob("*.db")}
    assert len(writers) <= 3 + 2 + 2, writers
