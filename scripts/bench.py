"""`arzani bench`: the service's figures, each beside a baseline measured in the same run.

Everything runs on this machine against a private embedded redis-server and a throwaway SQLite
database (or DATABASE_URL with --database-url), so runs are comparable. A timed figure is measured
in rounds, ours and its baseline interleaved, their order alternating per round; the table shows
the median of the rounds' ratios, their spread and a verdict (scripts/benchfigures.py). Figures:

- Redis round trips and commands per message, web side (existing session) and end to end
  (web + reply job), against a bare RQ enqueue + no-op job;
- lock hand-off: 16 concurrent first messages on one session, the losers' extra wait after the
  winner is done (p50, p99), against the same race handed off by redis-py's polling Lock;
- accepted messages/s under gunicorn, and the web processes' CPU per accepted message, against
  a baseline endpoint that does the same insert and enqueue without session resolution (the same
  gunicorn serves both, under one steady load whose path switches: `SteadyLoad`);
- reply latency with the echo agent (p50, p99) against a no-op RQ job, stock rq worker;
- replies/s with 1, 2 and 4 stock rq workers (one message per session) against no-op jobs/s on
  the same workers; messages/s end to end (accepted and answered) under `arzani race` load;
- agent calls per user message in a burst;
- sidebar page time at 10k and 1M messages;
- Redis memory per session (MEMORY USAGE);
- open event streams: POST p99 while 2,000 streams are open against the `make run` web defaults,
  beside the POST p99 of an identical server with none; the Redis connections they cost; the
  largest count that held; the event log's bytes per token and its retention.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import click
import redis
from redis.connection import Connection

from scripts.benchfigures import UNSURE, Figures

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
"""This checkout: the processes the bench starts import its code, not an installed copy's."""


def noop() -> None:
    """The baseline job: RQ's own cost, nothing of ours."""


