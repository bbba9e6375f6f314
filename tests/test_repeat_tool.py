"""`make repeat` (tests/repeat.py) counts failures per test over fresh pytest runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # four pytest processes


def test_repeat_counts_the_failures_of_each_test(tmp_path):
    counter = tmp_path / "runs"
    (tmp_path / "test_sample.py").write_text(f'''
from pathlib import Path

def test_steady():
    pass

def test_fails_every_other_run():
    counter = Path({str(counter)!r})
    runs = int(counter.read_text()) + 1 if counter.exists() else 1
    counter.write_text(str(runs))
    assert runs % 2 == 0
''')
    result = subprocess.run([sys.executable, "-m", "tests.repeat", "-n", "4", "--table", "--out", str(tmp_path / "out"),
                             "--", str(tmp_path / "test_sample.py")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    # The id's prefix (the module's path as JUnit names it) depends on where pytest ran.
    assert re.search(r"FLAKY  2/4  \S*test_sample::test_fails_every_other_run$", result.stdout, re.M)
    assert re.search(r"ok     0/4  \S*test_sample::test_steady$", result.stdout, re.M)
    assert "failures: 2 in 8 test runs" in result.stdout
    kept = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert kept == ["run-001", "run-003"]  # the failed runs' output is kept, the passed ones' removed
