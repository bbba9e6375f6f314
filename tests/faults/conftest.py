"""Fault tests: real redis-server, real `rq worker` processes and a fake LLM on loopback, with
faults made to really happen (SIGKILL, SIGSTOP, a Redis restart, a severed database link)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.stack import descendants_of


@pytest.fixture
def workers(settings, services, fake_llm, make_stack):
    """Real rq worker processes on the test's Redis and database (its schema made by `services`),
    answering with the fake LLM."""
    return make_stack(settings.database_url, ARZANI_AGENT="openai", OPENAI_BASE_URL=fake_llm.url,
                      ARZANI_REPLY_RETRIES=str(settings.reply_retries))


def horse_of(worker_pid: int) -> int:
    """RQ's work-horse: the worker's child that made itself a process group (os.setpgrp)."""
    horses = [child for child in descendants_of(worker_pid)
              if _parent_of(child) == worker_pid and os.getpgid(child) == child]
    assert len(horses) == 1, horses
    return horses[0]


def _parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