def pct(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(sorted(values), n=100, method="inclusive")[q - 1]


def in_order(round_index: int, ours, baseline) -> list:
    """The two measurements of a round, ours first in even rounds and the baseline first in odd
    ones: neither is always the one that runs on a warmer (or a busier) machine."""
    return [ours, baseline] if round_index % 2 == 0 else [baseline, ours]


def mirrored(round_index: int, ours, baseline, pairs: int) -> list:
    """A round's turns in order (ingest's windows, the replies/s batches, the hand-off races):
    `pairs` pairs of (ours, baseline), every other pair reversed, the first as `in_order` has it."""
    order = []
    for pair in range(pairs):
        order += in_order(round_index + pair, ours, baseline)
    return order


@dataclass(frozen=True)
class Sizes:
    """How much each figure measures: `--smoke` exercises every row with tiny sizes."""

    rounds: int = 5
    web_workers: int = 4  # gunicorn processes, as `make run` starts them
    round_trip_messages: int = 50
    burst_rounds: int = 5
    handoff_sessions: int = 60  # a side: ours, and redis-py's polling (0.1 s a race)
    ingest_sessions: int = 50
    # Each side is measured in `ingest_windows` windows a round, in turn: with 0.5 s windows, 8 a
    # side, the rounds' ratios scattered by +-4% (this VM loses half a core for seconds at a
    # time); with 24 of 0.3 s, by +-1% to 2%. The settling time lets the requests sent to the
    # other side be answered first (with 0.1 s, 5% of the answers came later than that).
    ingest_window_s: float = 0.3
    ingest_settle_s: float = 0.15
    ingest_windows: int = 24
    warm_posts: int = 200
    latency_messages: int = 10
    throughput_messages: int = 60  # a side, a round: with 30 (under a second) the 4-worker row scattered by +-10%
    race_sessions: int = 3
    race_racers: tuple[int, int] = (4, 4)  # processes x threads, on each session's first message
    event_log_tokens: int = 1000
    stream_counts: tuple[int, ...] = (2000, 3000, 3800)
    stream_posts: int = 400  # a side, a round: its p99 is the 4th slowest (with 200, the 2nd: it flipped verdicts)
    sidebar: tuple[int, int] = (10_000, 1_000_000)
    sidebar_pages: int = 100  # timed per database per round


FULL = Sizes()
QUICK = replace(FULL, rounds=3, burst_rounds=3, ingest_windows=12, throughput_messages=20, race_sessions=2,
                stream_counts=(2000,), stream_posts=150, sidebar=(10_000, 100_000))
SMOKE = Sizes(rounds=2, web_workers=2, round_trip_messages=10, burst_rounds=1, handoff_sessions=4,
              ingest_sessions=4, ingest_window_s=0.05, ingest_settle_s=0.02, ingest_windows=2, warm_posts=8,
              latency_messages=2, throughput_messages=3,
              race_sessions=1, race_racers=(2, 2), event_log_tokens=100, stream_counts=(50,), stream_posts=30,
              sidebar=(1_000, 2_000), sidebar_pages=10)


# -- counting Redis round trips ----------------------------------------------------------------

class RoundTrips:
    """Counts what this process sends to Redis: one `send_packed_command` is one round trip
    (a pipeline or a script is one), whatever client sends it."""

    count = 0
    _original = Connection.send_packed_command

    @classmethod
    def install(cls) -> None:
        def counted(self, command, check_health=True):
            cls.count += 1
            return cls._original(self, command, check_health)

        Connection.send_packed_command = counted


def commands_processed(client: redis.Redis) -> int:
    return int(client.info("stats")["total_commands_processed"])


# -- the benches -------------------------------------------------------------------------------

def bench_round_trips(services, client, headers, figures: Figures, messages: int = 50) -> None:
    """Exact counts: no rounds, no spread."""
    from rq import SimpleWorker

    probe = redis.Redis.from_url(services.settings.redis_url)
    session_id = uuid.uuid4().hex
    client.post(f"/api/sessions/{session_id}/messages", json={"content": "warm up"}, headers=headers)
    SimpleWorker([services.queue], connection=services.rq_redis).work(burst=True)

    def measure(action) -> tuple[float, float]:
        RoundTrips.count, before = 0, commands_processed(probe)
        for n in range(messages):
            action(n)
        trips = RoundTrips.count
        commands = commands_processed(probe) - before - 1  # less the INFO that measured it
        return trips / messages, commands / messages

    def post(n, forget=False):
        if forget:  # as a web process that never saw the session (sessions.RecentSessions)
            services.sessions.recent.drop(session_id)
        client.post(f"/api/sessions/{session_id}/messages", json={"content": f"m{n}"}, headers=headers)

    new_rt, _ = measure(lambda n: post(n, forget=True))
    SimpleWorker([services.queue], connection=services.rq_redis).work(burst=True)
    web_rt, web_cmd = measure(post)
    RoundTrips.count, before = 0, commands_processed(probe)
    SimpleWorker([services.queue], connection=services.rq_redis).work(burst=True)
    job_rt, job_cmd = RoundTrips.count / messages, (commands_processed(probe) - before - 1) / messages
    base_rt, base_cmd = measure(lambda n: services.queue.enqueue(noop))
    RoundTrips.count, before = 0, commands_processed(probe)
    SimpleWorker([services.queue], connection=services.rq_redis).work(burst=True)
    base_job_rt, base_job_cmd = RoundTrips.count / messages, (commands_processed(probe) - before - 1) / messages
    figures.add("web: Redis round trips / message", web_rt, base_rt, "rt")
    figures.add("web: round trips of ours (beyond RQ's enqueue)", web_rt - base_rt, None, "rt", "<= 1")
    figures.add("  the same, a session new to the web process", new_rt - base_rt, None, "rt", "<= 1")
    figures.add("web: Redis commands / message", web_cmd, base_cmd, "cmd")
    figures.add("end to end: round trips / message", web_rt + job_rt, base_rt + base_job_rt, "rt")
    figures.add("end to end: commands / message", web_cmd + job_cmd, base_cmd + base_job_cmd, "cmd")
    probe.close()


POLLED = "arzani:bench:polled:"
"""The baseline of the hand-off race: `POLLED + SID` is set by the winner under redis-py's Lock."""


def _polling_resolve(services, session_id: str, user_id: int) -> str:
    """The hand-off as redis-py's Lock leaves it (the issue's baseline): a racer that does not
    get the lock looks again every `Lock.sleep` (0.1 s, redis-py's default, what its blocking
    `acquire` sleeps between attempts) for the winner's mark; the winner resolves the session
    (our lock, uncontended, inside it) and sets the mark."""
    client = services.redis
    lock = client.lock(f"arzani:bench:polling-lock:{session_id}", timeout=30)
    while True:
        if client.get(POLLED + session_id):
            return "waited"
        if lock.acquire(blocking=False):
            try:
                if client.get(POLLED + session_id):
                    return "waited"
                services.sessions.resolve(session_id, user_id)
                client.set(POLLED + session_id, 1, ex=600)
                return "created"
            finally:
                lock.release()
        time.sleep(lock.sleep)


def _handoff_racer(settings, user_id, races, barrier, results):
    """One OS process of the hand-off race: resolve each session when the barrier lets go, by
    our lock or (the baseline) by redis-py's polling one, as `races` says."""
    from app.wiring import Wiring

    services = Wiring(settings)
    out = []
    for session_id, kind in races:
        barrier.wait()
        started = time.monotonic_ns()  # one clock for every process on the machine
        how = (services.sessions.resolve(session_id, user_id).how if kind == "ours"
               else _polling_resolve(services, session_id, user_id))
        out.append((session_id, how, started, time.monotonic_ns()))
    results.put(out)


def bench_lock_handoff(services, user_id: int, figures: Figures, racers: int = 16, sessions: int = 30,
                       rounds: int = 3) -> None:
    """16 OS processes (as 16 gunicorn workers would be) race each session's first resolution:
    the losers' extra wait after the winner is done. The baseline is the same race handed off by
    redis-py's blocking Lock, which polls (the issue: stay ahead of it). `sessions` races a side,
    taking turns mirrored (`mirrored`), cut into `rounds` rounds, a p50 and p99 each."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    per_round = max(1, sessions // rounds)
    races = [(uuid.uuid4().hex, kind) for r in range(rounds)
             for kind in mirrored(r, "ours", "polling", pairs=per_round)]
    barrier, results = context.Barrier(racers), context.Queue()
    children = [context.Process(target=_handoff_racer, args=(services.settings, user_id, races, barrier, results))
                for _ in range(racers)]
    for child in children:
        child.start()
    rows = [row for _ in children for row in results.get(timeout=600)]
    for child in children:
        child.join(30)
    by_session: dict = {}
    for row in rows:
        by_session.setdefault(row[0], []).append(row)
    figures_of = {50: ([], []), 99: ([], [])}
    for r in range(rounds):
        extra: dict = {"ours": [], "polling": []}
        for session_id, kind in races[r * 2 * per_round:(r + 1) * 2 * per_round]:
            race = by_session[session_id]
            winners = [row for row in race if row[1] == "created"]
            if len(winners) != 1 or any(row[1] not in ("created", "waited", "tracked") for row in race):
                # either side's hand-off made two conversations (or none): no figure means anything
                raise click.ClickException(f"lock hand-off ({kind}): a race ended {sorted(r[1] for r in race)}")
            winner = winners[0]
            extra[kind] += [max(0.0, (row[3] - winner[3]) / 1e6) for row in race if row[1] == "waited"]
        for q, (ours, base) in figures_of.items():
            # A round where every loser came after the winner's commit had no one waiting: its
            # extra wait is 0 (smoke size met it; quantiles of nothing raise).
            ours.append(pct(extra["ours"] or [0.0], q))
            base.append(pct(extra["polling"] or [0.0], q))
    figures.add_rounds("lock hand-off: losers' extra wait p50", *figures_of[50], "ms")
    # The issue asks the hand-off to stay ahead of redis-py's polling (p99 42.90 ms in its run).
    # Against that polling, raced in the same rounds, rather than a fixed 10 ms (was 5 ms): 16
    # processes on 2 cores put ours at 3 to 11 ms as the machine's speed drifted, astride either.
    figures.add_rounds("lock hand-off: losers' extra wait p99", *figures_of[99], "ms", "<= 0.25x")


def _process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (gunicorn's master and its workers)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(child) for child in task.read_text().split()]
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and its descendants, from /proc (Linux)."""
    ticks, total = os.sysconf("SC_CLK_TCK"), 0
    for member in _process_tree(pid):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{member}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # the stat file's 14th and 15th fields
    return total / ticks


UNSERVED_QUEUE = "arzani-bench-unserved"
"""The ingest gunicorn's queue: no worker takes its jobs, so the idle workers cost ingest nothing."""


class SteadyLoad:
    """`threads` client threads posting without pause, each on its own keep-alive connection, to
    the path that `side` names at the moment a request is sent. Each answer is recorded with its
    side and the time it came.

    Why not batches of N messages a side (as this bench did): this VM's speed drifts by tens of
    percent within seconds (the same loop took 0.96 s and 1.90 s a minute apart), so each side
    must be measured many times, briefly, in turn; and a batch's start and end (threads and
    connections opened, the last requests answered at a falling concurrency) cost time that is
    not the server's throughput. Here the load never stops: `window` switches the side, waits for
    the requests sent to the other side to be answered (`settle_s`), and then counts, over
    `window_s`, only the answers of its own side, at full concurrency all along."""

    def __init__(self, port: int, token: str, paths: dict, threads: int = 16):
        self.port, self.token, self.paths = port, token, paths
        self.side = next(iter(paths))
        self.answers: list[list[tuple[object, float]]] = [[] for _ in range(threads)]
        self.errors: list = []  # statuses other than 200/202, and exceptions
        self._numbers = iter(range(10**12))  # next() on a range iterator is atomic under the GIL
        self._times: dict | None = None  # count()'s index of the answers
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._post, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> SteadyLoad:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def _post(self, index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        answers = self.answers[index]
        try:
            while not self._stop.is_set():
                side, n = self.side, next(self._numbers)
                conn.request("POST", self.paths[side](n), body=json.dumps({"content": f"load {n}"}), headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status not in (200, 202):
                    self.errors.append(response.status)
                answers.append((side, time.perf_counter()))
        except Exception as error:  # noqa: BLE001 - reported by the window that counts nothing
            self.errors.append(repr(error))
        finally:
            conn.close()

    def window(self, side, window_s: float, settle_s: float, pid: int) -> tuple[float, float, float]:
        """Switch to `side`, settle, then measure it for `window_s`: (start, end, web CPU seconds)."""
        self.side = side
        time.sleep(settle_s)
        started, cpu = time.perf_counter(), cpu_seconds(pid)
        time.sleep(window_s)
        return started, time.perf_counter(), cpu_seconds(pid) - cpu

    def count(self, side, started: float, ended: float) -> tuple[int, int]:
        """(answers of `side`, answers of the other sides) that came within [started, ended).
        For after the load: the answers' times, by side, are sorted once on the first call."""
        if any(t.is_alive() for t in self._threads):
            raise RuntimeError("count() is for after the load: answers are still coming")
        if self._times is None:
            self._times = {}
            for answers in self.answers:
                for answered_side, at in answers:
                    self._times.setdefault(answered_side, []).append(at)
            for times in self._times.values():
                times.sort()
        within = {key: bisect.bisect_left(times, ended) - bisect.bisect_left(times, started)
                  for key, times in self._times.items()}
        ours = within.pop(side, 0)
        return ours, sum(within.values())


def bench_ingest(web: Web, token: str, figures: Figures, sessions: int = 50, window_s: float = 0.3,
                 settle_s: float = 0.15, windows: int = 24, rounds: int = 5, warm_s: float = 1.0) -> None:
    """gunicorn as `make run` starts it (4 gevent processes), 16 client threads posting without
    pause (`SteadyLoad`), messages spread over existing sessions; the baseline endpoint is served
    by the same gunicorn. Each round measures each side in `windows` windows of `window_s`, in
    turn and mirrored (`mirrored`: A B B A A B ...), and reads the web processes' CPU time
    (master and workers, /proc) over each window; a round's figure is the sum over its windows:
    answers / seconds, CPU / answers."""
    port = web.port
    session_ids = [uuid.uuid4().hex for _ in range(sessions)]
    conversation_of = {}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for session_id in session_ids:
        conn.request("POST", f"/api/sessions/{session_id}/messages", body=json.dumps({"content": "start"}),
                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        conversation_of[session_id] = json.loads(conn.getresponse().read())["conversation_id"]
    conn.close()

    def ours(n):
        return f"/api/sessions/{session_ids[n % sessions]}/messages"

    def baseline(n):
        session_id = session_ids[n % sessions]
        return f"/bench/baseline/{session_id}/{conversation_of[session_id]}"

    rates: dict = {ours: [], baseline: []}
    cpu_us: dict = {ours: [], baseline: []}
    strays = 0
    with SteadyLoad(port, token, {ours: ours, baseline: baseline}) as load:
        for side in (ours, baseline):  # warm every process on both paths
            load.window(side, warm_s / 2, 0.0, web.process.pid)
        measured = [(r, side, *load.window(side, window_s, settle_s, web.process.pid))
                    for r in range(rounds) for side in mirrored(r, ours, baseline, windows)]
    if load.errors:
        raise click.ClickException(f"load answered errors: {load.errors[:5]}")
    for r in range(rounds):
        answered = {ours: 0, baseline: 0}
        seconds = {ours: 0.0, baseline: 0.0}
        cpu = {ours: 0.0, baseline: 0.0}
        for _r, side, started, ended, window_cpu in (w for w in measured if w[0] == r):
            counted, other = load.count(side, started, ended)
            answered[side] += counted
            strays += other
            seconds[side] += ended - started
            cpu[side] += window_cpu
        for side in (ours, baseline):
            if not answered[side]:
                raise click.ClickException("ingest: a round's windows saw no answer (is the server up?)")
            rates[side].append(answered[side] / seconds[side])
            cpu_us[side].append(cpu[side] * 1e6 / answered[side])
    if strays:  # answers to the other side after the settling time: those windows shared the CPU
        import logging

        logging.getLogger("arzani.bench").warning(
            "ingest: %d answers to the other side came later than %.2f s after a switch", strays, settle_s)
    figures.add_rounds(f"ingest under gunicorn ({web.workers} gevent), accepted messages/s", rates[ours],
                       rates[baseline], "msg/s", ">= 0.9x")
    figures.add_rounds("web CPU per accepted message (gunicorn master + workers)", cpu_us[ours],
                       cpu_us[baseline], "us", "<= 1.3x")
    web.drop_queued_jobs()  # the load left thousands of reply jobs queued, and no worker ran


class Web:
    """gunicorn as the Procfile's `web` runs it with `make run`'s defaults (gevent, 4 processes),
    serving `app`; started at once, waited for with `ready()` (two start side by side)."""

    def __init__(self, env: dict, app: str, workers: int = 4):
        from scripts.localservers import free_port

        self.env, self.port, self.workers = env, free_port(), workers
        self.process = subprocess.Popen(
            [str(BIN / "gunicorn"), "--worker-class", "scripts.gunicorn_worker.GeventWorker",
             "--workers", str(workers), "--worker-connections", "1000", "--graceful-timeout", "1",
             "--no-control-socket", "--chdir", str(ROOT), "--bind", f"127.0.0.1:{self.port}", app],
            env=env, cwd=ROOT, stdout=_log_file(env), stderr=subprocess.STDOUT)

    def ready(self, timeout_s: float = 60) -> Web:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise click.ClickException(f"gunicorn did not start for the bench; see {self.env['ARZANI_BENCH_LOG']}")
            time.sleep(0.1)

    def drop_queued_jobs(self) -> None:
        from rq import Queue

        connection = redis.Redis.from_url(self.env["REDIS_URL"])
        Queue(self.env["ARZANI_QUEUE"], connection=connection).empty()
        connection.close()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


class Workers:
    """Stock `rq worker` processes as the Procfile's `worker` runs them; started together (one
    start-up for every count the throughput figures need), stopped one by one."""

    def __init__(self, env: dict, count: int):
        self.env = env
        self.stopped: list[subprocess.Popen] = []
        self.processes = [subprocess.Popen(
            [str(BIN / "rq"), "worker", "-c", "workers.rq_settings", "--path", str(ROOT), "--url", env["REDIS_URL"],
             "--name", f"bench-{n}-{uuid.uuid4().hex[:6]}", env["ARZANI_QUEUE"]],
            env=env, cwd=ROOT, stdout=_log_file(env), stderr=subprocess.STDOUT) for n in range(count)]

    def ready(self, services, timeout_s: float = 60) -> Workers:
        """Every worker registered with Redis (it has imported the jobs and listens)."""
        from rq import Worker

        started = time.perf_counter()
        while len(Worker.all(connection=services.rq_redis)) < len(self.processes):
            if any(p.poll() is not None for p in self.processes) or time.perf_counter() - started > timeout_s:
                raise click.ClickException(f"rq workers did not start; see {self.env['ARZANI_BENCH_LOG']}")
            time.sleep(0.05)
        return self

    def keep(self, services, count: int) -> None:
        """Stop workers (warm shutdown: each finishes its job) until `count` are left."""
        from rq import Worker

        stopping, self.processes = self.processes[count:], self.processes[:count]
        for process in stopping:
            process.send_signal(signal.SIGTERM)
        self.stopped += stopping  # reaped by stop(): a worker deregisters before its last second of teardown
        started = time.perf_counter()
        while len(Worker.all(connection=services.rq_redis)) > count:  # its registration goes as it exits
            _give_up_after(started, "a stopped worker's deregistration", self.env)
            time.sleep(0.05)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes + self.stopped:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
        self.processes, self.stopped = [], []
class StreamHolder:
    """Holds many open event streams from one asyncio loop in a thread of its own (one thread
    per stream would measure the bench, not the server)."""

    def __init__(self, port: int, token: str):
        self.port, self.token = port, token
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.writers: list[asyncio.StreamWriter] = []
        self.failures: list[str] = []

    async def _open_one(self) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write((f"GET /api/sessions/{uuid.uuid4().hex}/events HTTP/1.1\r\nHost: bench\r\n"
                      f"Authorization: Bearer {self.token}\r\n\r\n").encode())
        await writer.drain()
        seen = b""
        while b"event: ready" not in seen:
            chunk = await asyncio.wait_for(reader.read(4096), 60)
            if not chunk:
                raise EOFError(seen[:200].decode(errors="replace"))
            seen = seen[-4096:] + chunk
        self.writers.append(writer)
        self.loop.create_task(self._drain(reader))

    @staticmethod
    async def _drain(reader: asyncio.StreamReader) -> None:
        try:
            while await reader.read(65536):
                pass
        except (ConnectionError, OSError):
            pass

    async def _open(self, count: int, batch: int) -> None:
        for start in range(0, count, batch):
            results = await asyncio.gather(*(self._open_one() for _ in range(min(batch, count - start))),
                                           return_exceptions=True)
            self.failures += [repr(r) for r in results if isinstance(r, BaseException)]

    def open(self, count: int, batch: int = 50) -> int:
        """Open `count` more streams, each until its `ready`; returns how many are open in all."""
        asyncio.run_coroutine_threadsafe(self._open(count, batch), self.loop).result(timeout=600)
        return len(self.writers)

    def close(self) -> None:
        async def _close():
            for writer in self.writers:
                writer.close()

        asyncio.run_coroutine_threadsafe(_close(), self.loop).result(timeout=60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _post_latencies(ports: list[int], token: str, count: int) -> list[list[float]]:
    """`count` POSTs to each server of `ports`, each timed (ms), taking turns one POST at a time
    (A B B A A B ...: a moment the machine is slow falls on every side alike, where a batch a
    side left a p99 to whichever side met it), one keep-alive connection and a fresh session per
    server (its first message, the one that creates the conversation, untimed: a session holds
    2,000 messages at most)."""
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=60) for port in ports]
    session_ids = [uuid.uuid4().hex for _ in ports]
    timings: list[list[float]] = [[] for _ in ports]
    order = list(range(len(ports)))
    for n in range(count + 1):
        for i in (order if n % 2 == 0 else order[::-1]):
            started = time.perf_counter()
            conns[i].request("POST", f"/api/sessions/{session_ids[i]}/messages",
                             body=json.dumps({"content": f"p{n}"}), headers=headers)
            response = conns[i].getresponse()
            response.read()
            if n:
                timings[i].append((time.perf_counter() - started) * 1000)
            if response.status not in (200, 202):
                raise click.ClickException(f"a POST answered {response.status}")
    for conn in conns:
        conn.close()
    return timings


def bench_open_streams(holding: Web, idle: Web, token: str, figures: Figures, max_connections: int,
                       counts=(2000, 3000, 3800), posts: int = 300, rounds: int = 5, warm: int = 50) -> None:
    """Open event streams held against one gunicorn (the Procfile's web, `make run`'s defaults: 4
    gevent processes x 1,000 connections) while a client POSTs messages one after the other; the
    baseline is the POSTs' p99 at an identical gunicorn holding none, the two taking turns one
    POST at a time (`_post_latencies`).
    The first count is measured in `rounds` rounds; each larger one in one round, only to find the
    largest count that holds."""
    probe = redis.Redis.from_url(holding.env["REDIS_URL"])
    holder = StreamHolder(holding.port, token)
    try:
        _post_latencies([holding.port, idle.port], token, warm)  # warm every process
        base_clients = len(probe.client_list())
        held, first_verdict = 0, None
        for n, count in enumerate(counts):
            if holder.open(count - len(holder.writers)) < count:
                click.echo(f"  {count:,} streams: only {len(holder.writers):,} opened "
                           f"({holder.failures[:1]})", err=True)
                break
            p99: dict = {holding: [], idle: []}
            for r in range(rounds if n == 0 else 1):
                first, second = in_order(r, holding, idle)
                for web, timings in zip((first, second), _post_latencies([first.port, second.port], token, posts),
                                        strict=True):
                    p99[web].append(pct(timings, 99))
            clients = len(probe.client_list())
            ratio = statistics.median(o / b for o, b in zip(p99[holding], p99[idle], strict=True))
            click.echo(f"  {count:,} streams open: POST p99 {statistics.median(p99[holding]):.2f} ms "
                       f"({ratio:.2f}x), {clients} Redis connections", err=True)
            if n == 0:
                first_verdict = figures.add_rounds(f"POST p99 with {count:,} open event streams", p99[holding],
                                                   p99[idle], "ms", "<= 1.5x")
                bound = base_clients + holding.workers * 2 * max_connections
                figures.add(f"Redis connections ({holding.workers} web processes) with {count:,} streams open", clients,
                            base_clients, "conn", f"<= {bound} (the pools' bound, 2 x {max_connections} a process)")
                if first_verdict == "MISS":
                    break
            elif ratio > 1.5:
                break
            held = count
        figures.add("open event streams held (all ready, POST p99 <= 1.5x)", held, None, "streams",
                    f">= {counts[0]:,}", verdict=UNSURE if first_verdict == UNSURE else None)
    finally:
        holder.close()
        holding.drop_queued_jobs()
        idle.drop_queued_jobs()
        probe.close()


def bench_event_log(services, figures: Figures, tokens: int = 1000) -> None:
    """What one reply's events cost in Redis: MEMORY USAGE of a session's log per token, beside
    the token's own JSON; and how long the log is kept."""
    from app import events

    session_id = uuid.uuid4().hex
    generation = events.Generation(services.events, session_id, reply_to=1, attempt=1)
    payload = 0
    for n in range(tokens):
        delta = f" word{n % 10}"
        payload += len(json.dumps({"type": "token", "reply_to": 1, "epoch": generation.epoch, "delta": delta}))
        generation.token(delta)
    usage = services.redis.memory_usage(events.session_log(session_id).key, samples=0)
    figures.add("event log: Redis bytes per token", usage / tokens, payload / tokens, "bytes")
    figures.add("event log: kept after the reply is attached", services.settings.events_retain_s, None, "s")
    figures.add("event log: entries kept at most (a reply's tokens)", events.SESSION_LOG_MAXLEN, None, "entries")


WAIT_LIMIT_S = 60.0
"""A reply or a no-op job that takes longer than this is a failure of the run, not a figure."""


def _give_up_after(started: float, what: str, env: dict) -> None:
    if time.perf_counter() - started > WAIT_LIMIT_S:
        raise click.ClickException(f"{what} did not come within {WAIT_LIMIT_S:.0f} s; "
                                   f"see {env['ARZANI_BENCH_LOG']}")


def _wait_finished(services, env: dict, job_ids: list[str], what: str, started: float) -> float:
    """Poll RQ's finished-job registry until every job of `job_ids` is in it; the time it was."""
    from rq.registry import FinishedJobRegistry

    key = FinishedJobRegistry(queue=services.queue).key
    remaining = list(job_ids)
    while True:
        pipe = services.rq_redis.pipeline(transaction=False)
        for job_id in remaining:
            pipe.zscore(key, job_id)
        remaining = [job_id for job_id, score in zip(remaining, pipe.execute(), strict=True) if score is None]
        now = time.perf_counter()
        if not remaining:
            return now
        _give_up_after(started, what, env)
        time.sleep(0.003)


def _noop_rate(services, env: dict, count: int) -> float:
    """No-op jobs/s: from the enqueue of `count` of them to the last one finished."""
    started = time.perf_counter()
    job_ids = [services.queue.enqueue(noop).id for _ in range(count)]
    return count / (_wait_finished(services, env, job_ids, f"{count} no-op jobs", started) - started)


def _pending_messages(services, user_id: int, count: int) -> list:
    """`count` user messages, each the first of a session of its own, committed `pending` with no
    reply job yet (what POST does, less the enqueue)."""
    from app.conversations import store_user_message

    messages = []
    for n in range(count):
        session_id = uuid.uuid4().hex
        resolved = services.sessions.resolve(session_id, user_id)
        messages.append(store_user_message(services, resolved.conversation_id, session_id, user_id,
                                           f"throughput {n}", None))
    return messages


def _reply_rate(services, env: dict, user_id: int, count: int) -> float:
    """Replies/s: from the enqueue of `count` reply jobs (one message per session: nothing
    serializes on a session) to the last one finished (its reply committed)."""
    from app.jobqueue import enqueue_reply

    messages = _pending_messages(services, user_id, count)
    started = time.perf_counter()
    job_ids = [enqueue_reply(services.queue, services.settings, message) for message in messages]
    return count / (_wait_finished(services, env, job_ids, f"{count} replies", started) - started)


def bench_throughput(services, user_id: int, workers: Workers, figures: Figures, counts=(4, 2, 1),
                     messages: int = 60, rounds: int = 5) -> None:
    """Replies/s with each count of stock rq workers beside no-op jobs/s on the same workers, in
    rounds of `messages` jobs a side (two mirrored batches each). From the most workers to the
    fewest: stopping one is quick, starting one is not."""
    for count in sorted(counts, reverse=True):
        workers.keep(services, count)
        _noop_rate(services, workers.env, count)  # each worker's first horse, and the machine, warm
        rates: dict = {"ours": [], "noop": []}
        half = max(1, messages // 2)
        for r in range(rounds):
            # Two batches a side, mirrored (A B B A, B A A B): a drift of the machine's speed
            # within the round falls on both sides alike, where one batch each left it to one.
            seconds = {"ours": 0.0, "noop": 0.0}
            for kind in mirrored(r, "ours", "noop", pairs=2):
                rate = (_reply_rate(services, workers.env, user_id, half) if kind == "ours"
                        else _noop_rate(services, workers.env, half))
                seconds[kind] += half / rate
            for kind in ("ours", "noop"):
                rates[kind].append(2 * half / seconds[kind])
        plural = "s" if count > 1 else ""
        figures.add_rounds(f"replies/s, {count} rq worker{plural} (echo agent, a session each)", rates["ours"],
                           rates["noop"], "msg/s", ">= 0.8x")


def bench_race_load(services, race_token: str, web: Web, figures: Figures, sessions: int = 3,
                    rounds: int = 5, processes: int = 4, concurrency: int = 4) -> None:
    """`arzani race`'s load (scripts/race.py: processes x concurrency racers on each session's
    first message) against the bench's gunicorn and the workers running; messages/s accepted and
    answered (first POST to last reply), beside no-op jobs/s on the same workers, alternating."""
    from scripts.race import run_race

    total = processes * concurrency * sessions
    rates: dict = {"race": [], "noop": []}
    broken = 0
    for r in range(rounds):
        for kind in in_order(r, "race", "noop"):
            if kind == "noop":
                rates["noop"].append(_noop_rate(services, web.env, total))
                continue
            report = run_race(f"http://127.0.0.1:{web.port}", race_token, processes, sessions, concurrency,
                              WAIT_LIMIT_S)
            broken += (report["duplicates"] + report["misplaced_replies"] + report["missing_replies"]
                       + report["errors"])
            if report["answered_per_s"] is None:
                raise click.ClickException(f"the race's replies did not all come: {report}")
            rates["race"].append(report["answered_per_s"])
    figures.add_rounds(f"race load ({processes}x{concurrency} racers a session): msg/s accepted and answered",
                       rates["race"], rates["noop"], "msg/s")
    figures.add("race load: duplicated, misplaced, missing or refused", broken, None, "msgs", "exactly 0")


def bench_reply_latency(services, client, headers, env, figures: Figures, count: int = 12, rounds: int = 5) -> None:
    """One stock rq worker; time from the POST's answer to the reply attached, beside a no-op
    job's enqueue to finished. Each round times `count` of each, one after the other, ours and
    the no-op alternating (the no-op first in odd rounds), in a session of its own."""
    from sqlalchemy import select

    from app.models import Message

    def reply_ms(session_id: str, n: int) -> float:
        posted = client.post(f"/api/sessions/{session_id}/messages", json={"content": f"q{n}"},
                             headers=headers).json
        started = time.perf_counter()  # from the 202 (the job is enqueued) to the reply attached
        while True:
            with services.db.read() as db:
                if db.scalar(select(Message.id).where(Message.reply_to == posted["message"]["id"])):
                    break
            _give_up_after(started, f"the reply to message {posted['message']['id']}", env)
            time.sleep(0.002)
        return (time.perf_counter() - started) * 1000

    def noop_ms(_session_id: str, _n: int) -> float:
        started = time.perf_counter()
        job = services.queue.enqueue(noop)
        while job.get_status(refresh=True) != "finished":
            _give_up_after(started, "a no-op job", env)
            time.sleep(0.002)
        return (time.perf_counter() - started) * 1000

    warm = uuid.uuid4().hex
    reply_ms(warm, 0)
    noop_ms(warm, 0)
    p50: dict = {reply_ms: [], noop_ms: []}
    p99: dict = {reply_ms: [], noop_ms: []}
    for r in range(rounds):
        session_id = uuid.uuid4().hex
        samples: dict = {reply_ms: [], noop_ms: []}
        for n in range(count):
            for measure in in_order(r, reply_ms, noop_ms):
                samples[measure].append(measure(session_id, n))
        for measure, timings in samples.items():
            p50[measure].append(pct(timings, 50))
            p99[measure].append(pct(timings, 99))
    figures.add_rounds("reply latency p50 (echo agent)", p50[reply_ms], p50[noop_ms], "ms", "<= 1.2x")
    figures.add_rounds("reply latency p99 (echo agent)", p99[reply_ms], p99[noop_ms], "ms", "<= 1.3x")


def bench_burst(services, client, headers, env, figures: Figures, messages: int = 10, rounds: int = 3,
                workers: int = 4) -> None:
    """Agent calls per user message when `messages` are posted at once in one session and
    `workers` stock rq workers (running) race for their jobs: each generation is claimed before
    the agent is called, so this is 1.00 (it was up to k(k+1)/2 calls for k messages before issue
    12). Counted twice: the attempts the database recorded, and the `start` events of the
    session's log. An exact count: every round must give 1.00."""
    from sqlalchemy import func, select

    from app import keys
    from app.models import Message

    attempts, starts = [], []
    for _ in range(rounds):
        session_id = uuid.uuid4().hex
        ids = [client.post(f"/api/sessions/{session_id}/messages", json={"content": f"burst {n}"},
                           headers=headers).json["message"]["id"] for n in range(messages)]
        started = time.perf_counter()
        while True:
            with services.db.read() as db:
                pending = db.scalar(select(func.count()).where(Message.id.in_(ids), Message.status == "pending"))
            if not pending:
                break
            _give_up_after(started, "the burst's replies", env)
            time.sleep(0.01)
        with services.db.read() as db:
            attempts.append(db.scalar(select(func.sum(Message.attempts)).where(Message.id.in_(ids))) / messages)
        starts.append(sum(1 for _, fields in services.redis.xrange(keys.session_log(session_id))
                          if fields["type"] == "start") / messages)
    figures.add_rounds(f"agent calls / user message, burst of {messages}, {workers} workers", attempts, None,
                       "calls", "exactly 1.00")
    figures.add_rounds("  generations started (start events) / user message", starts, None, "starts",
                       "exactly 1.00")


def _sidebar_database(size: int):
    """A database of its own (SQLite) with 200 conversations and `size` messages."""
    from sqlalchemy import insert

    from app.config import Settings
    from app.models import Conversation, Message, User, utcnow
    from app.wiring import Wiring

    directory = tempfile.mkdtemp(prefix="arzani-bench-sidebar-")
    services = Wiring(Settings(redis_url=None, database_url=f"sqlite:///{directory}/s.db"))
    services.db.create_all()
    conversations, per = 200, size // 200
    now = utcnow()
    with services.db.write() as db:
        db.add(User(id=1, name="bench"))
        db.flush()
        db.execute(insert(Conversation), [
            {"id": f"c{c:05d}", "user_id": 1, "session_id": f"s{c:08d}", "title": f"chat {c}",
             "created_at": now, "updated_at": now, "created_by": "bench", "creation_fence": 0,
             "message_count": per} for c in range(conversations)])
        batch = []
        for c in range(conversations):
            for m in range(per):
                batch.append({"conversation_id": f"c{c:05d}", "role": "user", "content": f"message {m}",
                              "status": "answered", "created_at": now})
            if len(batch) >= 50_000:
                db.execute(insert(Message), batch)
                batch = []
        if batch:
            db.execute(insert(Message), batch)
    return services


class SidebarDatabases:
    """The sidebar figure's two databases, built once (building 1M messages takes a while)."""

    def __init__(self, sizes: tuple[int, int]):
        self.small, self.large = sizes
        self.services = {size: _sidebar_database(size) for size in sizes}

    def close(self) -> None:
        for services in self.services.values():
            services.close()


def bench_sidebar(databases: SidebarDatabases, figures: Figures, rounds: int = 5, pages: int = 100) -> None:
    """The first page of 50 of 200 conversations, in a database of `large` messages beside one of
    `small`: each round times `pages` pages of each (alternating which first), the median each."""
    from app.conversations import list_conversations

    small, large = databases.small, databases.large
    for services in databases.services.values():
        list_conversations(services, 1, 50, None)  # warm
    medians: dict = {small: [], large: []}
    for r in range(rounds):
        for size in in_order(r, large, small):
            runs = []
            for _ in range(pages):
                started = time.perf_counter()
                list_conversations(databases.services[size], 1, 50, None)
                runs.append((time.perf_counter() - started) * 1000)
            medians[size].append(statistics.median(runs))
    figures.add_rounds(f"sidebar page (50 of 200 chats), {large:,} messages", medians[large], medians[small], "ms",
                       f"<= 2x the {small:,} figure")


def bench_memory(services, figures: Figures) -> None:
    """MEMORY USAGE of an idle session's keys: its hash (which holds the lock's fence too), and
    anything else under its `{SID}` but the event log and run key (a reply's, which expire); every
    one of them must carry a TTL."""
    sizes, others, without_ttl, encodings = [], [], 0, set()
    for key in services.redis.scan_iter(match="arzani:session:{*}", count=500):
        if key.endswith("}"):
            sizes.append(services.redis.memory_usage(key, samples=0))
            encodings.add(services.redis.object("encoding", key))
            without_ttl += services.redis.pttl(key) == -1
            others.append(sum(services.redis.memory_usage(key + suffix, samples=0) or 0
                              for suffix in (":lock", ":fence")))
    # Baseline: the smallest thing that could map a session to a conversation, one string key.
    services.redis.set("bench:baseline:" + "x" * 32, str(uuid.uuid4()))
    baseline = services.redis.memory_usage("bench:baseline:" + "x" * 32)
    figures.add(f"Redis memory per session: hash with its fence ({'/'.join(sorted(encodings))})",
                statistics.mean(sizes), baseline, "bytes")
    figures.add("Redis memory per session: its other keys (lock, old fence key)", statistics.mean(others),
                None, "bytes")
    per_session = statistics.mean(s + o for s, o in zip(sizes, others, strict=True))
    figures.add("Redis memory per session: all", per_session, baseline, "bytes", "<= 200")
    figures.add("session hashes without a TTL", without_ttl, None, "keys", "exactly 0")


def _this_checkout_first(pythonpath: str) -> str:
    return os.pathsep.join(dict.fromkeys(p for p in (str(ROOT), *pythonpath.split(os.pathsep)) if p))


def _log_file(env: dict):
    """The bench's log file, appended to by a process it starts (the path is in env)."""
    return open(env["ARZANI_BENCH_LOG"], "ab")  # noqa: SIM115 - handed to the child process


def _logs_to_file(path: Path) -> Path:
    """Everything the in-process workers and our code log goes to `path`, not to the terminal
    (an in-process RQ worker logs a few lines per job: thousands per run)."""
    import logging

    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    for name in ("rq", "arzani"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
    return path


@click.command("bench")
@click.option("--quick", is_flag=True, help="3 rounds, smaller loads, sidebar at 10k and 100k messages")
@click.option("--smoke", is_flag=True, help="tiny sizes everywhere: checks every row runs, figures mean little")
@click.option("--rounds", type=click.IntRange(min=1), help="rounds of each timed figure (default 5; --quick 3)")
def bench(quick: bool, smoke: bool, rounds: int | None) -> None:
    """Print the service's figures, each beside a baseline measured in the same run, with the
    spread of its rounds and a verdict against its target."""
    from app import create_app
    from app.auth import create_api_user
    from app.config import Settings
    from app.wiring import Wiring
    from scripts.localservers import EmbeddedRedis

    sizes = SMOKE if smoke else QUICK if quick else FULL
    if rounds is not None:
        sizes = replace(sizes, rounds=rounds)
    began, load_before = time.perf_counter(), os.getloadavg()[0]
    RoundTrips.install()
    embedded = EmbeddedRedis().start()
    directory = tempfile.mkdtemp(prefix="arzani-bench-")
    log_path = _logs_to_file(Path(directory) / "bench.log")
    click.echo(f"logs (RQ's, gunicorn's and ours): {log_path}", err=True)
    env = dict(os.environ, REDIS_URL=embedded.url, DATABASE_URL=f"sqlite:///{directory}/bench.db",
               ARZANI_QUEUE="arzani-bench", ARZANI_LOG_LEVEL="WARNING", ARZANI_RATE_LIMIT="off",
               ARZANI_RATE_LIMIT_IP="off",
               # the open-streams figure is one client holding thousands, each on a session before
               # its first message (a reservation each): no per-user or per-address cap
               ARZANI_MAX_STREAMS_PER_USER="100000", ARZANI_MAX_STREAMS_PER_IP="100000",
               ARZANI_MAX_RESERVATIONS="1000000",
               ARZANI_SECRET_KEY="bench", ARZANI_BENCH_LOG=str(log_path),
               # gunicorn and rq import this checkout's code, whatever is installed
               PYTHONPATH=_this_checkout_first(os.environ.get("PYTHONPATH", "")))
    figures = Figures()
    webs: list[Web] = []
    workers = sidebars = None
    try:
        settings = Settings.from_env(env)
        services = Wiring(settings)
        services.db.create_all()
        from workers import jobs

        jobs.use_services(Wiring(settings, process_kind="worker"))
        app = create_app({"TESTING": True}, services=services)
        client = app.test_client()
        user, token = create_api_user(services, "bench")
        _race_user, race_token = create_api_user(services, "bench-race")
        headers = {"Authorization": f"Bearer {token}"}
        click.echo("measuring Redis round trips...", err=True)
        # first, alone: the commands are counted server-wide, and a worker would take the jobs
        bench_round_trips(services, client, headers, figures, messages=sizes.round_trip_messages)
        # Every server starts at once, while the sidebar's databases are built (not timed). Two
        # gunicorns: one answered by the workers (the race, the streams held), one whose jobs go
        # to a queue no worker serves (ingest, with the workers idle; the streams' baseline).
        answered = Web(env, "scripts.bench_app:create_bench_app()", sizes.web_workers)
        unserved = Web(dict(env, ARZANI_QUEUE=UNSERVED_QUEUE), "scripts.bench_app:create_bench_app()",
                       sizes.web_workers)
        webs = [answered, unserved]
        workers = Workers(env, 4)
        click.echo("building the sidebar's databases while the servers start...", err=True)
        sidebars = SidebarDatabases(sizes.sidebar)
        for web in webs:
            web.ready()
        workers.ready(services)
        click.echo(f"measuring ingest and web CPU under gunicorn ({sizes.rounds} rounds)...", err=True)
        bench_ingest(unserved, token, figures, sessions=sizes.ingest_sessions, window_s=sizes.ingest_window_s,
                     settle_s=sizes.ingest_settle_s, windows=sizes.ingest_windows, rounds=sizes.rounds,
                     warm_s=min(1.0, 20 * sizes.ingest_window_s))
        click.echo("measuring a burst of messages with four workers...", err=True)
        bench_burst(services, client, headers, env, figures, rounds=sizes.burst_rounds)
        click.echo("measuring end to end under `arzani race` load...", err=True)
        bench_race_load(services, race_token, answered, figures, sessions=sizes.race_sessions, rounds=sizes.rounds,
                        processes=sizes.race_racers[0], concurrency=sizes.race_racers[1])
        click.echo("measuring replies/s with 4, 2 and 1 workers...", err=True)
        bench_throughput(services, user.id, workers, figures, messages=sizes.throughput_messages,
                         rounds=sizes.rounds)
        click.echo("measuring reply latency...", err=True)
        bench_reply_latency(services, client, headers, env, figures, count=sizes.latency_messages,
                            rounds=sizes.rounds)
        workers.stop()
        click.echo("measuring the lock hand-off...", err=True)
        bench_lock_handoff(services, user.id, figures, sessions=sizes.handoff_sessions,
                           rounds=max(3, sizes.rounds))  # rounds of one race: cheap, so never fewer than 3
        click.echo("measuring Redis memory and the event log...", err=True)
        bench_memory(services, figures)
        bench_event_log(services, figures, tokens=sizes.event_log_tokens)
        click.echo("measuring open event streams...", err=True)
        bench_open_streams(answered, unserved, token, figures, settings.redis_max_connections,
                           counts=sizes.stream_counts, posts=sizes.stream_posts, rounds=sizes.rounds,
                           warm=min(50, sizes.warm_posts))
        for web in webs:
            web.stop()
        webs = []
        click.echo("measuring the sidebar...", err=True)
        bench_sidebar(sidebars, figures, rounds=sizes.rounds, pages=sizes.sidebar_pages)
        services.close()
    finally:
        if sidebars is not None:
            sidebars.close()
        if workers is not None:
            workers.stop()
        for web in webs:
            web.stop()
        embedded.close()
    # the machine's load says how much a run's spreads owe to its neighbours
    click.echo(f"done in {time.perf_counter() - began:.0f} s (load average {load_before:.1f} at the start, "
               f"{os.getloadavg()[0]:.1f} at the end, {os.cpu_count()} cores)", err=True)
    figures.print()
