"""`arzani race` against a real multi-process stack: gunicorn (4 x 4) and two stock rq workers."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.stack import BIN


def run_race(stack, token: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "arzani"), "race", "--url", stack.url, "--token", token, *args],
                          capture_output=True, text=True, timeout=300, env=stack.env)


@pytest.mark.slow
def test_race_reports_one_conversation_per_session_and_every_reply(make_stack):
    stack = make_stack()
    stack.start_web(workers=4)
    token = stack.create_user("racer")
    stack.start_worker("w1", "-c", "workers.rq_settings")
    stack.start_worker("w2", "-c", "workers.rq_settings")
    result = run_race(stack, token, "-n", "3", "-m", "5", "-k", "4", "--reply-timeout", "120", "--json")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert result.returncode == 0, (report, result.stderr[-2000:])
    assert report["messages_accepted"] == 3 * 5 * 4
    assert report["conversations_created"] == 5
    assert report["resolutions"]["created"] == 5  # exactly one winner per race
    assert (report["duplicates"], report["misplaced_replies"], report["missing_replies"],
            report["errors"]) == (0, 0, 0, 0)
    assert report["replies"] == 60


@pytest.mark.slow
def test_race_exits_non_zero_when_the_server_refuses(make_stack):
    stack = make_stack()
    stack.start_web(workers=1)
    result = run_race(stack, "not-a-token", "-n", "1", "-m", "1", "-k", "2", "--reply-timeout", "1")
    assert result.returncode == 1
    assert "401" in result.stdout + result.stderr


class _FakeServer:
    """Stands in for the HTTP client of `arzani race`: serves crafted server answers."""

    def __init__(self, conversations, messages):
        self.conversations, self.messages = conversations, messages

    def __call__(self, *args, **kwargs):
        return self

    def call(self, method, path, body=None):
        if path.startswith("/api/conversations?"):
            return 200, {}, {"conversations": self.conversations, "next_cursor": None}
        return 200, {}, {"messages": self.messages[path.rsplit("/", 1)[1]]}

    def close(self):
        pass


def test_race_counts_a_message_filed_under_another_session_as_misplaced(monkeypatch):
    """Session A's messages stored in session B's conversation, and the server's answers agree
    with each other: only checking each message's home conversation catches it."""
    from scripts import race

    messages = [{"id": i, "role": "user", "status": "answered"} for i in (1, 2, 3, 4)] + \
               [{"id": 10 + i, "role": "assistant", "reply_to": i} for i in (1, 2, 3, 4)]
    monkeypatch.setattr(race, "Client", _FakeServer([{"id": "cB", "session_id": "sessionB00"}], {"cB": messages}))
    records = [{"session_id": s, "status": 202, "latency_ms": 1.0, "resolution": how, "conversation_id": "cB",
                "message_id": m} for s, m, how in [("sessionA00", 1, "created"), ("sessionA00", 2, "tracked"),
                                                   ("sessionB00", 3, "created"), ("sessionB00", 4, "tracked")]]
    report = race._report("http://unused", "t", ["sessionA00", "sessionB00"], records, 1.0, 0)
    assert report["misplaced_replies"] == 2
    assert report["ok"] is False
