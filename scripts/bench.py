"""`arzani bench`: the service's figures, each beside a baseline measured in the same run.

Everything runs on this machine against a private embedded redis-server and a throwaway SQLite
database (or DATABASE_URL with --database-url), so runs are comparable. Figures:

- Redis round trips and commands per message, web side (existing session) and end to end
  (web + reply job), against a bare RQ enqueue + no-op job;
- lock hand-off: 16 concurrent first messages on one session, the losers' extra wait after the
  winner is done (p50, p99), against the winner's own time;
- accepted messages/s under gunicorn, against a baseline endpoint that does the same insert and
  enqueue without session resolution;
- reply latency with the echo agent (p50, p99) against a no-op RQ job, stock rq worker;
- sidebar page time at 10k and 1M messages;
- Redis memory per session (MEMORY USAGE);
- open event streams: POST p99 while 2,000 streams are open against the `make run` web defaults,
  beside the POST p99 with none; the Redis connections they cost; the largest count that held;
  the event log's bytes per token and its retention.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import click
import redis
from redis.connection import Connection

BIN = Path(sys.executable).parent


def noop() -> None:
    """The baseline job: RQ's own cost, nothing of ours."""


def pct(values: list[float], q: int) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(sorted(values), n=100, method="inclusive")[q - 1]


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


class Figures:
    def __init__(self):
        self.rows: list[tuple[str, str, str, str]] = []

    def add(self, name: str, value: float, baseline: float | None, unit: str, target: str = "") -> None:
        ratio = f"{value / baseline:.2f}x" if baseline else "-"
        shown_baseline = f"{baseline:.2f} {unit}" if baseline is not None else "-"
        note = f"  (target {target})" if target else ""
        self.rows.append((name, f"{value:.2f} {unit}", shown_baseline, ratio + note))

    def print(self) -> None:
        widths = [max(len(r[i]) for r in self.rows + [("figure", "value", "baseline", "ratio")]) for i in range(4)]
        header = ("figure", "value", "baseline", "ratio")
        for row in [header, *self.rows]:
            click.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


# -- the benches -------------------------------------------------------------------------------

def bench_round_trips(services, client, headers, figures: Figures, messages: int = 50) -> None:
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

    web_rt, web_cmd = measure(lambda n: client.post(f"/api/sessions/{session_id}/messages",
                                                    json={"content": f"m{n}"}, headers=headers))
    RoundTrips.count, before = 0, commands_processed(probe)
    SimpleWorker([services.queue], connection=services.rq_redis).work(burst=True)
    job_rt, job_cmd = RoundTrips.count / messages, (commands_processed(probe) - before - 1) / messages
    base_rt, base_cmd = measure(lambda n: services.queue.enqueue(noop))
    RoundTrips.count, before = 0, commands_processed(probe)
    SimpleWorker([services.queue], connection=services.rq_redis).work(burst=True)
    base_job_rt, base_job_cmd = RoundTrips.count / messages, (commands_processed(probe) - before - 1) / messages
    figures.add("web: Redis round trips / message", web_rt, base_rt, "rt")
    figures.add("web: round trips of ours (beyond RQ's enqueue)", web_rt - base_rt, None, "rt", "<= 2")
    figures.add("web: Redis commands / message", web_cmd, base_cmd, "cmd")
    figures.add("end to end: round trips / message", web_rt + job_rt, base_rt + base_job_rt, "rt")
    figures.add("end to end: commands / message", web_cmd + job_cmd, base_cmd + base_job_cmd, "cmd")
    probe.close()


def _handoff_racer(settings, user_id, session_ids, barrier, results):
    """One OS process of the hand-off race: resolve each session when the barrier lets go."""
    from app.wiring import Wiring

    services = Wiring(settings)
    out = []
    for session_id in session_ids:
        barrier.wait()
        started = time.monotonic_ns()  # one clock for every process on the machine
        resolved = services.sessions.resolve(session_id, user_id)
        out.append((session_id, resolved.how, started, time.monotonic_ns()))
    results.put(out)


