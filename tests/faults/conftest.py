"""Fault tests: real redis-server, real `rq worker` processes and a fake LLM on loopback, with
faults made to really happen (SIGKILL, SIGSTOP, a Redis restart, a severed database link)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fake_llm import FakeLLM
from tests.stack import Stack


@pytest.fixture
def fake_llm():
    llm = FakeLLM().start()
    yield llm
    llm.close()


@pytest.fixture
def workers(settings, services, fake_llm, tmp_path):
    """Real rq worker processes on the test's Redis and database, answering with the fake LLM."""
    stack = Stack(settings.redis_url, settings.database_url, tmp_path, ARZANI_AGENT="openai",
                  OPENAI_BASE_URL=fake_llm.url, ARZANI_REPLY_RETRIES=str(settings.reply_retries))
    yield stack
    stack.close()


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:  # ppid
                out.append(int(entry.name))
    return out


def horse_of(worker_pid: int) -> int:
    """RQ's work-horse: the worker's child that made itself a process group (os.setpgrp)."""
    horses = [child for child in children(worker_pid) if os.getpgid(child) == child]
    assert len(horses) == 1, horses
    return horses[0]
