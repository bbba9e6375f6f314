"""`arzani run` (what `make run` runs): the whole stack starts, serves, and Ctrl-C stops all of it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import redis

from tests.servers import free_port
from tests.stack import BIN

pytestmark = pytest.mark.slow


def descendants(pid: int) -> set[int]:
    found, frontier = set(), [pid]
    while frontier:
        parent = frontier.pop()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError):
                    continue
                if ppid == parent and int(entry.name) not in found:
                    found.add(int(entry.name))
                    frontier.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_run_serves_the_stack_and_ctrl_c_leaves_nothing_running(tmp_path):
    port = free_port()
    env = dict(os.environ, PORT=str(port), DATABASE_URL=f"sqlite:///{tmp_path / 'run.db'}")
    env.pop("REDIS_URL", None)
    # A terminal's Ctrl-C signals the whole foreground process group: its own session mimics that.
    stack = subprocess.Popen([str(BIN / "arzani"), "run", "--web-processes", "2", "--workers", "2"],
                             env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    lines = []
    try:
        while not any(line.startswith("Ctrl-C") for line in lines):
            line = stack.stdout.readline()
            assert line, "arzani run exited early:\n" + "".join(lines)
            lines.append(line)
        threading.Thread(target=stack.stdout.read, daemon=True).start()  # keep the pipe drained
        output = "".join(lines)
        page_url = re.search(r"(http://\S+)", output).group(1)
        shown = re.search(r"Redis: (redis://\S+)", output).group(1)
        assert page_url == f"http://127.0.0.1:{port}/"
        # The embedded Redis has a password, masked on screen; instance/stack.env (0600) has it.
        stack_env = dict(line.split("=", 1) for line in
                         (tmp_path / "instance" / "stack.env").read_text().splitlines())
        redis_url = stack_env["REDIS_URL"]
        assert shown.startswith("redis://:***@") and redis_url.split("@")[0] not in output
        assert redis.Redis.from_url(redis_url).ping()
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=int(redis_url.rsplit(":", 1)[1].split("/")[0])).ping()

        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(page_url + "readyz", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the web app never became ready"
                time.sleep(0.2)
        with urllib.request.urlopen(page_url, timeout=5) as response:
            assert b"/static/js/main.js" in response.read()  # the chat page itself
        running = descendants(stack.pid)
        # No process of the stack carries the password in its command line (ps shows argv to all).
        password = redis_url.split("@")[0].rsplit(":", 1)[1]
        for pid in running:
            try:
                assert password not in Path(f"/proc/{pid}/cmdline").read_text(), pid
            except FileNotFoundError:
                pass
        assert len(running) >= 6  # honcho, gunicorn master and workers, rq workers, cron, redis
        redis_port = int(redis_url.rsplit(":", 1)[1].split("/")[0])
    finally:
        os.killpg(stack.pid, signal.SIGINT)
        stack.wait(60)
    assert stack.returncode == 0  # Ctrl-C is how a developer stops it: not an error
    assert not (tmp_path / "instance" / "stack.env").exists()
    assert [pid for pid in running if alive(pid)] == []
    # The cookie key is kept for the next start (browser users keep their chats), privately.
    assert (tmp_path / "instance" / "secret_key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "instance").stat().st_mode & 0o777 == 0o700
    assert not listening(port) and not listening(redis_port)
