"""Input an attacker (or a fuzzer) sends: always a clear 4xx JSON error, never a 500, on SQLite and
PostgreSQL alike, and nothing already stored is lost."""

from __future__ import annotations

import base64
import json

import pytest

from tests.helpers import new_session_id


def cursor_of(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def assert_client_error(response, *statuses):
    assert response.status_code in statuses, (response.status_code, response.get_data(as_text=True)[:300])
    assert set(response.json["error"]) == {"code", "message"}


@pytest.mark.parametrize("limit", ["%C2%B2", "%D9%A3", "１０", "-1", "1e3", "0x10", "99999999999999999999"])
def test_a_limit_that_only_looks_like_a_number_is_a_400(api, limit):
    assert_client_error(api.get(f"/api/conversations?limit={limit}"), 400)


def test_json_nested_thousands_deep_is_refused(api):
    deep = "[" * 50_000 + "]" * 50_000
    response = api.client.post(f"/api/sessions/{new_session_id()}/messages", data=deep,
                               headers=api.headers | {"Content-Type": "application/json"})
    assert_client_error(response, 400, 422)
    nested = '{"title": ' + '{"a": ' * 20_000 + "1" + "}" * 20_000 + "}"
    posted = api.send(new_session_id(), "survives").json
    response = api.client.patch(f"/api/conversations/{posted['conversation_id']}", data=nested,
                                headers=api.headers | {"Content-Type": "application/json"})
    assert_client_error(response, 400, 422)
    assert api.get(f"/api/conversations/{posted['conversation_id']}").status_code == 200


@pytest.mark.parametrize("raw", [
    "[" * 20_000 + "]" * 20_000,
    json.dumps(["2026-11-25T10:00:00+00:00", "a\u0000b"]),
    json.dumps(["2026-11-25T10:00:00\u0000+00:00", "abc"]),
    json.dumps(["9999999-01-01T00:00:00+00:00", "abc"]),
])
def test_a_cursor_the_server_never_issued_is_a_400(api, raw):
    assert_client_error(api.get(f"/api/conversations?cursor={cursor_of(raw)}"), 400)


def test_a_cursor_with_a_nul_byte_in_the_url_is_a_400(api):
    assert_client_error(api.get("/api/conversations?cursor=ab%00cd"), 400)


@pytest.mark.parametrize("message_id", [2**31, 2**63, 10**30])
def test_a_message_id_beyond_the_database_integer_is_a_404(api, message_id):
    posted = api.send(new_session_id(), "hello").json
    response = api.post(f"/api/conversations/{posted['conversation_id']}/messages/{message_id}/retry")
    assert_client_error(response, 404)


@pytest.mark.parametrize("conversation_id", ["a%00b", "%00", "x" * 5000, "%F0%9F%92%A9"])
def test_odd_conversation_ids_are_a_404(api, conversation_id):
    for method in ("get", "patch", "delete"):
        kwargs = {"json": {"title": "t"}} if method == "patch" else {}
        assert_client_error(getattr(api, method)(f"/api/conversations/{conversation_id}", **kwargs), 404)
    assert_client_error(api.post(f"/api/conversations/{conversation_id}/messages/1/retry"), 404)


def test_a_refused_post_to_another_users_session_renews_nothing(make_api, services):
    from app import keys

    alice, mallory = make_api("alice"), make_api("mallory")
    session_id = new_session_id()
    alice.send(session_id, "mine")
    key = keys.session_key(session_id)
    services.redis.pexpire(key, 100_000)
    services.redis.hset(key, "seen", 1)  # an old last activity, to see whether it moves
    assert mallory.send(session_id, "let me in").status_code == 404
    assert mallory.get(f"/api/sessions/{session_id}/events").status_code == 404
    assert services.redis.pttl(key) <= 100_000  # not renewed to the session TTL
    assert services.redis.hget(key, "seen") == "1"
    alice.send(session_id, "still mine")
    assert services.redis.pttl(key) > 100_000 and services.redis.hget(key, "seen") != "1"


# -- the cookie: browser users only, unique per instance, same-origin for unsafe methods -------

def test_a_cookie_naming_an_api_user_is_no_identity(app, api):
    """A cookie signed with a stolen key and naming an API user's id acts as nobody."""
    from flask.sessions import SecureCookieSessionInterface

    from app.auth import COOKIE_USER_KEY

    signer = SecureCookieSessionInterface().get_signing_serializer(app)
    browser = app.test_client()
    browser.set_cookie(app.config["SESSION_COOKIE_NAME"], signer.dumps({COOKIE_USER_KEY: api.user_id}))
    assert browser.get("/api/conversations").status_code == 401


def test_two_instances_on_one_host_use_two_cookie_names():
    from app import cookie_name
    from app.config import Settings

    first, second = Settings(redis_url=None, secret_key="a" * 64), Settings(redis_url=None, secret_key="b" * 64)
    assert cookie_name(first) != cookie_name(second)
    assert cookie_name(Settings(redis_url=None, secret_key="a" * 64, env="production")).startswith("__Host-")


@pytest.mark.parametrize(("headers", "allowed"), [
    ({"Sec-Fetch-Site": "same-origin"}, True),
    ({"Origin": "http://localhost"}, True),
    ({}, True),  # not a browser acting for a victim
    ({"Sec-Fetch-Site": "same-site"}, False),  # another port or subdomain of this host
    ({"Sec-Fetch-Site": "cross-site"}, False),
    ({"Origin": "http://evil.example"}, False),
    ({"Origin": "http://localhost:8081"}, False),
])
def test_cookie_authenticated_unsafe_requests_must_come_from_our_origin(app, headers, allowed):
    browser = app.test_client()
    browser.get("/")  # the page's cookie
    created = browser.post("/api/sessions", headers=headers)
    assert created.status_code == (201 if allowed else 403), created.json
    if not allowed:
        assert created.json["error"]["code"] == "forbidden"
        assert browser.get("/api/conversations", headers=headers).status_code == 200  # reads stay fine


def test_bearer_clients_are_not_subject_to_the_origin_check(api):
    response = api.client.post("/api/sessions", headers=api.headers | {"Origin": "http://elsewhere.example",
                                                                         "Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 201


# -- exposure: headers, operator-only fields, file modes -----------------------------------------

def test_the_page_and_the_api_carry_the_hardening_headers(client, api):
    csp = client.get("/").headers["Content-Security-Policy"]
    for directive in ("object-src 'none'", "base-uri 'none'", "form-action 'self'", "frame-ancestors 'none'",
                      "script-src 'self'"):
        assert directive in csp
    answer = api.get("/api/conversations")
    assert answer.headers["Cache-Control"] == "no-store"
    assert "Strict-Transport-Security" not in answer.headers  # development: plain http


def test_production_sends_hsts(services):
    import dataclasses

    from app import create_app
    from app.wiring import Wiring

    production = Wiring(dataclasses.replace(services.settings, env="production", secret_key="k" * 32))
    answer = create_app({"TESTING": True}, services=production).test_client().get("/healthz")
    assert answer.headers["Strict-Transport-Security"].startswith("max-age=")


def test_the_status_view_keeps_host_and_pid_for_operators(api, services):
    session_id = new_session_id()
    api.send(session_id, "hi")
    seen_by_client = api.get(f"/api/sessions/{session_id}").json
    assert "created_by" not in seen_by_client and "created_by" not in seen_by_client["tracked"]
    assert "fence" not in seen_by_client
    assert services.sessions.status(session_id)["created_by"].startswith("web:")  # the database's


def test_a_new_sqlite_database_is_private(tmp_path):
    import stat

    from app.db import Database

    db = Database(f"sqlite:///{tmp_path / 'private.db'}")
    db.create_all()
    db.dispose()
    for path in tmp_path.glob("private.db*"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_metrics_need_their_token_and_are_off_in_production_without_one(services, client):
    import dataclasses

    from app import create_app
    from app.wiring import Wiring

    assert client.get("/metrics").status_code == 200  # development, no token: open (make run)

    def app_with(**changes):
        wiring = Wiring(dataclasses.replace(services.settings, **changes))
        return create_app({"TESTING": True}, services=wiring).test_client()

    guarded = app_with(metrics_token="m-secret")
    assert guarded.get("/metrics").status_code == 401
    assert guarded.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert guarded.get("/metrics", headers={"Authorization": "Bearer m-secret"}).status_code == 200
    assert app_with(env="production", secret_key="k" * 32).get("/metrics").status_code == 404


# -- secrets stay out of argv ---------------------------------------------------------------------

def test_the_procfile_passes_redis_urls_by_environment_not_argv():
    from pathlib import Path

    from honcho.environ import parse_procfile

    procfile = parse_procfile((Path(__file__).resolve().parents[1] / "Procfile").read_text()).processes
    for name in ("worker", "cron"):
        assert "--url" not in procfile[name] and "REDIS_URL" not in procfile[name]
    # RQ reads its Redis (a URL, or sentinels) from workers/rq_settings.py, i.e. app/config.py
    assert procfile["worker"].startswith("rq worker ") and " -c workers.rq_settings " in procfile["worker"]
    assert procfile["cron"] == "arzani cron"  # reads REDIS_URL through app/config.py


@pytest.mark.slow
def test_a_worker_given_its_redis_url_only_by_environment_answers(api, services, make_stack, settings):
    """What the Procfile's worker line does: no --url in argv, REDIS_URL in the environment, read
    by workers/rq_settings.py (and RQ_REDIS_URL, what `arzani env` exports, works too)."""
    import subprocess

    from tests.stack import BIN

    stack = make_stack(settings.database_url)
    for env in (stack.env, dict(stack.env, RQ_REDIS_URL=stack.env["REDIS_URL"])):
        posted = api.send(new_session_id(), "from a worker with no --url").json
        subprocess.run([str(BIN / "rq"), "worker", "--burst", "-c", "workers.rq_settings", env["ARZANI_QUEUE"]],
                       env=env, check=True, capture_output=True, timeout=120)
        messages = api.get(f"/api/conversations/{posted['conversation_id']}").json["messages"]
        assert [m["status"] for m in messages] == ["answered", "complete"]


def test_making_the_database_private_keeps_sqlites_locks(tmp_path):
    """A second engine on a file this process already has open must not open and close the file
    itself: POSIX locks are per process and any close drops them, and another process would
    then checkpoint and delete the WAL under our connections (seen: a worker reading a database
    that no longer had the bench's messages)."""
    import os

    from sqlalchemy import text

    from app.db import Database

    path = tmp_path / "shared.db"
    first = Database(f"sqlite:///{path}")
    first.create_all()
    inode = os.stat(path).st_ino

    def our_locks() -> int:
        with open("/proc/locks") as locks:
            return sum(1 for line in locks if f" {os.getpid()} " in line and line.split()[5].endswith(f":{inode}"))

    with first.engine.connect() as connection:
        connection.execute(text("SELECT 1")).fetchall()
        held = our_locks()
        assert held >= 1
        second = Database(f"sqlite:///{path}")
        assert our_locks() == held
        second.dispose()
    first.dispose()