def bench_lock_handoff(services, user_id: int, figures: Figures, racers: int = 16, rounds: int = 30) -> None:
    """16 OS processes (as 16 gunicorn workers would be) race each session's first resolution."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    session_ids = [uuid.uuid4().hex for _ in range(rounds)]
    barrier, results = context.Barrier(racers), context.Queue()
    children = [context.Process(target=_handoff_racer,
                                args=(services.settings, user_id, session_ids, barrier, results))
                for _ in range(racers)]
    for child in children:
        child.start()
    rows = [row for _ in children for row in results.get(timeout=300)]
    for child in children:
        child.join(30)
    winners, extra = [], []
    for session_id in session_ids:
        race = [r for r in rows if r[0] == session_id]
        winner = next(r for r in race if r[1] == "created")
        winners.append((winner[3] - winner[2]) / 1e6)
        extra += [max(0.0, (r[3] - winner[3]) / 1e6) for r in race if r[1] == "waited"]
    figures.add("lock hand-off: losers' extra wait p50", pct(extra, 50), pct(winners, 50), "ms")
    figures.add("lock hand-off: losers' extra wait p99", pct(extra, 99), pct(winners, 99), "ms",
                "<= 5 ms")


def _post_many(port: int, token: str, path_of, total: int, threads: int) -> float:
    counter = iter(range(total))
    lock = threading.Lock()
    errors = []

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                break
            conn.request("POST", path_of(n), body=json.dumps({"content": f"load {n}"}),
                         headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            if response.status not in (200, 202):
                errors.append(response.status)
        conn.close()

    started = time.perf_counter()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise click.ClickException(f"load answered errors: {errors[:5]}")
    return total / (time.perf_counter() - started)


def bench_ingest(env: dict, token: str, figures: Figures, sessions: int = 50, total: int = 2000) -> None:
    """gunicorn as `make run` starts it (4 gevent processes), 16 client threads, messages spread
    over existing sessions; the baseline endpoint is served the same way."""
    web, port = _start_web(env, "scripts.bench_app:create_bench_app()")
    try:
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

        _post_many(port, token, ours, min(200, total), 16)  # warm every process
        _post_many(port, token, baseline, min(200, total), 16)
        base_rate = _post_many(port, token, baseline, total, 16)
        our_rate = _post_many(port, token, ours, total, 16)
        figures.add("ingest under gunicorn (4 gevent), accepted messages/s", our_rate, base_rate, "msg/s", ">= 0.9x")
        # The load left thousands of reply jobs queued: drop them before anything waits on the queue.
        from rq import Queue

        Queue(env["ARZANI_QUEUE"], connection=redis.Redis.from_url(env["REDIS_URL"])).empty()
    finally:
        web.terminate()
        web.wait(30)


def _start_web(env: dict, app: str, workers: int = 4) -> tuple[subprocess.Popen, int]:
    """gunicorn as the Procfile's `web` runs it with `make run`'s defaults (gevent, 4 processes)."""
    from scripts.localservers import free_port

    port = free_port()
    web = subprocess.Popen([str(BIN / "gunicorn"), "--worker-class", "scripts.gunicorn_worker.GeventWorker",
                            "--workers", str(workers),
                            "--worker-connections", "1000", "--graceful-timeout", "1", "--no-control-socket",
                            "--bind", f"127.0.0.1:{port}", app],
                           env=env, stdout=_log_file(env), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return web, port
        except OSError:
            pass
        if time.monotonic() > deadline:
            web.terminate()
            raise click.ClickException(f"gunicorn did not start for the bench; see {env['ARZANI_BENCH_LOG']}")
        time.sleep(0.1)


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


def _post_latencies(port: int, token: str, session_id: str, count: int) -> list[float]:
    """`count` POSTs one after the other on one keep-alive connection, each timed (ms)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    timings = []
    for n in range(count):
        started = time.perf_counter()
        conn.request("POST", f"/api/sessions/{session_id}/messages", body=json.dumps({"content": f"p{n}"}),
                     headers=headers)
        response = conn.getresponse()
        response.read()
        timings.append((time.perf_counter() - started) * 1000)
        if response.status not in (200, 202):
            raise click.ClickException(f"a POST answered {response.status}")
    conn.close()
    return timings


