"""Sessions, locks and RQ on Redis Sentinel, on real processes: a primary, a replica and three
sentinels from the bundled redis-server, and the real stack (gunicorn, stock `rq worker -c
workers.rq_settings`, `arzani cron`) given only ARZANI_REDIS_SENTINELS. The primary is SIGKILLed in
the middle of a race of first messages.

Replication is asynchronous: a lock, a fence, a session key or a queued job written to the old
primary in its last milliseconds may never reach the replica that takes over, so a lock can be held
twice. What must hold anyway: one conversation per session (the fence, which starts from Redis's
clock when its key is missing, and the database's unique index), every accepted message stored once
in its session's conversation and answered (the sweeper enqueues again what the failover lost), and
session keys on the new master that agree with the database or are rebuilt from it."""

from __future__ import annotations

import http.client
import json
import secrets
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from app import defaults, keys
from app.db import Database
from app.models import Conversation, Message, MessageRole, MessageStatus
from scripts.localservers import redis_server_binary
from tests.conftest import POSTGRES_URL
from tests.helpers import new_session_id, wait_for
from tests.servers import free_port
from tests.stack import BIN, Stack

pytestmark = pytest.mark.slow

MASTER = "arzani-test"  # not the default, so that ARZANI_REDIS_SENTINEL_MASTER is exercised
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


