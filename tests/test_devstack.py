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
        while not any("Ctrl-C stops everything" in line for line in lines):
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


class RunOutput:
    """`arzani run`'s terminal output, read in a thread, with waits on what it says."""

    def __init__(self, process):
        self.lines: list[str] = []
        self.process = process
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while len(re.findall(pattern, self.text())) < count:
            assert self.process.poll() is None, "arzani run exited:\n" + self.text()[-3000:]
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n" + self.text()[-3000:]
            time.sleep(0.05)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    except OSError:
        return ""


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None  # gone


def post(port: int, token: str, session_id: str, content: str) -> int:
    import json

    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/sessions/{session_id}/messages",
                                     data=json.dumps({"content": content}).encode(), method="POST",
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0  # no answer (gunicorn starting again, its old workers leaving): the caller retries


def statuses(port: int, token: str) -> list[str]:
    import json

    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/conversations?limit=100",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        listing = json.loads(response.read())
    found = []
    for conversation in listing["conversations"]:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/conversations/{conversation['id']}",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            found += [m["status"] for m in json.loads(response.read())["messages"]]
    return found


def test_run_starts_dead_processes_again_and_outlives_a_redis_outage(tmp_path, redis_server, redis_url):
    """Issue 11, hole 2: under `arzani run` (supervisord) a killed process is started again, one
    log line each; Redis down for longer than the sweep interval, then back (empty): every
    process still there, a message refused during the outage (503) is accepted after it, and one
    posted just before it is answered too. Ctrl-C still stops everything."""
    port = free_port()
    env = dict(os.environ, PORT=str(port), DATABASE_URL=f"sqlite:///{tmp_path / 'run.db'}", REDIS_URL=redis_url,
               ARZANI_SWEEP_INTERVAL="1", ARZANI_SWEEP_AFTER="1", ARZANI_LOG_LEVEL="WARNING")
    stack = subprocess.Popen([str(BIN / "arzani"), "run", "--web-processes", "1", "--workers", "1"],
                             env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
    out = RunOutput(stack)
    try:
        out.wait_for(r"success: web\.1 entered RUNNING", 60)
        token = subprocess.run([str(BIN / "arzani"), "users", "create", "survivor"], env=env, cwd=tmp_path,
                               check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        # A process that dies is started again, and the log says so.
        web = next(pid for pid in descendants(stack.pid)  # gunicorn's master: supervisord's child
                   if "gunicorn" in cmdline(pid) and "supervisord" in cmdline(parent_of(pid) or 0))
        orphans = [pid for pid in descendants(stack.pid) if parent_of(pid) == web]  # its gevent workers
        os.kill(web, signal.SIGKILL)
        out.wait_for(r"exited: web\.1 \(terminated by SIGKILL", 30)
        out.wait_for(r"spawned: 'web\.1'", 30, count=2)
        # The dead master's workers keep the listening socket until they notice (within a second or
        # so) and leave; until then a request may reach one that is closing (a reset, not an answer).
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in orphans):
            assert time.monotonic() < deadline, "the killed master's workers never left"
            time.sleep(0.05)
        session_id = "survive-the-outage"
        deadline = time.monotonic() + 60
        while post(port, token, session_id, "just before the outage") != 202:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        redis_server.stop()
        assert post(port, token, session_id, "during the outage") == 503
        out.wait_for(r"cron scheduler lost Redis", 60, count=2)  # longer than the sweep interval
        redis_server.start()  # back, and empty
        deadline = time.monotonic() + 60
        while post(port, token, session_id, "during the outage") != 202:
            assert time.monotonic() < deadline, out.text()[-3000:]
            time.sleep(0.2)
        deadline = time.monotonic() + 90
        while sorted(statuses(port, token)) != ["answered", "answered", "complete", "complete"]:
            assert time.monotonic() < deadline, (statuses(port, token), out.text()[-3000:])
            time.sleep(0.2)
        # The scheduler lived through it; an rq worker that exits when Redis refuses it is started
        # again by supervisord (and the answers above show the workers are back).
        assert not re.search(r"exited: cron\.", out.text()), out.text()[-3000:]
        assert stack.poll() is None
        running = descendants(stack.pid)
    finally:
        os.killpg(stack.pid, signal.SIGINT)
        stack.wait(60)
    assert stack.returncode == 0
    assert [pid for pid in running if alive(pid)] == []