def bench_open_streams(env: dict, token: str, figures: Figures, counts=(2000, 3000, 3800), posts: int = 400) -> None:
    """Open event streams held against the Procfile's web with `make run`'s defaults (4 gevent
    processes x 1,000 connections), while a client POSTs messages one after the other."""
    from rq import Queue

    web, port = _start_web(env, "app:create_app()")
    probe = redis.Redis.from_url(env["REDIS_URL"])
    holder = StreamHolder(port, token)
    try:
        session_id = uuid.uuid4().hex
        _post_latencies(port, token, session_id, 50)  # warm every process
        base_p99 = pct(_post_latencies(port, token, session_id, posts), 99)
        base_clients = len(probe.client_list())
        held = 0
        for n, count in enumerate(counts):
            if holder.open(count - len(holder.writers)) < count:
                click.echo(f"  {count:,} streams: only {len(holder.writers):,} opened "
                           f"({holder.failures[:1]})", err=True)
                break
            p99 = pct(_post_latencies(port, token, session_id, posts), 99)
            clients = len(probe.client_list())
            click.echo(f"  {count:,} streams open: POST p99 {p99:.2f} ms, {clients} Redis connections", err=True)
            if n == 0:
                figures.add(f"POST p99 with {count:,} open event streams", p99, base_p99, "ms", "<= 1.5x")
                figures.add(f"Redis connections (4 web processes) with {count:,} streams open", clients,
                            base_clients, "conn", "a small constant per process")
            if p99 > 1.5 * base_p99:
                break
            held = count
        figures.add("open event streams held (all ready, POST p99 <= 1.5x)", held, None, "streams",
                    f">= {counts[0]:,}")
    finally:
        holder.close()
        web.terminate()
        web.wait(30)
        Queue(env["ARZANI_QUEUE"], connection=probe).empty()
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


def bench_reply_latency(services, client, headers, env, figures: Figures, count: int = 60) -> None:
    """Stock rq worker processes; time from the POST's answer to the reply attached."""
    from sqlalchemy import select

    from app.models import Message

    worker = subprocess.Popen([str(BIN / "rq"), "worker", "-c", "workers.rq_settings", "--url",
                               env["REDIS_URL"], env["ARZANI_QUEUE"]], env=env,
                              stdout=_log_file(env), stderr=subprocess.STDOUT)
    try:
        session_id = uuid.uuid4().hex
        client.post(f"/api/sessions/{session_id}/messages", json={"content": "warm"}, headers=headers)
        time.sleep(2)  # let the worker start and run the warm-up job before timing
        ours, base = [], []
        for n in range(count):
            posted = client.post(f"/api/sessions/{session_id}/messages", json={"content": f"q{n}"},
                                 headers=headers).json
            started = time.perf_counter()  # from the 202 (the job is enqueued) to the reply attached
            while True:
                with services.db.read() as db:
                    if db.scalar(select(Message.id).where(Message.reply_to == posted["message"]["id"])):
                        break
                _give_up_after(started, f"the reply to message {posted['message']['id']}", env)
                time.sleep(0.002)
            ours.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            job = services.queue.enqueue(noop)
            while job.get_status(refresh=True) != "finished":
                _give_up_after(started, "a no-op job", env)
                time.sleep(0.002)
            base.append((time.perf_counter() - started) * 1000)
        figures.add("reply latency p50 (echo agent)", pct(ours, 50), pct(base, 50), "ms", "<= 1.3x")
        figures.add("reply latency p99 (echo agent)", pct(ours, 99), pct(base, 99), "ms")
    finally:
        worker.terminate()
        worker.wait(30)


def bench_burst(services, client, headers, env, figures: Figures, messages: int = 10, workers: int = 4,
                rounds: int = 3) -> None:
    """Agent calls per user message when `messages` are posted at once in one session and
    `workers` stock rq workers race for their jobs: each generation is claimed before the agent is
    called, so this is 1.00 (it was up to k(k+1)/2 calls for k messages before issue 12). Counted
    twice: the attempts the database recorded, and the `start` events of the session's log."""
    from sqlalchemy import func, select

    from app import keys
    from app.models import Message

    procs = [subprocess.Popen([str(BIN / "rq"), "worker", "-c", "workers.rq_settings", "--url", env["REDIS_URL"],
                               "--name", f"bench-burst-{n}-{uuid.uuid4().hex[:6]}", env["ARZANI_QUEUE"]], env=env,
                              stdout=_log_file(env), stderr=subprocess.STDOUT) for n in range(workers)]
    try:
        attempts = starts = total = 0
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
                attempts += db.scalar(select(func.sum(Message.attempts)).where(Message.id.in_(ids)))
            starts += sum(1 for _, fields in services.redis.xrange(keys.session_log(session_id))
                          if fields["type"] == "start")
            total += messages
        figures.add(f"agent calls / user message, burst of {messages}, {workers} workers", attempts / total, None,
                    "calls", "exactly 1.00")
        figures.add("  generations started (start events) / user message", starts / total, None, "starts",
                    "exactly 1.00")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)


