"""The code's shape, held by tests: who may import what, and who owns the session hash."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def sources(*folders: str):
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "migrations" not in path.parts:
                yield path, path.read_text()


def test_only_the_rq_seam_in_app_imports_rq():
    importers = [str(path.relative_to(ROOT)) for path, text in sources("app")
                 if re.search(r"^\s*(from rq[ .]|import rq\b)", text, re.M)]
    assert importers == ["app/jobqueue.py"]


def test_app_never_imports_workers():
    assert [str(path.relative_to(ROOT)) for path, text in sources("app")
            if re.search(r"^\s*(from workers|import workers)", text, re.M)] == []


def test_the_session_hash_is_read_and_written_only_by_the_session_service():
    fields = "cid|uid|seen|fence"
    touching = re.compile(rf"\.h(?:get|set|setnx|mget|del)\([^)]*[\"'](?:{fields})[\"']")
    offenders = [str(path.relative_to(ROOT)) for path, text in sources("app", "workers", "scripts")
                 if path.name != "sessions.py" and touching.search(text)]
    assert offenders == []