class SentinelDeployment:
    """A password-protected primary and replica, and three sentinels (quorum 2) that require a
    password of their own, on free loopback ports. Each server has its own configuration file and
    directory (sentinels rewrite their file; a replica's sync writes an RDB file)."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.password = secrets.token_urlsafe(18)
        self.sentinel_password = secrets.token_urlsafe(18)
        self.primary_port, self.replica_port = free_port(), free_port()
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.processes: dict[str, subprocess.Popen] = {}

    # -- processes ------------------------------------------------------------------------

    def _start(self, name: str, lines: list[str], *flags: str) -> None:
        home = self.dir / name
        home.mkdir()
        conf = home / "redis.conf"
        conf.write_text("\n".join([*lines, f'dir "{home}"', "bind 127.0.0.1", 'logfile ""']) + "\n")
        conf.chmod(0o600)  # it holds the passwords (argv would show them to every local user)
        with open(self.dir / f"{name}.log", "ab") as log:
            self.processes[name] = subprocess.Popen([redis_server_binary(), str(conf), *flags], stdout=log,
                                                    stderr=subprocess.STDOUT, start_new_session=True)

    def _data_node(self, port: int, *extra: str) -> list[str]:
        return [f"port {port}", 'save ""', "appendonly no", f'requirepass "{self.password}"',
                f'masterauth "{self.password}"', *extra]

    def start(self) -> SentinelDeployment:
        self._start("primary", self._data_node(self.primary_port))
        self._start("replica", self._data_node(self.replica_port, f"replicaof 127.0.0.1 {self.primary_port}"))
        for number, port in enumerate(self.sentinel_ports):
            self._start(f"sentinel{number}", [
                f"port {port}",
                f'requirepass "{self.sentinel_password}"',
                f'sentinel sentinel-pass "{self.sentinel_password}"',
                f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} 2",
                f'sentinel auth-pass {MASTER} "{self.password}"',
                f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}",
                f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}",
                f"sentinel parallel-syncs {MASTER} 1",
            ], "--sentinel")
        self._wait(self._ready, 30, "the replica in sync and every sentinel seeing it and the other two")
        return self

    def kill_primary(self) -> None:
        self.processes["primary"].kill()
        self.processes["primary"].wait(10)

    def freeze_primary(self) -> None:
        """SIGSTOP: the primary stops answering but keeps its connections (a long GC-like pause, a
        partition); thawed after the failover, it believes it is the master until a sentinel
        demotes it, and clients still connected to it write there meanwhile: a split brain."""
        self.processes["primary"].send_signal(signal.SIGSTOP)

    def thaw_primary(self) -> None:
        self.processes["primary"].send_signal(signal.SIGCONT)

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)  # a stopped process would not hear SIGTERM
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)

    # -- observable states ----------------------------------------------------------------

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=self.password, socket_timeout=2, decode_responses=True)

    def sentinel(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, password=self.sentinel_password, socket_timeout=2, decode_responses=True)

    def _ready(self) -> bool:
        with self.node(self.replica_port) as replica:
            if replica.info("replication").get("master_link_status") != "up":
                return False
        for port in self.sentinel_ports:
            with self.sentinel(port) as sentinel:
                state = sentinel.sentinel_master(MASTER)
                if state["num-slaves"] < 1 or state["num-other-sentinels"] < 2:
                    return False
                if not any(r["port"] == self.replica_port and not r["is_sdown"]
                           for r in sentinel.sentinel_slaves(MASTER)):
                    return False
        return True

    def failed_over(self) -> bool:
        """Every sentinel names the replica as the master, and the replica says it is one."""
        for port in self.sentinel_ports:
            with self.sentinel(port) as sentinel:
                if sentinel.sentinel_get_master_addr_by_name(MASTER) != ("127.0.0.1", self.replica_port):
                    return False
        with self.node(self.replica_port) as replica:
            return replica.info("replication")["role"] == "master"

    @staticmethod
    def _wait(predicate, timeout: float, what: str) -> None:
        def answered() -> bool:
            try:
                return predicate()
            except redis.RedisError:
                return False

        wait_for(answered, timeout, what)

    def wait_failed_over(self, timeout: float) -> None:
        self._wait(self.failed_over, timeout, "the sentinels to promote the replica")

    def demoted(self) -> bool:
        """The old primary is now a replica of the new master, in sync (its own writes discarded)."""
        with self.node(self.primary_port) as old:
            info = old.info("replication")
            return (info["role"] == "slave" and info.get("master_port") == self.replica_port
                    and info.get("master_link_status") == "up")

    def wait_demoted(self, timeout: float) -> None:
        self._wait(self.demoted, timeout, "a sentinel to turn the old primary into a replica")

    def log(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
                         for path in sorted(self.dir.glob("*.log")))

    @property
    def env(self) -> dict[str, str]:
        """The service's configuration: REDIS_URL gives only the master's password and db (its host
        is not used; nothing listens at 'arzani-test')."""
        return {
            "REDIS_URL": f"redis://:{self.password}@{MASTER}/0",
            "ARZANI_REDIS_SENTINELS": ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports),
            "ARZANI_REDIS_SENTINEL_MASTER": MASTER,
            "ARZANI_REDIS_SENTINEL_PASSWORD": self.sentinel_password,
        }


@pytest.fixture
def deployment(tmp_path):
    running = SentinelDeployment(tmp_path / "redis")
    running.dir.mkdir()
    try:
        yield running.start()
    finally:
        running.close()


# The sweeper and replies run every second here: what the failover lost is enqueued again soon.
SWEEP_INTERVAL_S, SWEEP_AFTER_S = 1, 2
STACK_ENV = {
    "ARZANI_SWEEP_INTERVAL": str(SWEEP_INTERVAL_S),
    "ARZANI_SWEEP_AFTER": str(SWEEP_AFTER_S),
    "ARZANI_RECONCILE_INTERVAL": "0",  # reconcile merges duplicates: it would hide what the test looks for
    "ARZANI_CLEANUP_INTERVAL": "0",
    "ARZANI_RATE_LIMIT": "100000/minute",  # on: the limiter's counters go through the sentinels too
    "ARZANI_SSE_MAX_S": "300",  # the stream opened before the kill stays open across the failover
}


MAINTENANCE_INTERVAL_S = 5
WORKER_FLAGS = ("--with-scheduler", "--job-monitoring-interval", "2", "--maintenance-interval",
                str(MAINTENANCE_INTERVAL_S), "--worker-ttl", "20")
"""The Procfile's worker flags, with shorter intervals."""

