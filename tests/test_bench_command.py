"""`arzani bench --smoke` runs end to end and prints every figure beside its baseline, each row
with a target showing it and a verdict (the figures themselves are for the README, not for
assertions); the verdict logic itself (scripts/benchfigures.py) is tested without timing anything."""

from __future__ import annotations

import os
import re
import subprocess

import pytest

from scripts.benchfigures import UNSURE, Figures, Target, judge
from tests.stack import BIN

VERDICTS = ("PASS", "MISS", UNSURE)

ROWS_WITH_A_TARGET = (
    "web: round trips of ours (beyond RQ's enqueue)",
    "lock hand-off: losers' extra wait p99",
    "ingest under gunicorn (2 gevent), accepted messages/s",
    "web CPU per accepted message",
    "reply latency p50 (echo agent)",
    "reply latency p99 (echo agent)",
    "replies/s, 4 rq workers",
    "replies/s, 2 rq workers",
    "replies/s, 1 rq worker ",
    "race load: duplicated, misplaced, missing or refused",
    "agent calls / user message, burst of 10",
    "generations started (start events) / user message",
    "Redis memory per session: all",
    "session hashes without a TTL",
    "POST p99 with 50 open event streams",
    "Redis connections (2 web processes)",
    "open event streams held",
    "sidebar page",
)

ROWS_WITHOUT_A_TARGET = (
    "web: Redis round trips / message", "web: Redis commands / message", "end to end: round trips / message",
    "end to end: commands / message", "lock hand-off: losers' extra wait p50",
    "race load (", "Redis memory per session: hash with its fence",
    "Redis memory per session: its other keys",
    "event log: Redis bytes per token",
)


def _table(stdout: str) -> dict[str, list[str]]:
    """The printed table, by figure name: its cells (columns are two spaces or more apart)."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("figure "))
    return {cells[0]: cells for cells in (re.split(r"\s{2,}", line.strip()) for line in lines[start + 1:] if line)}


@pytest.mark.slow
def test_bench_prints_every_figure(tmp_path):
    result = subprocess.run([str(BIN / "arzani"), "bench", "--smoke"], capture_output=True, text=True,
                            timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    table = _table(result.stdout)
    header = re.split(r"\s{2,}", next(line for line in result.stdout.splitlines() if line.startswith("figure ")))
    assert header == ["figure", "value", "baseline", "ratio", "spread (rounds)", "target", "verdict"]
    for figure in ROWS_WITH_A_TARGET:
        rows = [cells for name, cells in table.items() if name.startswith(figure)]
        assert rows, f"no row {figure!r} in\n{result.stdout}"
        cells = rows[0]
        assert len(cells) == 7, cells
        assert cells[5] != "-", cells
        assert cells[6] in VERDICTS, cells
    for figure in ROWS_WITHOUT_A_TARGET:
        assert any(name.startswith(figure) for name in table), f"no row {figure!r} in\n{result.stdout}"
    assert all("nan" not in cell and "inf" not in cell for cells in table.values() for cell in cells[1:5])
    # Timed rows show their rounds' spread.
    ingest = table["ingest under gunicorn (2 gevent), accepted messages/s"]
    assert re.fullmatch(r"[0-9.,]+\.\.[0-9.,]+x \(2\)", ingest[4]), ingest
    # Quiet: progress lines and the log file's path, not gunicorn's or the workers' thousands of lines.
    assert "logs (RQ's, gunicorn's and ours): " in result.stderr
    assert len(result.stderr.splitlines()) < 20, result.stderr[-3000:]


def test_the_baseline_endpoint_validates_like_the_api(services, api):
    """The bench's baseline parses its body with the API's own function: bad input is the API's error."""
    from app import create_app
    from scripts.bench_app import bp

    app = create_app({"TESTING": True}, services=services)
    app.register_blueprint(bp)
    answer = app.test_client().post("/bench/baseline/s-12345678/c-1", json={}, headers=api.headers)
    assert answer.status_code == 422
    assert answer.json["error"]["code"] == "invalid_body"


