"""docs/API.md cannot drift from the app: its routes table, message fields, statuses, event names
and error codes are compared with /openapi.json and the code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from app import errors, ratelimit

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "API.md"


def table(heading: str) -> list[list[str]]:
    """The rows (cells stripped) of the first table after `heading`."""
    text = REFERENCE.read_text()
    section = text[text.index(heading):]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.startswith("|") and not set(line) <= set("|- "):
            rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows[1:]  # without the header


def test_the_routes_table_is_the_app_and_its_answers(client):
    document = client.get("/openapi.json").json
    documented = {}
    for method, path, success, failures, _ in table("## Routes"):
        documented[(method.lower(), path)] = (set(success.split()), set(failures.split()))
    served = {}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            codes = set(operation["responses"])
            served[(method, path)] = ({c for c in codes if c.startswith("2")},
                                      {c for c in codes if not c.startswith("2")})
    assert documented == served


def test_message_fields_and_statuses_are_the_schemas(client):
    schema = client.get("/openapi.json").json["components"]["schemas"]["Message"]
    assert {row[0] for row in table("## A message")} == set(schema["properties"])
    statuses = set(re.findall(r"`(\w+)`", REFERENCE.read_text().split("Statuses:")[1].split("\n\n")[0]))
    assert set(schema["properties"]["status"]["enum"]) <= statuses


def test_event_names_are_the_streams(client):
    """The table, the OpenAPI enum and the events the code appends are the same names."""
    paths = client.get("/openapi.json").json["paths"]
    for path in ("/api/sessions/{session_id}/events", "/api/events"):
        events = paths[path]["get"]
        enum = events["responses"]["200"]["content"]["text/event-stream"]["schema"]["properties"]["event"]["enum"]
        assert {row[0] for row in table("## Live events")} == set(enum)
    source = "".join(path.read_text() for folder in ("app", "workers")
                     for path in (REFERENCE.parents[1] / folder).glob("*.py"))
    appended = set(re.findall(r'\.(?:to_)?(?:session|user)\([^,]+, "(\w+)"', source))
    appended |= {"start", "token", "ready", "reset"}
    assert appended == set(enum)


def test_every_error_code_a_client_can_get_is_listed():
    internal = {errors.ConfigurationError, errors.StaleFence, errors.ArzaniError}  # never an HTTP answer

    def subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from subclasses(sub)

    codes = {(cls.code, str(cls.status)) for cls in subclasses(errors.ArzaniError) if cls not in internal}
    assert ratelimit.RateLimited in set(subclasses(errors.ArzaniError))
    assert {(code, status) for code, status, _ in table("## Errors")} == codes


def test_the_readme_points_at_the_reference_not_outside_the_repository():
    readme = (REFERENCE.parents[1] / "README.md").read_text()
    assert "docs/API.md" in readme
    assert "../shared" not in readme and "CONTRACT.md" not in readme


@pytest.mark.slow
def test_the_readme_walk_through_works_as_written(make_stack, tmp_path):
    """The README's walk-through, pasted into bash: only the port and the venv's path change."""
    import subprocess

    from tests.stack import BIN

    readme = (REFERENCE.parents[1] / "README.md").read_text()
    block = readme.split("<!-- walk-through:")[1].split("```sh\n", 1)[1].split("```", 1)[0]
    stack = make_stack()
    stack.start_web(workers=1)
    stack.start_worker("worker", "-c", "workers.rq_settings")
    script = block.replace("localhost:5000", f"127.0.0.1:{stack.port}").replace(".venv/bin/", f"{BIN}/")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], env=stack.env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    conversation = json.loads(result.stdout.splitlines()[0])  # the first curl: the message and its reply
    assert [m["role"] for m in conversation["messages"]] == ["user", "assistant"]
    assert conversation["messages"][1]["content"].startswith('Echo: "hello"')
    events = (tmp_path / "events.txt").read_text()
    assert "event: ready" in events and "event: reply" in events