RQ_RECOVERY_S = 60 + 60 + 2
"""RQ's (3.0) own recovery of a job whose worker quit holding it, two one-minute timers that can
follow each other: a job in the started registry is given up when its entry expires
(--job-monitoring-interval + 60 s after its last heartbeat), and a job in a queue's intermediate
list (taken with BLMOVE just before the kill, its worker quitting on its next heartbeat) is given
back when a maintenance pass finds it there more than a minute after a first pass saw it
(rq/intermediate_queue.py). The retry then waits for a scheduler, whose lock a dead one may hold
for its TTL meanwhile."""


class Supervisor:
    """What the deployment's process supervisor does (systemd's Restart=always, supervisord's
    autorestart): start a worker again when it exits. RQ's worker quits when Redis goes away while
    one of its jobs ends (its parent reads the job's status to see how the horse did, and a
    connection error there is "an unhandled exception, quitting"). Restarts are counted."""

    def __init__(self, stack: Stack, names: list[str]):
        self.stack, self.names = stack, names
        self.restarts: list[str] = []
        self.stopped = threading.Event()
        for name in names:
            stack.start_procfile_worker(name, *WORKER_FLAGS)
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.stopped.wait(0.2):
            for name in self.names:
                if self.stack.processes[name].poll() is not None:
                    self.restarts.append(name)
                    self.stack.start_procfile_worker(name, *WORKER_FLAGS)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)


@pytest.fixture
def sentinel_stack(deployment, database_url, tmp_path):
    stack = Stack(deployment.env["REDIS_URL"], database_url, tmp_path, **deployment.env, **STACK_ENV)
    supervisor = None
    try:
        stack.init_db()
        stack.start_web(workers=2)
        supervisor = Supervisor(stack, ["worker0", "worker1"])
        stack.start_cron()
        stack.supervisor = supervisor
        yield stack
    finally:
        if supervisor is not None:
            supervisor.stop()
        stack.close()


# -- the race ---------------------------------------------------------------------------------

POSTS = (("a", "first"), ("a", "first"), ("b", "second"), ("c", "third"))
"""The concurrent first posts of one session: two with the same client_message_id, two others."""

POST_DEADLINE_S = 60.0


class Race:
    """Lanes of sessions, one after another in each lane; each session's first messages are posted
    at one instant (a barrier) by as many threads. A post answered 503 is sent again, with the
    same client_message_id (so a retry never stores a second message), until it is accepted."""

    def __init__(self, stack: Stack, token: str, lanes: int):
        self.stack, self.token, self.lanes = stack, token, lanes
        self.lock = threading.Lock()
        self.refused: list[float] = []  # monotonic times of the 503 answers
        self.accepted: list[tuple[str, str, str, int, dict]] = []  # session, cmid, content, status, body
        self.unexpected: list[str] = []
        self.waits: list[float] = []  # seconds from a post's first send to its acceptance
        self.done: list[tuple[str, float]] = []  # sessions whose posts were all accepted, and when
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._lane, daemon=True) for _ in range(lanes)]

    def start(self) -> Race:
        for thread in self.threads:
            thread.start()
        return self

    def finish(self, timeout: float) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout)
        assert not any(t.is_alive() for t in self.threads), "a lane of the race did not finish"

    def sessions_done(self, after: float = 0.0) -> int:
        with self.lock:
            return sum(1 for _, at in self.done if at > after)

    def _lane(self) -> None:
        while not self.stop.is_set():
            session_id = new_session_id()
            barrier = threading.Barrier(len(POSTS))
            posts = [threading.Thread(target=self._post, args=(session_id, cmid, content, barrier))
                     for cmid, content in POSTS]
            for post in posts:
                post.start()
            for post in posts:
                post.join(POST_DEADLINE_S + 10)
            with self.lock:
                self.done.append((session_id, time.monotonic()))

    def _post(self, session_id: str, cmid: str, content: str, barrier: threading.Barrier) -> None:
        barrier.wait()
        started = time.monotonic()
        end = started + POST_DEADLINE_S
        body = {"content": content, "client_message_id": cmid}
        while time.monotonic() < end:
            try:
                status, _, answer = self.stack.exchange("POST", f"/api/sessions/{session_id}/messages", body,
                                                        self.token)
            except (OSError, http.client.HTTPException) as error:
                with self.lock:
                    self.unexpected.append(f"{session_id}/{cmid}: {error!r}")
                return
            if status == 503:
                with self.lock:
                    self.refused.append(time.monotonic())
                time.sleep(0.05)  # a client's backoff before it sends the same message again
                continue
            with self.lock:
                if status in (200, 202):
                    self.accepted.append((session_id, cmid, content, status, answer))
                    self.waits.append(time.monotonic() - started)
                else:
                    self.unexpected.append(f"{session_id}/{cmid}: {status} {answer}")
            return
        with self.lock:
            self.unexpected.append(f"{session_id}/{cmid}: still refused after {POST_DEADLINE_S} s")


