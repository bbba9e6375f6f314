"""`arzani bench --smoke` runs end to end and prints every figure beside its baseline
(the figures themselves are for the README, not for assertions)."""

from __future__ import annotations

import subprocess

import pytest

from tests.stack import BIN

pytestmark = pytest.mark.slow


def test_bench_prints_every_figure(tmp_path):
    result = subprocess.run([str(BIN / "arzani"), "bench", "--smoke"], capture_output=True, text=True,
                            timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line and not line.startswith("figure")]
    names = " | ".join(rows)
    for figure in ("round trips / message", "commands / message", "losers' extra wait p99",
                   "accepted messages/s", "reply latency p50", "memory per session", "sidebar page",
                   "open event streams", "Redis connections (4 web processes)", "event log: Redis bytes per token",
                   "agent calls / user message, burst of 10"):
        assert figure in names, result.stdout
    assert all(row.split()[-1] not in ("nan", "inf") for row in rows)
    # Quiet: progress lines and the log file's path, not the workers' thousands of lines.
    assert "logs (RQ's and ours): " in result.stderr
    assert len(result.stderr.splitlines()) < 15, result.stderr[-3000:]


def test_the_baseline_endpoint_validates_like_the_api(services, api):
    """The bench's baseline parses its body with the API's own function: bad input is the API's error."""
    from app import create_app
    from scripts.bench_app import bp

    app = create_app({"TESTING": True}, services=services)
    app.register_blueprint(bp)
    answer = app.test_client().post("/bench/baseline/s-12345678/c-1", json={}, headers=api.headers)
    assert answer.status_code == 422
    assert answer.json["error"]["code"] == "invalid_body"
