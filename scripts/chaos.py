"""`arzani chaos`: the Procfile's processes under the same supervision as `make run`, racing
clients for the whole run, a fault every few seconds, and then the whole history checked.

The stack: a private redis-server (with a password) on a free port, a fresh database (SQLite in
the run's directory, or a PostgreSQL database it creates and drops), and supervisord running the
Procfile's `web` (gunicorn, gevent), two `worker` lines (stock `rq worker`) and `cron`, exactly as
`make run` does (scripts/devstack.py), its output in the run's directory.

The clients: OS processes that, in rounds, all post the first message of one shared session at
the same instant (two pairs of them with the same `client_message_id`, a retry race), follow it
up there and in a session of their own, and retry every failed or timed-out post with the same
`client_message_id` and content. Each attempt is a JSON line in `client-N.jsonl`.

The faults (one every `--fault-every` seconds or so, drawn with `--seed`), one line each in
`faults.jsonl`: see FAULTS. supervisord starts whatever was killed again.

At the end: faults and clients stop, it waits for every message to be answered or failed within
a bound derived from the configuration (`recovery_bound`), reads the database and Redis, and
holds the history against them (scripts/chaoscheck.py). It prints the time to recovery per kind
of fault, each violation, and one summary line; exit status 1 on any violation.
"""

from __future__ import annotations

import atexit
import dataclasses
import http.client
import json
import multiprocessing
import os
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import click

from scripts import chaoscheck
from scripts.localservers import EmbeddedRedis, _die_with_parent, free_port, start_time

FAULTS = {
    "gunicorn-worker": "SIGKILL of a gunicorn worker process (its master starts another)",
    "work-horse": "SIGKILL of an rq work-horse while it runs a job (its worker sees it at once)",
    "rq-worker": "SIGKILL of a whole rq worker, parent and horse (RQ notices it late)",
    "scheduler": "SIGKILL of `arzani cron`",
    "web-stop": "SIGSTOP of a gunicorn worker for ARZANI_LOCK_TTL_MS + 1 s, then SIGCONT",
    "redis-restart": "Redis stopped and started again empty, same port and password",
    "postgres-backends": "pg_terminate_backend() of every connection to the run's database (PostgreSQL only)",
}

REQUEST_TIMEOUT_S = 10.0
"""A client gives up on one attempt after this (then retries with the same client_message_id)."""

CLIENT_GRACE_S = 60.0
"""After the run's end, a client keeps retrying the messages it was sending for at most this."""

ROUND_S = 2.0
"""Clients start a round (a racing first message, follow-ups) at every multiple of this, or of
four times the think time if that is longer (room for a few follow-ups)."""

THINK_S = 0.6
"""A client waits about this long between two posts (drawn from half to one and a half times it);
`--think` sets it. The load must stay well below what the workers can answer, or every figure
measures the backlog instead of the faults."""

WEB_STOP_EXTRA_S = 1.0
"""A stopped web process stays stopped this long past the lock TTL (its lock has expired)."""


# -- the stack ------------------------------------------------------------------------------------


class ProcessTable:
    """A snapshot of /proc: parent, process group and command line of each process."""

    def __init__(self):
        self.parent: dict[int, int] = {}
        self.group: dict[int, int] = {}
        self.cmdline: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if fields[0] == "Z":
                    continue
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            pid = int(entry.name)
            self.parent[pid], self.group[pid], self.cmdline[pid] = int(fields[1]), int(fields[2]), cmdline

    def children(self, pid: int) -> list[int]:
        return [child for child, parent in self.parent.items() if parent == pid]

    def descendants(self, pid: int) -> list[int]:
        found, frontier = [], [pid]
        while frontier:
            children = self.children(frontier.pop())
            found += children
            frontier += children
        return found


