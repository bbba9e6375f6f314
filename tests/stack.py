"""The real stack as separate OS processes, for tests whose claim is about processes:
gunicorn (several gevent workers) and stock `rq worker` processes, against a RedisServer and
a database the test owns. Every process started here is stopped by `close()`."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from app import defaults
from scripts.localservers import start_time
from tests.servers import free_port

BIN = Path(sys.executable).parent
CONNECTION = ("--connection-class", "workers.rq_settings.Redis")  # as the Procfile's `worker:` line


def stack_env(redis_url: str, database_url: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        ARZANI_SECRET_KEY="stack-test-secret",
        ARZANI_QUEUE=defaults.QUEUE,
        ARZANI_LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def descendants_of(pid: int) -> list[int]:
    """Every live process below `pid` (children, grandchildren...), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    found, frontier = [], [pid]
    while frontier:
        children = parents.get(frontier.pop(), [])
        found.extend(children)
        frontier.extend(children)
    return found


class Stack:
    def __init__(self, redis_url: str, database_url: str, log_dir: Path, **env: str):
        self.env = stack_env(redis_url, database_url, **env)
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen] = {}
        self.port: int | None = None

    # -- processes ------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the process
        process = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        log.close()
        self.processes[name] = process
        return process

    def start_web(self, workers: int = 2) -> str:
        """gunicorn as the Procfile runs it (the gevent worker class), `workers` processes."""
        self.port = free_port()
        # --graceful-timeout 1: an open event stream (the chat page) must not hold up the stop
        self._spawn("web", [str(BIN / "gunicorn"), "--worker-class", "scripts.gunicorn_worker.GeventWorker",
                            "--workers", str(workers),
                            "--worker-connections", "1000", "--graceful-timeout", "1", "--keep-alive", "5",
                            "--no-control-socket",
                            "--bind", f"127.0.0.1:{self.port}", "app:create_app()"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                status, _ = self.request("GET", "/readyz")
                if status == 200:
                    return self.url
            except OSError:
                pass
            if self.processes["web"].poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("gunicorn did not become ready:\n" + self.log("web"))

    def start_worker(self, name: str = "worker", *extra: str, url: str | None = None) -> subprocess.Popen:
        return self._spawn(name, [str(BIN / "rq"), "worker", "--url", url or self.env["REDIS_URL"], *CONNECTION,
                                  "--name", f"{name}-{os.getpid()}-{time.monotonic_ns()}",
                                  *extra, self.env["ARZANI_QUEUE"]])

    def start_procfile_worker(self, name: str = "worker", *extra: str) -> subprocess.Popen:
        """`rq worker` as the Procfile starts it: no --url, its Redis (a URL or sentinels) read from
        the environment by `-c workers.rq_settings`."""
        return self._spawn(name, [str(BIN / "rq"), "worker", "-c", "workers.rq_settings", *CONNECTION,
                                  "--name", f"{name}-{os.getpid()}-{time.monotonic_ns()}",
                                  *extra, self.env["ARZANI_QUEUE"]])

    def start_cron(self) -> subprocess.Popen:
        """`arzani cron`, the Procfile's scheduler of the sweeper, reconcile and cleanup."""
        return self._spawn("cron", [str(BIN / "arzani"), "cron"])

    def run_burst_worker(self, timeout: float = 120) -> None:
        """A stock `rq worker --burst`: runs what is queued, then exits."""
        process = self.start_worker(f"burst-{time.monotonic_ns()}", "--burst")
        process.wait(timeout)

    def log(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-5000:] if path.exists() else ""

    def close(self) -> None:
        """SIGTERM (workers unregister, gunicorn drains), then SIGKILL whatever is left, RQ's
        work-horses included: a horse is its own process group, so killing its worker's group
        does not reach it, and a horse that outlived its test would write into the next one."""
        descendants = [(pid, start_time(pid)) for process in self.processes.values()
                       for pid in descendants_of(process.pid)]
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
        for pid, started in descendants:
            if start_time(pid) == started:  # the same process, not a reused pid
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    # -- HTTP -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: dict | None = None,
                token: str | None = None) -> tuple[int, dict | None]:
        status, _, payload = self.exchange(method, path, body, token)
        return status, payload

    def exchange(self, method: str, path: str, body: dict | None = None, token: str | None = None,
                 conn: http.client.HTTPConnection | None = None) -> tuple[int, dict, dict | None]:
        """(status, headers, JSON body); pass `conn` to reuse a keep-alive connection."""
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None,
                         headers=headers)
            response = conn.getresponse()
            raw = response.read()
            return response.status, dict(response.getheaders()), json.loads(raw) if raw else None
        finally:
            if own:
                conn.close()

    def create_user(self, name: str) -> str:
        """`arzani users create NAME` as an operator would run it; returns the token."""
        done = subprocess.run([str(BIN / "arzani"), "users", "create", name], env=self.env,
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        out = done.stdout
        return out.strip().splitlines()[-1]

    def init_db(self) -> None:
        subprocess.run([str(BIN / "arzani"), "db", "upgrade"], env=self.env, check=True,
                       capture_output=True)