# -- the verdicts, without timing anything ------------------------------------------------------

def test_targets_parse_bounds_on_the_value_or_on_the_ratio():
    assert Target.parse("<= 5 ms") == Target("<=", 5.0, False, "<= 5 ms")
    assert Target.parse(">= 0.9x") == Target(">=", 0.9, True, ">= 0.9x")
    assert Target.parse("<= 2x the 10,000 figure").of_ratio
    assert Target.parse(">= 2,000").bound == 2000
    assert Target.parse("exactly 1.00").op == "=="
    assert Target.parse("<= 138 (the pools' bound, 2 x 10 a process)").bound == 138
    assert Target.parse("") is None
    assert Target.parse("a small constant per process") is None


def test_a_spread_within_the_gap_gives_pass_or_miss():
    at_most = Target.parse("<= 1.3x")
    assert judge(at_most, 1.1, (1.05, 1.15)) == "PASS"
    assert judge(at_most, 1.5, (1.45, 1.6)) == "MISS"
    at_least = Target.parse(">= 0.9x")
    assert judge(at_least, 0.95, (0.93, 0.97)) == "PASS"
    assert judge(at_least, 0.7, (0.6, 0.8)) == "MISS"


def test_a_spread_larger_than_the_gap_is_unsure():
    at_least = Target.parse(">= 0.9x")
    # every round above the target, but they scatter more than the median clears it by
    assert judge(at_least, 0.95, (0.91, 1.02)) == UNSURE
    assert judge(at_least, 0.85, (0.7, 0.95)) == UNSURE
    assert judge(Target.parse("<= 5 ms"), 4.0, (2.0, 6.5)) == UNSURE


def test_an_exact_figure_has_no_spread_and_no_unsure():
    assert judge(Target.parse("<= 2"), 2.0) == "PASS"
    assert judge(Target.parse("<= 300"), 357.4) == "MISS"
    exactly = Target.parse("exactly 1.00")
    assert judge(exactly, 1.0, (1.0, 1.0)) == "PASS"
    assert judge(exactly, 1.0, (1.0, 1.1)) == "MISS"  # one round called the agent twice for a message


def test_rounds_give_the_median_ratio_its_spread_and_a_verdict():
    figures = Figures()
    verdict = figures.add_rounds("ingest", [90.0, 100.0, 120.0], [100.0, 100.0, 100.0], "msg/s", ">= 0.9x")
    row = figures.rows[-1]
    assert (row.value, row.baseline, row.ratio, row.spread) == ("100.00 msg/s", "100.00 msg/s", "1.00x",
                                                                "0.95..1.10x (3)")
    assert verdict == row.verdict == UNSURE  # the spread (q1..q3: 0.15) exceeds the gap (0.10)
    figures.add_rounds("p99", [3.0, 3.5, 4.0], [40.0, 50.0, 60.0], "ms", "<= 5 ms")
    assert (figures.rows[-1].spread, figures.rows[-1].verdict) == ("3.25..3.75 ms (3)", "PASS")


def test_one_outlying_round_of_five_does_not_make_a_row_unsure():
    """A neighbour's burst in one round: the median and the interquartile range ignore it."""
    figures = Figures()
    verdict = figures.add_rounds("ingest", [100.0, 101.0, 99.0, 100.0, 40.0], [100.0] * 5, "msg/s", ">= 0.9x")
    assert (figures.rows[-1].spread, verdict) == ("0.99..1.00x (5)", "PASS")
    verdict = figures.add_rounds("ingest", [60.0, 130.0, 80.0, 110.0, 95.0], [100.0] * 5, "msg/s", ">= 0.9x")
    assert verdict == UNSURE  # the rounds scatter as a whole: q1..q3 is 0.80..1.10


def test_add_keeps_its_signature_and_a_verdict_can_follow_another():
    figures = Figures()
    figures.add("memory", 357.0, 134.0, "bytes", "<= 300")
    figures.add("no target", 1.0, None, "s")
    figures.add("held", 2000, None, "streams", ">= 2,000", verdict=UNSURE)
    assert [row.verdict for row in figures.rows] == ["MISS", "-", UNSURE]
    assert figures.verdicts() == {"memory": "MISS", "held": UNSURE}