class EventReader:
    """One session's event stream, read in a thread: it stays open across the failover, so its
    process's event hub must follow the master for the reply posted afterwards to reach it."""

    def __init__(self, stack: Stack, token: str, session_id: str):
        self.events: list[tuple[str, dict]] = []
        self.conn = http.client.HTTPConnection("127.0.0.1", stack.port, timeout=120)
        self.conn.request("GET", f"/api/sessions/{session_id}/events", headers={"Authorization": f"Bearer {token}"})
        self.response = self.conn.getresponse()
        assert self.response.status == 200
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        buffer = ""
        try:
            while chunk := self.response.read1(65536):
                buffer += chunk.decode()
                while "\n\n" in buffer:
                    block, buffer = buffer.split("\n\n", 1)
                    fields = dict(line.split(": ", 1) for line in block.splitlines()
                                  if ": " in line and not line.startswith(":"))
                    if "event" in fields:
                        self.events.append((fields["event"], json.loads(fields.get("data") or "{}")))
        except (OSError, http.client.HTTPException, ValueError, AttributeError):
            pass  # closed (by close(): the response's file is then gone, AttributeError)

    def got(self, kind: str, **match) -> bool:
        return any(k == kind and all(d.get(f) == v for f, v in match.items()) for k, d in list(self.events))

    def close(self) -> None:
        self.conn.close()


def _unanswered(db: Database) -> list[Message]:
    with db.read() as session:
        return list(session.scalars(select(Message).where(
            Message.role == MessageRole.USER, Message.status != MessageStatus.ANSWERED)))


def _where_their_jobs_are(deployment: SentinelDeployment, messages: list[Message]) -> list[str]:
    """For a failure message: each unanswered message's reply job, as the new master sees it."""
    from app.jobqueue import reply_job_id

    queue = f"rq:queue:{defaults.QUEUE}"
    with deployment.node(deployment.replica_port) as master, redis.Redis(
            port=deployment.replica_port, password=deployment.password, socket_timeout=2) as raw:
        queued, intermediate = master.lrange(queue, 0, -1), master.lrange(f"{queue}:intermediate", 0, -1)
        started = master.zrange(f"rq:wip:{defaults.QUEUE}", 0, -1)  # execution ids, JOB_ID:EXECUTION
        lines = []
        for message in messages:
            job_id = reply_job_id(defaults.QUEUE, message)
            job = {k.decode(): v.decode(errors="replace") for k, v in raw.hgetall(f"rq:job:{job_id}").items()}
            lines.append(f"message {message.id} ({message.status}, {message.attempts} attempts): job "
                         f"{job.get('status')}, queued {job_id in queued}, "
                         f"intermediate {job_id in intermediate}, started "
                         f"{any(entry.startswith(job_id) for entry in started)}, "
                         f"{ {k: v for k, v in job.items() if k not in ('data', 'description', 'exc_info')} }, "
                         f"first seen {master.get(f'{queue}:intermediate:first_seen:{job_id}')}")
        lines.append(f"locks: { {k: master.pttl(k) for k in master.keys('rq:*lock*')} } "
                     f"cleaning {master.pttl('rq:clean_registries:' + defaults.QUEUE)}")
    return lines