class ChaosStack:
    """Redis, the database and supervisord with the Procfile's processes; `close()` leaves
    nothing running (RQ's work-horses included: each is its own process group, out of reach of
    supervisord's group kill), and drops a PostgreSQL database it created."""

    def __init__(self, out: Path, database_url: str | None, web_processes: int, workers: int):
        self.out = out
        self.admin_url = database_url
        self.web_processes = web_processes
        self.workers = workers
        self.redis: EmbeddedRedis | None = None
        self.supervisord: subprocess.Popen | None = None
        self.database_name: str | None = None
        self.database_url: str | None = None
        self.env: dict[str, str] = {}
        self.port = 0
        self._temporary: list[str] = []
        self._seen: dict[int, str | None] = {}  # every process of the stack ever seen: pid -> start time
        self.stopped: set[int] = set()  # web processes under SIGSTOP right now

    # setup

    def start(self) -> None:
        from scripts.devstack import migrate, procfile_environment, procfile_processes, supervisor_config

        self.redis = EmbeddedRedis().start()
        self.database_url = self._create_database()
        self.port = free_port()
        env = dict(os.environ)
        env.update(REDIS_URL=self.redis.url, DATABASE_URL=self.database_url, PORT=str(self.port),
                   BIND_HOST="127.0.0.1", WEB_CONCURRENCY=str(self.web_processes),
                   ARZANI_SECRET_KEY=secrets.token_hex(32), ARZANI_ENV="development")
        env.setdefault("ARZANI_LOG_LEVEL", "WARNING")  # INFO is a line per reply: a big log
        env.pop("ARZANI_QUEUE_REDIS_URL", None)
        env.pop("ARZANI_REDIS_CLUSTER", None)
        metrics_dir = procfile_environment(env)
        if metrics_dir:
            self._temporary.append(metrics_dir)
        self.env = env
        migrate(env)
        supervisor_dir = tempfile.mkdtemp(prefix="arzani-chaos-supervisor-")
        self._temporary.append(supervisor_dir)
        config = supervisor_config(procfile_processes(), self.workers, Path(supervisor_dir),
                                   output=str(self.out / "stack.log"))
        from scripts.devstack import start_supervisord

        self.supervisord = start_supervisord(config, env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                             start_new_session=True, preexec_fn=_die_with_parent)

    def _create_database(self) -> str:
        if not self.admin_url:
            return f"sqlite:///{self.out / 'chaos.db'}"
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        admin = make_url(self.admin_url)
        if not admin.drivername.startswith("postgres"):
            raise click.ClickException("--database-url must be a PostgreSQL server's URL (without it: SQLite)")
        if admin.drivername in ("postgres", "postgresql"):
            admin = admin.set(drivername="postgresql+psycopg")
        self.admin_url = admin.render_as_string(hide_password=False)
        self.database_name = f"arzani_chaos_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{self.database_name}"'))
        finally:
            engine.dispose()
        return admin.set(database=self.database_name).render_as_string(hide_password=False)

    @property
    def on_postgres(self) -> bool:
        return self.database_name is not None

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        """The web app answers /readyz, both rq workers are registered and the scheduler runs."""
        import redis as redis_py
        from rq import Worker

        client = redis_py.Redis.from_url(self.redis.url, socket_timeout=5)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                ready = self._http_ready()
                try:
                    workers = len(Worker.all(connection=client))
                except redis_py.RedisError:
                    workers = 0
                table = ProcessTable()
                if ready and workers >= self.workers and self.scheduler(table):
                    return
                if self.supervisord.poll() is not None:
                    raise click.ClickException(f"supervisord exited; see {self.out / 'stack.log'}")
                if time.monotonic() > deadline:
                    raise click.ClickException(f"the stack was not ready after {timeout_s:.0f} s (web ready: {ready}, "
                                               f"rq workers: {workers}); see {self.out / 'stack.log'}")
                time.sleep(0.2)
        finally:
            client.close()

    def _http_ready(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request("GET", "/readyz")
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except (OSError, http.client.HTTPException):
            return False

    # the processes, found in /proc below supervisord

    def _programs(self, table: ProcessTable, word: str) -> list[int]:
        found = [pid for pid in table.children(self.supervisord.pid) if word in table.cmdline[pid]]
        for pid in table.descendants(self.supervisord.pid):
            self._seen.setdefault(pid, start_time(pid))
        return found

    def gunicorn_workers(self, table: ProcessTable) -> list[int]:
        return [pid for master in self._programs(table, "gunicorn") for pid in table.children(master)]

    def rq_workers(self, table: ProcessTable) -> list[int]:
        return [pid for pid in self._programs(table, " worker ") if "rq" in table.cmdline[pid]]

    def horses(self, table: ProcessTable, worker: int) -> list[int]:
        """RQ's work-horse: the worker's child that made itself a process group (os.setpgrp)."""
        return [pid for pid in table.children(worker) if table.group.get(pid) == pid]

    def scheduler(self, table: ProcessTable) -> list[int]:
        return [pid for pid in self._programs(table, " cron") if "arzani" in table.cmdline[pid]]

    # teardown

    def close(self) -> None:
        for pid in list(self.stopped):
            _signal(pid, signal.SIGCONT)
        self.stopped.clear()
        if self.supervisord is not None:
            if self.supervisord.poll() is None:
                self._programs(ProcessTable(), "")  # remember every process there is now
                self.supervisord.send_signal(signal.SIGTERM)
                try:
                    self.supervisord.wait(40)  # its stopwaitsecs is 15 per program
                except subprocess.TimeoutExpired:
                    _killpg(self.supervisord.pid, signal.SIGKILL)
                    self.supervisord.wait(10)
            for pid, started in self._seen.items():
                if start_time(pid) == started:  # the same process, not a reused pid
                    _signal(pid, signal.SIGKILL)
            self.supervisord = None
        if self.redis is not None:
            self.redis.close()
            self.redis = None
        if self.database_name:
            from sqlalchemy import create_engine, text

            engine = create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
            try:
                with engine.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{self.database_name}" WITH (FORCE)'))
            finally:
                engine.dispose()
            self.database_name = None
        for path in self._temporary:
            shutil.rmtree(path, ignore_errors=True)
        self._temporary.clear()


def _signal(pid: int, signum: int) -> bool:
    try:
        os.kill(pid, signum)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _killpg(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


# -- faults ----------------------------------------------------------------------------------------


class FaultMaker:
    """Makes one fault of a kind happen now; returns what it did, or None if it found nothing to
    hit (no job running to kill a horse of, say): then the fault is not counted."""

    HORSE_WAIT_S = 3.0

    def __init__(self, stack: ChaosStack, rng: random.Random):
        self.stack = stack
        self.rng = rng
        self.lock_ttl_s = int(stack.env.get("ARZANI_LOCK_TTL_MS") or 10_000) / 1000

    def make(self, kind: str) -> str | None:
        return getattr(self, "_" + kind.replace("-", "_"))()

    def _gunicorn_worker(self) -> str | None:
        pids = [p for p in self.stack.gunicorn_workers(ProcessTable()) if p not in self.stack.stopped]
        if not pids:
            return None
        pid = self.rng.choice(pids)
        return f"SIGKILL gunicorn worker {pid}" if _signal(pid, signal.SIGKILL) else None

    def _work_horse(self) -> str | None:
        deadline = time.monotonic() + self.HORSE_WAIT_S
        while time.monotonic() < deadline:
            table = ProcessTable()
            horses = [h for w in self.stack.rq_workers(table) for h in self.stack.horses(table, w)]
            if horses:
                pid = self.rng.choice(horses)
                if _signal(pid, signal.SIGKILL):
                    return f"SIGKILL work-horse {pid}"
            time.sleep(0.005)
        return None

    def _rq_worker(self) -> str | None:
        table = ProcessTable()
        workers = self.stack.rq_workers(table)
        if not workers:
            return None
        worker = self.rng.choice(workers)
        horses = self.stack.horses(table, worker)
        _signal(worker, signal.SIGKILL)
        for horse in horses:
            _signal(horse, signal.SIGKILL)
        # A horse forked between the snapshot and the kill outlives its parent (its own process
        # group, reparented): it runs the worker's command line, outside supervisord's tree.
        table = ProcessTable()
        live_workers = set(self.stack.rq_workers(table))
        for pid, parent in table.parent.items():
            if (pid not in horses and pid != worker and table.group.get(pid) == pid
                    and table.cmdline.get(pid) == table.cmdline.get(worker, "\0")
                    and parent not in live_workers and parent != self.stack.supervisord.pid):
                _signal(pid, signal.SIGKILL)
        return f"SIGKILL rq worker {worker}" + (f" and its horse {horses[0]}" if horses else " (idle)")

    def _scheduler(self) -> str | None:
        pids = self.stack.scheduler(ProcessTable())
        if not pids:
            return None
        return f"SIGKILL scheduler {pids[0]}" if _signal(pids[0], signal.SIGKILL) else None

    def _web_stop(self) -> str | None:
        if self.stack.stopped:
            return None  # one at a time: the rest of the web keeps serving
        pids = self.stack.gunicorn_workers(ProcessTable())
        if not pids:
            return None
        pid = self.rng.choice(pids)
        if not _signal(pid, signal.SIGSTOP):
            return None
        self.stack.stopped.add(pid)
        seconds = self.lock_ttl_s + WEB_STOP_EXTRA_S

        def resume():
            if pid in self.stack.stopped:
                _signal(pid, signal.SIGCONT)
                self.stack.stopped.discard(pid)

        timer = threading.Timer(seconds, resume)
        timer.daemon = True
        timer.start()
        return f"SIGSTOP gunicorn worker {pid} for {seconds:.1f} s"

    def _redis_restart(self) -> str | None:
        self.stack.redis.stop()
        self.stack.redis.start()
        return f"Redis restarted empty on port {self.stack.redis.port}"

    def _postgres_backends(self) -> str | None:
        if not self.stack.on_postgres:
            return None
        from sqlalchemy import create_engine, text

        engine = create_engine(self.stack.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                killed = conn.execute(text(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"), {"name": self.stack.database_name}).scalar()
        finally:
            engine.dispose()
        return f"pg_terminate_backend: {killed} connection(s)"


# -- clients ---------------------------------------------------------------------------------------


class Poster:
    """Posts one message until it is accepted, retrying with the same client_message_id and content
    after no answer, a timeout, a 429 or a 5xx; writes every attempt as a JSON line."""

    def __init__(self, port: int, record, rng: random.Random):
        self.port = port
        self.record = record
        self.rng = rng
        self.conn: http.client.HTTPConnection | None = None

    def _exchange(self, token: str, path: str, body: dict) -> tuple[int, dict | None]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_S)
        try:
            self.conn.request("POST", path, body=json.dumps(body),
                              headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            response = self.conn.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = None
            return 0, None
        if response.getheader("connection", "").lower() == "close":
            self.conn.close()
            self.conn = None
        try:
            return response.status, json.loads(raw) if raw else None
        except ValueError:
            return response.status, None

    def post(self, token: str, session_id: str, client_message_id: str, content: str, give_up_at: float) -> bool:
        """True once accepted; False if refused (4xx) or `give_up_at` (epoch) came first."""
        body = {"content": content, "client_message_id": client_message_id}
        backoff = 0.1
        while True:
            sent_at = time.time()
            status, data = self._exchange(token, f"/api/sessions/{session_id}/messages", body)
            line = {"session_id": session_id, "client_message_id": client_message_id, "content": content,
                    "sent_at": sent_at, "answered_at": time.time(), "status": status}
            if status in chaoscheck.ACCEPTED_STATUSES and data:
                line.update(message_id=data["message"]["id"], conversation_id=data["conversation_id"])
            elif data and "error" in data:
                line["error"] = data["error"].get("code")
            self.record(line)
            if status in chaoscheck.ACCEPTED_STATUSES:
                return True
            if 400 <= status < 500 and status != 429:
                return False
            if time.time() + backoff > give_up_at:
                return False
            time.sleep(backoff * (0.5 + self.rng.random()))
            backoff = min(backoff * 2, 2.0)


def client_main(index: int, port: int, tokens: list[str], run_tag: str, started_at: float, stop_at: float,
                seed: int, out: str, think_s: float = THINK_S) -> None:
    """One client process: rounds until `stop_at` (epoch), each round at its slot's instant."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the orchestrator stops clients (Ctrl-C reaches it too)
    _die_with_parent()  # ...and if it is killed outright, they go with it
    rng = random.Random(seed * 1000 + index)
    with open(out, "a", buffering=1) as log:
        poster = Poster(port, lambda line: log.write(json.dumps(line) + "\n"), rng)
        give_up_at = stop_at + CLIENT_GRACE_S
        round_s = max(ROUND_S, 4 * think_s)
        round_number = 0
        while True:
            # The next slot that has not begun: a client that fell behind (retrying through a fault)
            # joins the next race instead of running late and alone.
            round_number = max(round_number, int((time.time() - started_at) // round_s) + 1)
            slot = started_at + round_number * round_s
            if slot >= stop_at:
                break
            time.sleep(max(0.0, slot - time.time()))
            token = tokens[round_number % len(tokens)]
            shared = f"chaos-{run_tag}-r{round_number}"
            # The race: every client posts the shared session's first message at this instant; clients
            # 0 and 1 (2 and 3...) post the same client_message_id and content (a retry racing its twin).
            twin = index // 2
            poster.post(token, shared, f"first-{twin}", f"first message of round {round_number} (pair {twin})",
                        give_up_at)
            accepted = [(shared, f"first-{twin}", f"first message of round {round_number} (pair {twin})")]
            own = f"chaos-{run_tag}-r{round_number}-c{index}"
            # Then follow-ups, in the shared session and in one of its own, until the next race:
            # a steady load, so that every fault finds messages in flight.
            step = 0
            while time.time() < min(slot + round_s - 1.5 * think_s, stop_at):
                session_id = shared if step % 2 == 0 else own
                cmid = f"c{index}-{'follow' if session_id == shared else 'own'}-{step}"
                content = f"{cmid} round {round_number}"
                if poster.post(token, session_id, cmid, content, give_up_at):
                    accepted.append((session_id, cmid, content))
                if rng.random() < 0.1:  # a deliberate late retry of an accepted message
                    poster.post(token, *rng.choice(accepted), give_up_at)
                step += 1
                time.sleep(rng.uniform(0.5 * think_s, 1.5 * think_s))


# -- the run ---------------------------------------------------------------------------------------


@dataclass
class RunResult:
    verdict: chaoscheck.Verdict
    faults: Counter = field(default_factory=Counter)
    recovery: dict[str, list[float]] = field(default_factory=dict)
    isolated: dict[str, list[float]] = field(default_factory=dict)  # faults recovered before the next one
    minutes: float = 0.0
    recovery_wait_s: float = 0.0
    recovery_bound_s: float = 0.0
    reply_latencies: list[float] = field(default_factory=list)  # accepted -> answered or failed, sorted


def procfile_worker_flags() -> dict[str, float]:
    """RQ's monitoring flags as the Procfile's `worker:` line sets them (RQ's defaults otherwise)."""
    from scripts.devstack import procfile_processes

    command = procfile_processes().get("worker", "")
    flags = {"job-monitoring-interval": 30.0, "maintenance-interval": 600.0, "worker-ttl": 420.0}
    for name in flags:
        found = re.search(rf"--{name}[ =](\d+)", command)
        if found:
            flags[name] = float(found.group(1))
    return flags


def recovery_bound(settings, flags: dict[str, float]) -> tuple[float, str]:
    """Seconds after the last fault within which every message must be answered or failed, and how.

    The slowest recoveries: a whole rq worker killed (its job's started-registry entry expires
    `job-monitoring-interval` + 60 s after the last heartbeat, and the next maintenance pass of a
    live worker retries it: at most `maintenance-interval` later, and an idle worker looks at its
    maintenance clock only every `worker-ttl` - 15 s); and Redis restarted empty (the queue is
    gone: the sweeper finds a message pending for `ARZANI_SWEEP_AFTER` s at its next run, every
    `ARZANI_SWEEP_INTERVAL` s, with the scheduler's reconnect backoff on top). Then the message may
    still use its retries (their intervals) before it is answered or failed."""
    from app import defaults
    from workers.scheduler import MAX_BACKOFF_S

    worker = (flags["job-monitoring-interval"] + 60 + flags["maintenance-interval"]
              + max(0.0, flags["worker-ttl"] - 15))
    sweep = settings.sweep_after_s + settings.sweep_interval_s + MAX_BACKOFF_S if settings.sweep_interval_s else 0
    retries = sum(defaults.RETRY_INTERVALS_S[:settings.reply_retries]) + defaults.RETRY_INTERVALS_S[0]
    margin = 30.0
    bound = max(worker, sweep) + retries + margin
    how = (f"max(whole worker {worker:.0f} s = monitoring {flags['job-monitoring-interval']:.0f} + 60 + maintenance "
           f"{flags['maintenance-interval']:.0f} + worker-ttl-15 {max(0.0, flags['worker-ttl'] - 15):.0f}, "
           f"sweep {sweep:.0f} s = after {settings.sweep_after_s} + interval {settings.sweep_interval_s} "
           f"+ scheduler backoff {MAX_BACKOFF_S:.0f}) + retries {retries:.0f} s + margin {margin:.0f} s")
    return bound, how


def read_state(services) -> chaoscheck.Stored:
    from sqlalchemy import select

    from app import keys
    from app.models import Conversation, Message

    with services.db.read() as db:
        conversations = [chaoscheck.StoredConversation(c.id, c.session_id, c.deleted_at is not None)
                         for c in db.scalars(select(Conversation))]
        messages = [chaoscheck.StoredMessage(m.id, m.conversation_id, m.role, m.status, m.reply_to,
                                             m.client_message_id, m.failure_reason, m.created_at.timestamp())
                    for m in db.scalars(select(Message).order_by(Message.id))]
    tracked = {}
    for key in services.redis.scan_iter(match=f"{keys.PREFIX}*", count=1000):
        session_id = keys.session_id_from_key(key)
        if session_id is None or key != keys.session_key(session_id):
            continue
        conversation_id = services.sessions.tracked_conversation_id(session_id)
        if conversation_id:
            tracked[session_id] = conversation_id
    return chaoscheck.Stored(conversations, messages, tracked)


def pending_count(services) -> int:
    from sqlalchemy import func, select

    from app.models import Message

    with services.db.read() as db:
        return db.scalar(select(func.count()).where(Message.role == "user", Message.status == "pending"))


class FailureWatch(threading.Thread):
    """When each user message was first seen `failed` (the database keeps no time for it), polled."""

    def __init__(self, services):
        super().__init__(daemon=True)
        self.services = services
        self.seen: dict[int, float] = {}
        self.done = threading.Event()

    def run(self) -> None:
        from sqlalchemy import select

        from app.models import Message

        while not self.done.wait(1.0):
            try:
                with self.services.db.read() as db:
                    ids = db.scalars(select(Message.id).where(Message.role == "user", Message.status == "failed"))
                    now = time.time()
                    for message_id in ids:
                        self.seen.setdefault(message_id, now)
            except Exception:  # noqa: BLE001 - the database is one of the things chaos takes away
                continue


def run_chaos(*, seconds: float, seed: int, clients: int, fault_every: float, database_url: str | None,
              out: Path, kinds: list[str], web_processes: int, think_s: float = THINK_S,
              echo=click.echo) -> RunResult:
    from app.auth import create_api_user
    from app.config import Settings
    from app.wiring import Wiring

    stack = ChaosStack(out, database_url, web_processes, workers=2)
    children: list[multiprocessing.Process] = []

    def cleanup() -> None:
        for child in children:
            if child.is_alive():
                child.kill()
            child.join(5)
        children.clear()
        stack.close()

    atexit.register(cleanup)
    previous_term = signal.signal(signal.SIGTERM, _raise_interrupt)
    services = None
    try:
        stack.start()
        stack.wait_ready()
        if not stack.on_postgres:
            kinds = [k for k in kinds if k != "postgres-backends"]
        settings = Settings.from_env(stack.env)
        services = Wiring(settings, process_kind="cli")
        tokens = [create_api_user(services, f"chaos-{n}")[1] for n in range(max(2, clients // 2))]
        rng = random.Random(seed)
        run_tag = uuid.uuid4().hex[:8]
        started_at = time.time()
        stop_at = started_at + seconds
        context = multiprocessing.get_context("fork")
        for index in range(clients):
            child = context.Process(target=client_main, name=f"chaos-client-{index}",
                                    args=(index, stack.port, tokens, run_tag, started_at, stop_at, seed,
                                          str(out / f"client-{index}.jsonl"), think_s))
            child.start()
            children.append(child)
        echo(f"chaos: stack up (web :{stack.port}, Redis :{stack.redis.port}, "
             f"{'PostgreSQL' if stack.on_postgres else 'SQLite'}), {clients} clients, faults: {', '.join(kinds)}")
        watch = FailureWatch(services)
        watch.start()

        faults: list[chaoscheck.Fault] = []
        maker = FaultMaker(stack, rng)
        with open(out / "faults.jsonl", "a", buffering=1) as fault_log:
            next_fault = time.time() + fault_every * rng.uniform(0.5, 1.5)
            while time.time() < stop_at:
                time.sleep(max(0.0, min(next_fault, stop_at) - time.time()))
                if time.time() >= stop_at:
                    break
                kind = rng.choice(kinds)
                at = time.time()
                try:
                    done = maker.make(kind)
                except Exception as exc:  # noqa: BLE001 - a fault that could not be made is logged, not fatal
                    done, error = None, f"{type(exc).__name__}: {exc}"
                else:
                    error = None
                fault_log.write(json.dumps({"kind": kind, "at": at, "done": done, "error": error}) + "\n")
                if done:
                    faults.append(chaoscheck.Fault(kind, at))
                next_fault = time.time() + fault_every * rng.uniform(0.5, 1.5)
        for pid in list(stack.stopped):  # faults are over: nothing stays frozen
            _signal(pid, signal.SIGCONT)
        stack.stopped.clear()
        echo(f"chaos: {len(faults)} faults made; waiting for the clients to finish their posts")
        for child in children:
            child.join(max(1.0, stop_at + CLIENT_GRACE_S + REQUEST_TIMEOUT_S + 5 - time.time()))
            if child.is_alive():
                child.kill()
                child.join(5)

        bound, how = recovery_bound(settings, procfile_worker_flags())
        last_event = max([f.at for f in faults] + [stop_at])
        echo(f"chaos: waiting for every message to be answered or failed, at most {bound:.0f} s after the "
             f"last fault ({how})")
        waited_from = time.time()
        while True:
            try:
                pending = pending_count(services)
            except Exception:  # noqa: BLE001 - a terminated backend, still being replaced
                pending = -1
            if pending == 0 or time.time() > last_event + bound:
                break
            time.sleep(0.5)
        recovery_wait_s = time.time() - waited_from
        watch.done.set()
        watch.join(5)
        stored = read_state(services)
        write_state(out / "state.jsonl", stored, watch.seen)
        result = judge(read_attempts(out), faults, stored, watch.seen, seconds / 60)
        result.recovery_wait_s, result.recovery_bound_s = recovery_wait_s, bound
        return result
    finally:
        if services is not None:
            services.close()
        signal.signal(signal.SIGTERM, previous_term)
        cleanup()
        atexit.unregister(cleanup)


def judge(attempts: list[chaoscheck.Attempt], faults: list[chaoscheck.Fault], stored: chaoscheck.Stored,
          failed_seen: dict[int, float], minutes: float) -> RunResult:
    """The verdict and the times to recovery of a run, from its records and its final state."""
    verdict = chaoscheck.check(attempts, stored)
    replies = {m.reply_to: m.created_at for m in stored.messages if m.role == "assistant"}
    conversations = {c.id: c.session_id for c in stored.conversations}
    by_key = {(conversations.get(m.conversation_id), m.client_message_id): m.id
              for m in stored.messages if m.role == "user" and m.client_message_id}
    in_flight, latencies = [], []
    for message in chaoscheck.accepted_messages(attempts):
        message_id = by_key.get((message.session_id, message.client_message_id))
        done_at = replies.get(message_id) or failed_seen.get(message_id)
        if done_at is not None:
            in_flight.append((message.first_sent_at, done_at))
            latencies.append(max(0.0, done_at - message.accepted_at))
    made = Counter(f.kind for f in faults)
    return RunResult(verdict, made, chaoscheck.recovery_times(faults, in_flight),
                     chaoscheck.recovery_times(faults, in_flight, isolated=True), minutes,
                     reply_latencies=sorted(latencies))


def write_state(path: Path, stored: chaoscheck.Stored, failed_seen: dict[int, float]) -> None:
    """The final state, kept for a violation's evidence and for `--recheck`."""
    with open(path, "w") as state_log:
        for row in [*stored.conversations, *stored.messages]:
            state_log.write(json.dumps({"type": type(row).__name__, **dataclasses.asdict(row)}) + "\n")
        state_log.write(json.dumps({"type": "tracked", "sessions": stored.tracked}) + "\n")
        state_log.write(json.dumps({"type": "failed_seen", "at": {str(k): v for k, v in failed_seen.items()}}) + "\n")


def read_run(out: Path) -> RunResult:
    """A finished run judged again from its directory (`--recheck`)."""
    stored, failed_seen = chaoscheck.Stored([], []), {}
    for line in (out / "state.jsonl").read_text().splitlines():
        row = json.loads(line)
        kind = row.pop("type")
        if kind == "StoredConversation":
            stored.conversations.append(chaoscheck.StoredConversation(**row))
        elif kind == "StoredMessage":
            stored.messages.append(chaoscheck.StoredMessage(**row))
        elif kind == "tracked":
            stored.tracked = row["sessions"]
        elif kind == "failed_seen":
            failed_seen = {int(k): v for k, v in row["at"].items()}
    faults = [chaoscheck.Fault(row["kind"], row["at"]) for row in map(json.loads, (out / "faults.jsonl").open())
              if row.get("done")]
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    result = judge(read_attempts(out), faults, stored, failed_seen, summary.get("seconds", 0) / 60)
    result.recovery_wait_s = summary.get("recovery_wait_s", 0.0)
    result.recovery_bound_s = summary.get("recovery_bound_s", 0.0)
    return result


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def read_attempts(out: Path) -> list[chaoscheck.Attempt]:
    attempts = []
    for path in sorted(out.glob("client-*.jsonl")):
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut short by a killed client
            attempts.append(chaoscheck.Attempt(row["session_id"], row["client_message_id"], row["content"],
                                               row["sent_at"], row["status"], row.get("message_id"),
                                               row.get("conversation_id"), row.get("answered_at")))
    return attempts


def _n(value: int) -> str:
    return f"{value:,}"


def summary_line(result: RunResult) -> str:
    verdict = result.verdict
    reasons = ", ".join(f"{reason} {count}" for reason, count in verdict.failure_reasons.most_common())
    return (f"chaos: {result.minutes:.1f} min, {_n(sum(result.faults.values()))} faults, "
            f"{_n(verdict.accepted)} accepted, "
            f"{_n(verdict.stored_once)} stored once, {_n(verdict.answered)} answered, {_n(verdict.failed)} failed"
            f"{f' ({reasons})' if reasons else ''}, {_n(len(verdict.violations))} violations")


MAX_VIOLATIONS_SHOWN = 50


def _figures(times: list[float]) -> tuple[str, str]:
    if not times:
        return "-", "-"
    p50, worst = chaoscheck.p50_and_max(times)
    return f"{p50:.2f}", f"{worst:.2f}"


def report(result: RunResult, out: Path, run_seconds: float, seed: int | None) -> None:
    """Print the times to recovery, the violations and the summary line; write summary.json."""
    if result.recovery_bound_s:
        click.echo(f"chaos: every message settled {result.recovery_wait_s:.0f} s after the clients stopped "
                   f"(bound {result.recovery_bound_s:.0f} s after the last fault)")
    if result.reply_latencies:
        # Under a backlog every reply waits its turn, and every fault's recovery with it: read the
        # figures below against these (a run that overloads its workers measures the overload).
        lat = result.reply_latencies
        click.echo(f"reply latency (accepted -> answered or failed): p50 {lat[len(lat) // 2]:.2f} s, "
                   f"p99 {lat[min(len(lat) - 1, int(len(lat) * 0.99))]:.2f} s, max {lat[-1]:.2f} s")
    click.echo("time to recovery (from the fault to the last reply of the messages in flight at it), seconds;")
    click.echo("isolated: the faults that recovered before the next fault happened:")
    click.echo(f"  {'fault':<18} {'made':>5} {'caught':>7} {'p50':>8} {'max':>8} {'isolated':>9} {'p50':>8} {'max':>8}")
    for kind in FAULTS:
        if kind not in result.faults:
            continue
        times, isolated = result.recovery.get(kind, []), result.isolated.get(kind, [])
        click.echo(f"  {kind:<18} {result.faults[kind]:>5} {len(times):>7} {_figures(times)[0]:>8} "
                   f"{_figures(times)[1]:>8} {len(isolated):>9} {_figures(isolated)[0]:>8} {_figures(isolated)[1]:>8}")
    for violation in result.verdict.violations[:MAX_VIOLATIONS_SHOWN]:
        click.echo(violation.line())
    if len(result.verdict.violations) > MAX_VIOLATIONS_SHOWN:
        click.echo(f"... and {len(result.verdict.violations) - MAX_VIOLATIONS_SHOWN} more violations")

    def figures(by_kind):
        return {k: {"caught": len(v), "p50_s": chaoscheck.p50_and_max(v)[0], "max_s": chaoscheck.p50_and_max(v)[1]}
                for k, v in by_kind.items()}

    verdict = result.verdict
    summary = {
        "seconds": run_seconds, "seed": seed, "faults": dict(result.faults),
        "accepted": verdict.accepted, "stored_once": verdict.stored_once, "answered": verdict.answered,
        "failed": verdict.failed, "failure_reasons": dict(verdict.failure_reasons), "replayed": verdict.replayed,
        "stored_unacknowledged": verdict.stored_unacknowledged, "violations": [v.line() for v in verdict.violations],
        "recovery": figures(result.recovery), "recovery_isolated": figures(result.isolated),
        "recovery_wait_s": result.recovery_wait_s, "recovery_bound_s": result.recovery_bound_s,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    click.echo(f"chaos: {_n(verdict.replayed)} retries answered with their first message, "
               f"{_n(verdict.stored_unacknowledged)} messages stored that no client saw accepted")
    click.echo(summary_line(result))


@click.command("chaos")
@click.option("--minutes", type=float, default=None, help="how long the faults and clients run (default 10)")
@click.option("--seconds", type=float, default=None, help="the same in seconds, for short runs")
@click.option("--seed", type=int, default=None, help="seed of the fault draw (printed; default random)")
@click.option("--clients", default=4, show_default=True, help="client processes")
@click.option("--fault-every", default=4.0, show_default=True, help="seconds between faults, on average")
@click.option("--database-url", default=None,
              help="a PostgreSQL server (its admin URL): the run creates its own database there and drops it; "
                   "default a fresh SQLite file")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="directory for the logs and records (default a new temporary directory)")
@click.option("--faults", "fault_kinds", default=",".join(FAULTS), show_default=True,
              help="comma-separated kinds of fault to draw from")
@click.option("--web-processes", default=4, show_default=True, help="gunicorn worker processes")
@click.option("--think", "think_s", default=THINK_S, show_default=True,
              help="seconds a client waits between two posts, on average")
@click.option("--recheck", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="start nothing: judge a finished run again from its directory")
def chaos(minutes, seconds, seed, clients, fault_every, database_url, out, fault_kinds, web_processes,
          think_s, recheck) -> None:
    """Run the Procfile's processes under supervisord with racing clients and random faults, then
    check the whole history; exit status 1 on any violation."""
    if recheck is not None:
        result = read_run(recheck)
        summary = recheck / "summary.json"
        seed = json.loads(summary.read_text()).get("seed") if summary.exists() else None
        report(result, recheck, result.minutes * 60, seed)
        sys.exit(1 if result.verdict.violations else 0)
    if minutes is not None and seconds is not None:
        raise click.UsageError("give --minutes or --seconds, not both")
    run_seconds = seconds if seconds is not None else (minutes if minutes is not None else 10.0) * 60
    if run_seconds <= 0 or clients < 1 or fault_every <= 0 or think_s <= 0:
        raise click.UsageError("--minutes/--seconds, --clients, --fault-every and --think must be positive")
    kinds = [k.strip() for k in fault_kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in FAULTS]
    if unknown or not kinds:
        raise click.BadParameter(f"unknown kinds {unknown}; choose from {', '.join(FAULTS)}", param_hint="--faults")
    seed = seed if seed is not None else random.SystemRandom().randrange(1_000_000)
    out = out or Path(tempfile.mkdtemp(prefix="arzani-chaos-"))
    out.mkdir(parents=True, exist_ok=True)
    click.echo(f"chaos: seed {seed}, {run_seconds:.0f} s, logs in {out}")
    result = run_chaos(seconds=run_seconds, seed=seed, clients=clients, fault_every=fault_every,
                       database_url=database_url, out=out, kinds=kinds, web_processes=web_processes,
                       think_s=think_s)
    report(result, out, run_seconds, seed)
    sys.exit(1 if result.verdict.violations else 0)
