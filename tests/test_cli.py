"""`arzani` operator commands, against the test's real Redis and database."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from app import keys
from scripts.cli import cli
from tests.helpers import new_session_id


@pytest.fixture
def arzani(settings, services):
    runner = CliRunner()
    env = {"REDIS_URL": settings.redis_url, "DATABASE_URL": settings.database_url}

    def _run(*args: str, ok: bool = True):
        result = runner.invoke(cli, list(args), env=env, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return _run


def test_users_create_prints_the_token_alone_on_the_last_line(arzani, client):
    result = arzani("users", "create", "ops-bot")
    token = result.output.strip().splitlines()[-1]
    assert " " not in token and len(token) > 30
    response = client.get("/api/conversations", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


def test_sessions_show_and_list_report_what_redis_and_the_database_believe(arzani, api, services):
    session_id = new_session_id()
    posted = api.send(session_id, "status please").json
    shown = json.loads(arzani("sessions", "show", session_id).output)
    assert shown["conversation_id"] == posted["conversation_id"]
    assert shown["tracked"]["conversation_id"] == posted["conversation_id"]
    assert shown["consistent"] is True
    assert shown["fence"] == int(services.redis.hget(keys.session_key(session_id), "fence"))  # one acquisition

    listing = arzani("sessions", "list").output
    assert session_id in listing and "ok" in listing

    services.redis.hset(keys.session_key(session_id), "cid", "elsewhere")
    mismatched = arzani("sessions", "list", "--inconsistent", "--json").output.strip().splitlines()
    assert [json.loads(line)["session_id"] for line in mismatched] == [session_id]


def test_sessions_show_refuses_a_malformed_session_id(arzani):
    result = arzani("sessions", "show", "bad id!", ok=False)
    assert result.exit_code == 2
    assert "session ids match" in result.output


def test_a_missing_redis_url_is_a_clear_error(services):
    result = CliRunner().invoke(cli, ["sessions", "show", "abcdefgh"], env={"REDIS_URL": ""})
    assert result.exit_code == 1
    assert "REDIS_URL is not set" in result.output


def test_users_revoke_stops_the_token_at_once(arzani, client):
    token = arzani("users", "create", "temp").output.strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/conversations", headers=headers).status_code == 200
    assert "revoked user" in arzani("users", "revoke", "temp").output
    response = client.get("/api/conversations", headers=headers)
    assert response.status_code == 401 and response.json["error"]["code"] == "unauthorized"
    again = arzani("users", "revoke", "temp", ok=False)
    assert again.exit_code == 1 and "no live user" in again.output