def test_exactly_n_in_rounds_needs_every_round_to_give_n():
    figures = Figures()
    assert figures.add_rounds("calls", [1.0, 1.0, 1.1, 1.0, 1.0], None, "calls", "exactly 1.00") == "MISS"
    assert figures.add_rounds("calls", [1.0] * 5, None, "calls", "exactly 1.00") == "PASS"


def test_ingest_windows_take_turns_mirrored():
    from scripts.bench import mirrored

    assert mirrored(0, "A", "B", pairs=4) == ["A", "B", "B", "A", "A", "B", "B", "A"]
    assert mirrored(1, "A", "B", pairs=2) == ["B", "A", "A", "B"]
    for r in range(3):  # every round measures each side equally often
        order = mirrored(r, "A", "B", pairs=24)
        assert order.count("A") == order.count("B") == 24


def test_a_window_counts_only_its_own_side_within_it():
    """The load never stops: a window counts the answers of its side that came within it; the
    other side's answers in it (sent before the switch, answered after the settling time) are
    told apart, and answers before or after it are not counted at all."""
    from scripts.bench import SteadyLoad

    ours, baseline = object(), object()
    load = SteadyLoad(0, "token", {ours: None, baseline: None}, threads=2)  # no thread started
    load.answers[0] += [(baseline, 0.9), (ours, 1.0), (ours, 1.5), (baseline, 1.6), (ours, 2.0)]
    load.answers[1] += [(ours, 1.2), (ours, 1.99), (baseline, 2.5)]
    assert load.count(ours, 1.0, 2.0) == (4, 1)
    assert load.count(baseline, 2.0, 3.0) == (1, 1)
    assert load.count(baseline, 3.0, 4.0) == (0, 0)


def test_a_steady_load_posts_to_the_side_a_window_names_and_counts_its_answers():
    """Against a real (tiny) HTTP server: the threads post to the path of the window's side, the
    window counts that side's answers, and the other side's are told apart; the load stops when
    the `with` ends; a second window on the other side counts the other path's answers."""
    import http.server
    import threading

    from scripts.bench import SteadyLoad

    seen = {"/a": 0, "/b": 0}
    seen_lock = threading.Lock()  # the server answers on a thread per connection

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as gunicorn

        def do_POST(self):  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers["Content-Length"]))
            with seen_lock:
                seen[self.path] += 1
            self.send_response(202)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    a, b = (lambda n: "/a"), (lambda n: "/b")
    try:
        with SteadyLoad(server.server_address[1], "token", {a: a, b: b}, threads=4) as load:
            first = load.window(a, 0.2, 0.0, os.getpid())
            second = load.window(b, 0.2, 0.05, os.getpid())
            with pytest.raises(RuntimeError):  # nothing to count while the load runs
                load.count(a, 0, 1)
    finally:
        server.shutdown()
    assert not load.errors
    ours, other = load.count(a, first[0], first[1])
    assert ours > 0 and other == 0  # the first window had no settling: nothing else was sent yet
    ours, _other = load.count(b, second[0], second[1])
    assert ours > 0
    assert seen["/a"] > 0 and seen["/b"] > 0
    total = sum(len(answers) for answers in load.answers)
    assert total == seen["/a"] + seen["/b"]  # every answer recorded once, by the thread that got it


def test_a_steady_load_on_a_server_that_is_gone_reports_errors():
    """Nothing listening: every thread's first request fails, is recorded, and the thread ends
    (bench_ingest raises on any recorded error rather than print figures of a broken load)."""
    import socket

    from scripts.bench import SteadyLoad

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    side = lambda n: "/x"  # noqa: E731
    with SteadyLoad(port, "token", {side: side}, threads=3) as load:
        load.window(side, 0.1, 0.0, os.getpid())
    assert len(load.errors) == 3 and all("ConnectionRefused" in error for error in load.errors)
    assert load.count(side, 0, float("inf")) == (0, 0)
