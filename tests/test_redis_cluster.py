"""The lock and the session service on a real three-master Redis Cluster, started here from the
bundled redis-server (cluster mode, loopback ports)."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest
import redis

from app import keys
from app.wiring import Wiring
from tests.helpers import new_session_id, sse_events
from tests.servers import free_port
from tests.stack import BIN

pytestmark = pytest.mark.slow


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too, both below the ephemeral
    range (an ephemeral port above 55535 would put the bus past 65535)."""
    return free_port(companion_offset=10_000)


class RedisCluster:
    def __init__(self, masters: int = 3):
        self.ports = [cluster_port() for _ in range(masters)]
        self.dir = Path(tempfile.mkdtemp(prefix="arzani-cluster-"))
        self.processes: list[subprocess.Popen] = []

    def start(self) -> RedisCluster:
        for port in self.ports:
            self.processes.append(subprocess.Popen(
                [str(BIN / "redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", f"nodes-{port}.conf", "--save", "", "--appendonly", "no",
                 "--dir", str(self.dir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in self.ports:
            self._wait(lambda p=port: redis.Redis(port=p).ping())
        subprocess.run([str(BIN / "redis-cli"), "--cluster", "create",
                        *[f"127.0.0.1:{p}" for p in self.ports], "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
        self._wait(lambda: redis.Redis(port=self.ports[0]).cluster("info")["cluster_state"] == "ok")
        return self

    @staticmethod
    def _wait(ready, timeout: float = 20) -> None:
        end = time.monotonic() + timeout
        while True:
            try:
                if ready():
                    return
            except redis.RedisError:
                pass
            assert time.monotonic() < end, "the cluster did not come up"
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def close(self) -> None:
        for process in self.processes:
            process.terminate()
            process.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    running = RedisCluster().start()
    yield running
    running.close()


@pytest.fixture
def cluster_services(cluster, settings, services):
    wiring = Wiring(dataclasses.replace(settings, redis_url=cluster.url, redis_cluster=True,
                                          queue_redis_url=settings.redis_url))
    yield wiring
    wiring.close()


def test_a_sessions_keys_share_one_slot(cluster_services):
    client = cluster_services.redis
    session_id = new_session_id()
    slots = {client.cluster_keyslot(k) for k in (keys.session_key(session_id), keys.lock_key(session_id),
                                                 keys.session_log(session_id), keys.run_key(session_id))}
    assert len(slots) == 1
    assert len(client.get_nodes()) == 3


def test_the_lock_works_on_the_cluster(cluster_services):
    session_id = new_session_id()
    first = cluster_services.sessions.lock(session_id, 5000)
    second = cluster_services.sessions.lock(session_id, 5000)
    assert first.acquire() and not second.acquire()
    first.release()
    assert second.acquire() and second.fence == first.fence + 1
    second.release()


def test_racing_resolutions_on_the_cluster_make_one_conversation(cluster_services, api):
    for _ in range(5):
        session_id = new_session_id()
        barrier, results = threading.Barrier(8), []

        def racer(sid=session_id, wait=barrier, out=results):
            wait.wait()
            out.append(cluster_services.sessions.resolve(sid, api.user_id))

        threads = [threading.Thread(target=racer) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len({r.conversation_id for r in results}) == 1
        assert [r.how for r in results].count("created") == 1
        tracked = cluster_services.redis.hgetall(keys.session_key(session_id))
        assert tracked["cid"] == results[0].conversation_id


def test_the_api_runs_on_the_cluster(cluster_services, run_jobs):
    from app import create_app
    from app.auth import create_api_user

    client = create_app({"TESTING": True}, services=cluster_services).test_client()
    _, token = create_api_user(cluster_services, "clustered")
    headers = {"Authorization": f"Bearer {token}"}
    session_id = client.post("/api/sessions", headers=headers).json["session_id"]
    # the live events too: the session's and the user's logs live in different slots
    session_stream = client.get(f"/api/sessions/{session_id}/events", headers=headers, buffered=False)
    user_stream = client.get("/api/events", headers=headers, buffered=False)
    session_events, user_events = iter(session_stream.response), iter(user_stream.response)
    for events in (session_events, user_events):
        assert sse_events(events, until="ready")[-1][1] == "ready"
    posted = client.post(f"/api/sessions/{session_id}/messages", json={"content": "hi"}, headers=headers)
    assert posted.status_code == 202
    status = client.get(f"/api/sessions/{session_id}", headers=headers).json
    assert status["consistent"] and status["tracked"]["conversation_id"] == posted.json["conversation_id"]
    from workers import jobs

    jobs.use_services(Wiring(cluster_services.settings, process_kind="worker"))  # the reply job on the cluster too
    run_jobs()
    got = sse_events(session_events, until="reply")
    assert [kind for _, kind, _ in got][:2] == ["message", "start"]
    assert "".join(d["delta"] for _, kind, d in got if kind == "token") == got[-1][2]["message"]["content"]
    assert [kind for _, kind, _ in sse_events(user_events, until="reply")] == ["created", "message", "reply"]
    session_stream.close()
    user_stream.close()
