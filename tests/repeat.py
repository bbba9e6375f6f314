"""Hunt flaky tests: run chosen tests N times, each run a fresh pytest process, and print how
often each test failed.

    python -m tests.repeat -n 20 tests/faults                 # or: make repeat N=20 TESTS=tests/faults
    python -m tests.repeat -n 20 --load 2 tests/faults -k sqlite

`--load K` runs K CPU-bound processes beside the runs (a busy CI machine). Each run's output and
its pytest temporary directory (worker and gunicorn logs of the stack tests) are kept under
`--out` when the run failed, deleted when it passed. Exit status 1 if any test failed at least once.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

_BURN = "while True: pass"


def _outcomes(junit_xml: Path) -> dict[str, str]:
    """test id -> passed | failed | skipped, from one run's JUnit XML."""
    if not junit_xml.exists():
        return {}
    outcomes = {}
    for case in ET.parse(junit_xml).iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        if case.find("failure") is not None or case.find("error") is not None:
            outcomes[test_id] = "failed"
        elif case.find("skipped") is not None:
            outcomes[test_id] = "skipped"
        else:
            outcomes[test_id] = "passed"
    return outcomes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--runs", type=int, default=10, help="how many pytest runs (default 10)")
    parser.add_argument("--load", type=int, default=0, help="CPU-bound processes to run beside (default 0)")
    parser.add_argument("--out", type=Path, default=None, help="where failed runs' output is kept")
    parser.add_argument("--table", action="store_true", help="print every test's failures/runs, not only the flaky")
    parser.add_argument("pytest_args", nargs=argparse.REMAINDER, help="tests and pytest options")
    args = parser.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="arzani-repeat-"))
    out.mkdir(parents=True, exist_ok=True)
    pytest_args = [a for a in args.pytest_args if a != "--"]

    burners = [subprocess.Popen([sys.executable, "-c", _BURN]) for _ in range(args.load)]
    runs: Counter[str] = Counter()
    failures: Counter[str] = Counter()
    broken_runs = 0
    started = time.monotonic()
    try:
        for n in range(1, args.runs + 1):
            run_dir = out / f"run-{n:03d}"
            run_dir.mkdir(exist_ok=True)
            t0 = time.monotonic()
            with open(run_dir / "pytest.log", "wb") as log:
                code = subprocess.call(
                    [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                     f"--junitxml={run_dir / 'junit.xml'}", f"--basetemp={run_dir / 'tmp'}", *pytest_args],
                    stdout=log, stderr=subprocess.STDOUT)
            outcomes = _outcomes(run_dir / "junit.xml")
            failed = sorted(t for t, o in outcomes.items() if o == "failed")
            for test_id, outcome in outcomes.items():
                if outcome != "skipped":
                    runs[test_id] += 1
                if outcome == "failed":
                    failures[test_id] += 1
            # Exit 5 is "no tests collected": a wrong selection, not a flake.
            if code not in (0, 1) or (code == 1 and not failed):
                broken_runs += 1
            verdict = "ok" if code == 0 else f"exit {code}: " + (", ".join(failed) or "see pytest.log")
            print(f"run {n}/{args.runs}  {time.monotonic() - t0:6.1f} s  {verdict}", flush=True)
            if code == 0:
                shutil.rmtree(run_dir)
    finally:
        for burner in burners:
            burner.kill()
            burner.wait()

    print(f"\n{len(runs)} tests, {args.runs} runs, load {args.load}, {time.monotonic() - started:.0f} s; "
          f"failed runs kept in {out}")
    for test_id in sorted(runs):
        if failures[test_id] or args.table:
            print(f"  {'FLAKY' if failures[test_id] else 'ok':<5}  {failures[test_id]}/{runs[test_id]}  {test_id}")
    total = sum(failures.values())
    broke = f"; {broken_runs} runs broke" if broken_runs else ""
    print(f"failures: {total} in {sum(runs.values())} test runs{broke}")
    return 1 if total or broken_runs else 0


if __name__ == "__main__":
    sys.exit(main())
