"""Fault 5: the database unavailable. 503 with the JSON error, nothing half-written (no tracked
key naming a conversation that was never committed), and all well again when it returns."""

from __future__ import annotations

import dataclasses
import os
import socket
import threading

import pytest
from sqlalchemy.engine import make_url

from app import create_app, keys
from app.auth import create_api_user
from app.wiring import Wiring
from tests.helpers import new_session_id


class TcpProxy:
    """Loopback TCP proxy to the database server; `cut()` severs every link and refuses new ones."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.links: list[socket.socket] = []
        self.open = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self.links += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self):
        self.open = False
        for link in self.links:
            try:
                link.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.links.clear()

    def restore(self):
        self.open = True

    def close(self):
        self.cut()
        self.listener.close()


@pytest.fixture
def severable(settings, database_url, tmp_path):
    """(services, cut, restore) on a database whose availability the test controls."""
    if database_url.startswith("sqlite"):
        folder = tmp_path / "dbdir"
        folder.mkdir()
        wiring = Wiring(dataclasses.replace(settings, database_url=f"sqlite:///{folder}/arzani.db"))

        def cut():
            wiring.db.dispose()  # a fresh process, or a pool recycled, must open the file anew...
            os.rename(folder, f"{folder}.away")  # ...and it is not there

        def restore():
            os.rename(f"{folder}.away", folder)

        wiring.db.create_all()
        yield wiring, cut, restore
        wiring.close()
        return
    url = make_url(database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    wiring = Wiring(dataclasses.replace(settings, database_url=proxied))
    wiring.db.create_all()
    yield wiring, proxy.cut, proxy.restore
    wiring.close()
    proxy.close()


def test_database_down_is_503_with_nothing_half_written_and_recovers(severable):
    services, cut, restore = severable
    client = create_app({"TESTING": True}, services=services).test_client()
    user, token = create_api_user(services, "alice")
    headers = {"Authorization": f"Bearer {token}"}

    def send(session_id, content):
        return client.post(f"/api/sessions/{session_id}/messages", json={"content": content},
                           headers=headers)

    known, fresh = new_session_id(), new_session_id()
    first = send(known, "before the outage").json

    cut()
    try:
        for session_id in (known, fresh):
            response = send(session_id, "during the outage")
            assert response.status_code == 503, response.data
            assert response.json["error"]["code"] == "unavailable"
        assert client.get("/readyz").status_code == 503
        # The new session's creation failed under the lock: no key names a conversation that
        # was never committed, and the lock was released, not left to expire.
        assert services.redis.hget(keys.session_key(fresh), "cid") is None  # untracked (the fence stays)
        assert services.redis.exists(keys.lock_key(fresh)) == 0
    finally:
        restore()

    assert client.get("/readyz").status_code == 200
    after = send(known, "after the outage")
    assert after.status_code == 202
    assert after.json["conversation_id"] == first["conversation_id"]
    created = send(fresh, "a new session, now")
    assert created.status_code == 202
    conversation = client.get(f"/api/conversations/{first['conversation_id']}", headers=headers).json
    assert [m["content"] for m in conversation["messages"]] == ["before the outage", "after the outage"]
