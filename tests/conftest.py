"""Fixtures: a real redis-server per test session, a fresh database per test (SQLite, and
PostgreSQL too when ARZANI_TEST_POSTGRES_URL is set), the app, a client, an API user, a worker."""

from __future__ import annotations

import os

import pytest
import redis
from rq import SimpleWorker

from app import create_app
from app.auth import create_api_user
from app.config import Settings
from app.wiring import Wiring
from tests.fake_llm import FakeLLM
from tests.servers import PostgresDatabase, RedisServer
from workers import jobs

POSTGRES_URL = os.environ.get("ARZANI_TEST_POSTGRES_URL")
DATABASES = ["sqlite"] + (["postgres"] if POSTGRES_URL else [])

# The files that take longest, longest first (JUnit times of one whole run, 2026-12-02: chaos 163 s,
# the rest 28-68 s; the other 44 files take 912 s in all). `make test` runs `-n 3 --dist loadfile`:
# each file stays on one xdist worker, and the scheduler hands files out in collection order
# (`--no-loadscope-reorder` in setup.cfg; xdist's own order is "most tests first", which put the
# one-test chaos file last: it then ran alone for two minutes after the rest had finished).
# Longest first is the classic greedy schedule. The order changes only when a test runs, never
# what it checks; a file missing from the list keeps its place after these.
LONGEST_FIRST = (
    "tests/test_chaos.py",
    "tests/test_redis_sentinel.py",
    "tests/browser/test_chat_page.py",
    "tests/faults/test_fast_recovery.py",
    "tests/test_runs.py",
    "tests/browser/test_live.py",
    "tests/faults/test_worker_crash.py",
    "tests/test_devstack.py",
    "tests/test_fuzz_schemathesis.py",
    "tests/test_live_stack.py",
    "tests/test_redis_acl_tls.py",
)


def pytest_collection_modifyitems(config, items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def redis_url(redis_server):
    if redis_server.process is None:  # a test stopped it
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()  # our own private server, never the machine's shared one
    client.close()
    return redis_server.url


@pytest.fixture(params=DATABASES)
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'arzani.db'}"
        return
    database = PostgresDatabase(POSTGRES_URL)
    yield database.create()
    database.drop()


@pytest.fixture
def settings(redis_url, database_url):
    return Settings(
        redis_url=redis_url,
        database_url=database_url,
        secret_key="test-secret",
        lock_ttl_ms=2000,
        reply_retries=2,
    )


@pytest.fixture
def services(settings):
    wiring = Wiring(settings)
    wiring.db.create_all()
    jobs.use_services(Wiring(settings, process_kind="worker"))
    yield wiring
    jobs.use_services(None)
    wiring.close()


@pytest.fixture
def app(services):
    return create_app({"TESTING": True}, services=services)


@pytest.fixture
def client(app):
    return app.test_client()


class Api:
    """Calls the API as one user (like flaskr's AuthActions)."""

    def __init__(self, client, token: str, user_id: int):
        self.client = client
        self.token = token
        self.user_id = user_id
        self.headers = {"Authorization": f"Bearer {token}"}

    def post(self, path, json=None, **kw):
        return self.client.post(path, json=json, headers=self.headers, **kw)

    def get(self, path, headers=None, **kw):
        return self.client.get(path, headers={**self.headers, **(headers or {})}, **kw)

    def patch(self, path, json=None, **kw):
        return self.client.patch(path, json=json, headers=self.headers, **kw)

    def delete(self, path, **kw):
        return self.client.delete(path, headers=self.headers, **kw)

    def send(self, session_id: str, content: str, **extra):
        return self.post(f"/api/sessions/{session_id}/messages", json={"content": content, **extra})


@pytest.fixture
def make_api(client, services):
    def _make(name: str = "alice") -> Api:
        user, token = create_api_user(services, name)
        return Api(client, token, user.id)

    return _make


@pytest.fixture
def api(make_api):
    return make_api("alice")


@pytest.fixture
def fake_llm():
    """An OpenAI-compatible server on loopback (tests/fake_llm.py)."""
    llm = FakeLLM().start()
    yield llm
    llm.close()


@pytest.fixture
def make_stack(redis_url, tmp_path):
    """Real processes (tests/stack.py) on the test's Redis and, unless a database URL is given, a
    fresh SQLite file with the schema migrated; every stack made is closed when the test ends."""
    from tests.stack import Stack

    made = []

    def _make(database_url: str | None = None, **env: str) -> Stack:
        stack = Stack(redis_url, database_url or f"sqlite:///{tmp_path / f'stack{len(made)}.db'}", tmp_path, **env)
        made.append(stack)
        if database_url is None:
            stack.init_db()
        return stack

    yield _make
    for stack in made:
        stack.close()


@pytest.fixture
def run_jobs(services):
    """Run every queued reply job now, in this process, against the real Redis."""

    def _run() -> None:
        worker = SimpleWorker([services.queue], connection=services.rq_redis)
        worker.work(burst=True)

    return _run