def bench_sidebar(figures: Figures, sizes=(10_000, 1_000_000)) -> None:
    """Each size in a database of its own (SQLite), 200 conversations, the first page of 50."""
    from sqlalchemy import insert

    from app.config import Settings
    from app.conversations import list_conversations
    from app.models import Conversation, Message, User, utcnow
    from app.wiring import Wiring

    timings = {}
    for size in sizes:
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
        list_conversations(services, 1, 50, None)  # warm
        runs = []
        for _ in range(30):
            started = time.perf_counter()
            list_conversations(services, 1, 50, None)
            runs.append((time.perf_counter() - started) * 1000)
        timings[size] = statistics.median(runs)
        services.close()
    small, large = sizes
    figures.add(f"sidebar page (50 of 200 chats), {large:,} messages", timings[large], timings[small], "ms",
                "<= 2x the 10k figure")


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
    figures.add("session hashes without a TTL", without_ttl, None, "keys", "0")


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
@click.option("--quick", is_flag=True, help="sidebar at 10k and 100k messages instead of 10k and 1M")
@click.option("--smoke", is_flag=True, help="tiny sizes everywhere: checks the command runs, figures mean little")
def bench(quick: bool, smoke: bool) -> None:
    """Print the service's figures, each beside a baseline measured in the same run."""
    from app import create_app
    from app.auth import create_api_user
    from app.config import Settings
    from app.wiring import Wiring
    from scripts.localservers import EmbeddedRedis

    RoundTrips.install()
    embedded = EmbeddedRedis().start()
    directory = tempfile.mkdtemp(prefix="arzani-bench-")
    log_path = _logs_to_file(Path(directory) / "bench.log")
    click.echo(f"logs (RQ's and ours): {log_path}", err=True)
    env = dict(os.environ, REDIS_URL=embedded.url, DATABASE_URL=f"sqlite:///{directory}/bench.db",
               ARZANI_QUEUE="arzani-bench", ARZANI_LOG_LEVEL="WARNING", ARZANI_RATE_LIMIT="off",
               ARZANI_RATE_LIMIT_IP="off",
               # the open-streams figure is one client holding thousands, each on a session before
               # its first message (a reservation each): no per-user or per-address cap
               ARZANI_MAX_STREAMS_PER_USER="100000", ARZANI_MAX_STREAMS_PER_IP="100000",
               ARZANI_MAX_RESERVATIONS="1000000",
               ARZANI_SECRET_KEY="bench", ARZANI_BENCH_LOG=str(log_path))
    figures = Figures()
    try:
        settings = Settings.from_env(env)
        services = Wiring(settings)
        services.db.create_all()
        from workers import jobs

        jobs.use_services(Wiring(settings, process_kind="worker"))
        app = create_app({"TESTING": True}, services=services)
        client = app.test_client()
        user, token = create_api_user(services, "bench")
        headers = {"Authorization": f"Bearer {token}"}
        click.echo("measuring Redis round trips...", err=True)
        bench_round_trips(services, client, headers, figures, messages=10 if smoke else 50)
        click.echo("measuring the lock hand-off...", err=True)
        bench_lock_handoff(services, user.id, figures, rounds=3 if smoke else 30)
        click.echo("measuring ingest under gunicorn...", err=True)
        bench_ingest(env, token, figures, sessions=5 if smoke else 50, total=100 if smoke else 2000)
        click.echo("measuring reply latency...", err=True)
        bench_reply_latency(services, client, headers, env, figures, count=5 if smoke else 60)
        click.echo("measuring a burst of messages with four workers...", err=True)
        bench_burst(services, client, headers, env, figures, rounds=1 if smoke else 3)
        click.echo("measuring Redis memory...", err=True)
        bench_memory(services, figures)
        bench_event_log(services, figures, tokens=100 if smoke else 1000)
        click.echo("measuring open event streams...", err=True)
        bench_open_streams(env, token, figures, counts=(50,) if smoke else (2000, 3000, 3800),
                           posts=30 if smoke else 1000)
        click.echo("measuring the sidebar (building the databases takes a while)...", err=True)
        sizes = (1_000, 2_000) if smoke else (10_000, 100_000) if quick else (10_000, 1_000_000)
        bench_sidebar(figures, sizes=sizes)
        services.close()
    finally:
        embedded.close()
    figures.print()