def _arzani(stack: Stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "arzani"), *args], env=stack.env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def frozen_on_sqlite_only(primary, database_url):
    """The suite's time (it must stay under 10 minutes): two runs, not four. The split brain is
    Redis's side and runs on SQLite; the killed primary runs on PostgreSQL when the suite has one
    (its unique index under racing holders is also tested by tests/test_session_race.py), else on
    SQLite. Skipped before the servers start."""
    on_sqlite = database_url.startswith("sqlite")
    if primary == "frozen" and not on_sqlite:
        pytest.skip("the frozen primary runs on SQLite only")
    if primary == "killed" and on_sqlite and POSTGRES_URL:
        pytest.skip("the killed primary runs on PostgreSQL when the suite has one")


@pytest.mark.parametrize("primary", ["killed", "frozen"])
def test_a_failover_in_a_race_of_first_messages_loses_and_splits_nothing(frozen_on_sqlite_only, primary, deployment,
                                                                         sentinel_stack, database_url,
                                                                         record_property):
    """`killed`: SIGKILL, as the issue asks. `frozen`: SIGSTOP, then SIGCONT once the replica is
    promoted, so that for some seconds two servers each believe they are the master and hold
    locks of their own (a sentinel demotes the old one only after it has reported itself master for
    a while): the lock is held twice for real, and the fence and the unique index must cope."""
    stack = sentinel_stack
    token = stack.create_user("sentinel")
    watched = new_session_id()
    posted = stack.request("POST", f"/api/sessions/{watched}/messages", {"content": "before"}, token)
    assert posted[0] == 202, posted
    reader = EventReader(stack, token, watched)
    wait_for(lambda: reader.got("ready"), 10, "the event stream to be ready")

    race = Race(stack, token, lanes=3).start()
    try:
        wait_for(lambda: race.sessions_done() >= 6, 30, "sessions raced before the kill")
        killed_at = time.monotonic()
        if primary == "killed":
            deployment.kill_primary()  # in the middle of the lanes' current sessions
            deployment.wait_failed_over(30)
            promoted_at = settled_at = time.monotonic()
        else:
            deployment.freeze_primary()
            deployment.wait_failed_over(30)
            promoted_at = time.monotonic()
            deployment.thaw_primary()  # back, still the master in its own eyes: two masters for a while
            wait_for(lambda: race.sessions_done(after=promoted_at) >= 3, 60, "sessions raced with two masters")
            deployment.wait_demoted(60)
            settled_at = time.monotonic()
        wait_for(lambda: race.sessions_done(after=settled_at) >= 6, 60, "sessions raced after the failover")
    finally:
        race.finish(POST_DEADLINE_S + 20)
    assert race.unexpected == [], race.unexpected[:10]

    refused_s = (race.refused[-1] - race.refused[0]) if race.refused else 0.0
    first_refusal_s = (race.refused[0] - killed_at) if race.refused else 0.0
    database = database_url.split(":")[0]
    summary = (f"sentinel failover, primary {primary} ({database}): writes refused (503) for {refused_s:.2f} s "
               f"({len(race.refused)} answers, the first {first_refusal_s:.2f} s after the kill); the longest "
               f"a post waited to be accepted: {max(race.waits):.2f} s; the sentinels promoted the replica "
               f"{promoted_at - killed_at:.2f} s after the kill; {len(race.done)} sessions raced; "
               f"workers restarted {len(stack.supervisor.restarts)} time(s)")
    print(summary)
    record_property(f"sentinel_{primary}_writes_refused_s", f"{refused_s:.2f}")
    record_property(f"sentinel_{primary}_promoted_after_s", f"{promoted_at - killed_at:.2f}")
    record_property(f"sentinel_{primary}_longest_post_wait_s", f"{max(race.waits):.2f}")

    # Every accepted message is answered: the worker follows the master, the sweeper enqueues
    # again the replies whose jobs were on the old primary only, and RQ recovers the jobs of the
    # workers that quit. The bound: RQ's recovery (with a maintenance pass around each timer), then
    # RQ's whole retry schedule, plus room for the work itself; the sweeper's delay and interval
    # are shorter and run meanwhile. Usually it takes a few seconds, or about a minute.
    db = Database(database_url)
    try:
        bound = RQ_RECOVERY_S + 3 * MAINTENANCE_INTERVAL_S + sum(defaults.RETRY_INTERVALS_S) + 15
        answering_started = time.monotonic()
        try:
            wait_for(lambda: not _unanswered(db), bound, "every accepted message to be answered", interval=0.2)
        except AssertionError as timed_out:
            raise AssertionError(f"{timed_out}: {_where_their_jobs_are(deployment, _unanswered(db))}") from None
        print(f"sentinel failover, primary {primary}: every message answered "
              f"{time.monotonic() - answering_started:.1f} s after the race ended")

        session_ids = [session_id for session_id, _ in race.done]
        with db.read() as session:
            conversations = {}
            for session_id in session_ids:
                live = session.scalars(select(Conversation).where(
                    Conversation.session_id == session_id, Conversation.deleted_at.is_(None))).all()
                assert len(live) == 1, f"{summary}: session {session_id} has {len(live)} conversations"
                conversations[session_id] = live[0].id
            created = [(session_id, cmid) for session_id, cmid, _, status, _ in race.accepted if status == 202]
            assert len(created) == len(set(created)), f"{summary}: a client_message_id was stored twice"
            for session_id, cmid, content, _, answer in race.accepted:
                assert answer["conversation_id"] == conversations[session_id], summary
                message = session.get(Message, answer["message"]["id"])
                assert (message.conversation_id, message.content, message.client_message_id) == (
                    conversations[session_id], content, cmid), summary
            for session_id, conversation_id in conversations.items():
                rows = session.scalars(select(Message).where(Message.conversation_id == conversation_id)
                                       .order_by(Message.id)).all()
                users = [m for m in rows if m.role == MessageRole.USER]
                replies = [m for m in rows if m.role == MessageRole.ASSISTANT]
                assert sorted(m.client_message_id for m in users) == ["a", "b", "c"], (summary, session_id)
                assert sorted(m.reply_to for m in replies) == sorted(m.id for m in users), (summary, session_id)
            stray = session.scalar(select(func.count()).select_from(Conversation).where(
                Conversation.session_id.notin_([*session_ids, watched])))
            assert stray == 0, summary

        # The session keys on the new master: none names another conversation than the database's.
        with deployment.node(deployment.replica_port) as master:
            tracked = {sid: master.hget(keys.session_key(sid), "cid") for sid in conversations}
        wrong = {sid: cid for sid, cid in tracked.items() if cid is not None and cid != conversations[sid]}
        assert wrong == {}, summary
        missing = sum(1 for cid in tracked.values() if cid is None)
        print(f"sentinel failover, primary {primary}: {missing} of {len(tracked)} session keys missing on the "
              f"new master before reconcile")
        # ... and the operator's reconcile, through the sentinels too, rebuilds any missing one.
        fixed = _arzani(stack, "reconcile", "--fix")
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
        checked = _arzani(stack, "reconcile")
        assert checked.returncode == 0 and "0 finding(s)" in checked.stdout, checked.stdout + checked.stderr
    finally:
        db.dispose()

    # The stream opened before the kill is still open, and hears of a reply made after the failover.
    after = stack.request("POST", f"/api/sessions/{watched}/messages", {"content": "after the failover"}, token)
    assert after[0] == 202, after
    message_id = after[1]["message"]["id"]
    wait_for(lambda: reader.got("reply", reply_to=message_id), 30,
             "the stream opened before the failover to carry the reply made after it")
    reader.close()
