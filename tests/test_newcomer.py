"""A newcomer's first hour (issue 14): no trap, no traceback, no lost chats."""

from __future__ import annotations

import logging
import stat
import sys

import pytest
from click.testing import CliRunner

from app.config import Settings
from app.errors import ConfigurationError
from scripts.cli import cli
from scripts.devstack import dev_secret_key
from tests.helpers import new_session_id
from tests.servers import free_port
from workers import agents


@pytest.fixture
def arzani(settings, services):
    runner = CliRunner()

    def _run(*args: str, env: dict | None = None):
        base = {"REDIS_URL": settings.redis_url, "DATABASE_URL": settings.database_url}
        return runner.invoke(cli, list(args), env=base | (env or {}), catch_exceptions=False)

    return _run


# -- 1. a restart keeps browser users' chats --------------------------------------------------

def test_the_development_cookie_key_is_made_once_and_kept_private(tmp_path):
    first = dev_secret_key(tmp_path)
    assert len(first) == 64
    assert dev_secret_key(tmp_path) == first  # the next `make run` signs cookies with the same key
    assert stat.S_IMODE((tmp_path / "secret_key").stat().st_mode) == 0o600


# -- 3. URL mistakes are one line ------------------------------------------------------------

@pytest.mark.parametrize(("given", "taken"), [
    ("postgres://u:p@db.internal/arzani", "postgresql+psycopg://u:p@db.internal/arzani"),
    ("postgresql://u:p@db.internal/arzani", "postgresql+psycopg://u:p@db.internal/arzani"),
    ("postgresql+psycopg://u@h/d", "postgresql+psycopg://u@h/d"),
    ("sqlite:///instance/arzani.db", "sqlite:///instance/arzani.db"),
])
def test_database_urls_users_write_are_taken_as_they_mean_them(given, taken):
    assert Settings.from_env({"DATABASE_URL": given}).database_url == taken


@pytest.mark.parametrize(("name", "value", "says"), [
    ("DATABASE_URL", "postgress://u@h/d", "DATABASE_URL must be SQLite or PostgreSQL"),
    ("DATABASE_URL", "mysql://u@h/d", "DATABASE_URL must be SQLite or PostgreSQL"),
    ("DATABASE_URL", "instance/arzani.db", "DATABASE_URL must be a URL like sqlite:///PATH"),
    ("DATABASE_URL", "postgresql+psycopg2://u@h/d", "use postgresql://"),
    ("REDIS_URL", "localhost:6379", "REDIS_URL must be a URL like redis://HOST:6379/0"),
    ("REDIS_URL", "http://localhost:6379", "REDIS_URL must be a URL like redis://HOST:6379/0"),
    ("ARZANI_QUEUE_REDIS_URL", "127.0.0.1:6379", "ARZANI_QUEUE_REDIS_URL must be a URL"),
])
def test_a_mistyped_url_is_one_line_that_says_the_expected_form(name, value, says):
    with pytest.raises(ConfigurationError) as error:
        Settings.from_env({name: value})
    assert says in error.value.message and "\n" not in error.value.message


def test_a_redis_url_error_does_not_print_a_password():
    with pytest.raises(ConfigurationError) as error:
        Settings.from_env({"REDIS_URL": "hunter2@localhost:6379"})
    assert "hunter2" not in error.value.message


def test_a_sqlite_file_in_a_missing_directory_is_an_error_not_a_new_empty_database(arzani, tmp_path):
    missing = tmp_path / "no-such-dir"
    result = arzani("sessions", "list", env={"DATABASE_URL": f"sqlite:///{missing}/arzani.db"})
    assert result.exit_code == 1
    assert "directory that does not exist" in result.output and "Traceback" not in result.output
    assert not missing.exists()


# -- 6. a fresh Redis in front of an existing database is not an incident ----------------------

def test_rebuilding_a_lost_key_logs_no_warning_but_a_real_disagreement_does(api, services, caplog):
    from app import keys

    session_id = new_session_id()
    api.send(session_id, "hello")
    services.redis.delete(keys.session_key(session_id))  # Redis restarted empty
    with caplog.at_level(logging.DEBUG, logger="arzani"):
        assert services.sessions.repair(session_id, replacing=services.sessions.tracked_conversation_id(session_id))
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    caplog.clear()
    services.redis.hset(keys.session_key(session_id), "cid", "another-one")
    with caplog.at_level(logging.INFO, logger="arzani"):
        assert services.sessions.repair(session_id, replacing=services.sessions.tracked_conversation_id(session_id))
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "session key repaired from the database"]


def test_scheduled_reconcile_counts_rebuilt_keys_in_one_info_line(api, services, caplog):
    from app import keys
    from workers.maintenance import reconcile_job

    session_ids = [new_session_id() for _ in range(3)]
    for session_id in session_ids:
        api.send(session_id, "hi")
        services.redis.delete(keys.session_key(session_id))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="arzani"):
        assert reconcile_job()["rebuilt"] == 3
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
        "reconcile: rebuilt 3 session key(s) missing from Redis"]


# -- 10. silent footguns -----------------------------------------------------------------------

def test_sessions_show_of_an_unknown_session_exits_1(arzani):
    result = arzani("sessions", "show", new_session_id())
    assert result.exit_code == 1 and "no such session" in result.output


def test_a_second_user_with_a_taken_name_is_refused_unless_asked_for(arzani):
    assert arzani("users", "create", "alice-ops").exit_code == 0
    again = arzani("users", "create", "alice-ops")
    assert again.exit_code == 1 and "already named 'alice-ops'" in again.output
    assert arzani("users", "create", "alice-ops", "--allow-duplicate").exit_code == 0


def test_users_list_shows_api_users_without_tokens(arzani):
    created = arzani("users", "create", "listed-bot").output.strip().splitlines()[-1]
    listing = arzani("users", "list")
    assert listing.exit_code == 0 and "listed-bot" in listing.output and created not in listing.output


def test_sweep_prints_no_python_reprs(arzani, api, services, monkeypatch):
    import workers.maintenance

    monkeypatch.setattr(workers.maintenance, "sweep_pending", lambda wiring, older_than_s: [4, 7])
    out = arzani("sweep").output
    assert "message(s) 4, 7" in out and "[" not in out


def test_race_report_values_read_as_text():
    from scripts.race import _plain

    assert _plain({"created": 50, "waited": 400}) == "created=50 waited=400"
    assert _plain(["a", "b"]) == "a, b"


def test_a_worker_without_rq_settings_is_warned_about_once(services, monkeypatch, caplog):
    from workers import jobs

    monkeypatch.delitem(sys.modules, "workers.rq_settings", raising=False)
    with caplog.at_level(logging.WARNING, logger="arzani"):
        jobs._warn_if_not_preloaded(services)
        jobs._warn_if_not_preloaded(services)  # another horse, another job: already said
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "-c workers.rq_settings" in warnings[0]


# -- 11. nits ----------------------------------------------------------------------------------

def test_the_echo_reply_counts_in_good_english():
    reply = agents.EchoAgent().reply("c", [agents.Turn("user", "hi")])
    assert "1 message seen" in reply
    assert "2 messages seen" in agents.EchoAgent().reply(
        "c", [agents.Turn("user", "hi"), agents.Turn("assistant", "hello")])


# -- 2. start-up failures are one line, before the banner --------------------------------------

def _arzani_run(tmp_path, **env):
    import os
    import subprocess

    from tests.stack import BIN

    full = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "PORT")}
    full.update({"PORT": str(free_port()), **env})
    return subprocess.run([str(BIN / "arzani"), "run", "--web-processes", "1", "--workers", "1"], env=full,
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)


def _one_line_failure(result, says: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert says in output, output
    assert "Traceback" not in output and "chat page" not in output  # before the banner
    assert len(output.strip().splitlines()) == 1, output


def test_run_refuses_a_port_in_use_naming_port(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _arzani_run(tmp_path, PORT=str(port))
    _one_line_failure(result, f"PORT {port} on 127.0.0.1 is not free")


def test_run_refuses_an_unreachable_redis_url(tmp_path):
    result = _arzani_run(tmp_path, REDIS_URL=f"redis://:s3cret@127.0.0.1:{free_port()}/0")
    _one_line_failure(result, "Redis at REDIS_URL=redis://:***@127.0.0.1:")
    assert "s3cret" not in result.stderr


@pytest.mark.parametrize(("database_url", "says"), [
    ("mysql://u@h/d", "DATABASE_URL must be SQLite or PostgreSQL"),
    ("postgresql://nobody@127.0.0.1:{port}/arzani", "the database at DATABASE_URL=postgresql+psycopg://nobody@"),
])
def test_run_refuses_a_bad_or_unreachable_database(tmp_path, redis_url, database_url, says):
    result = _arzani_run(tmp_path, REDIS_URL=redis_url, DATABASE_URL=database_url.format(port=free_port()))
    _one_line_failure(result, says)


def test_a_second_run_on_the_same_instance_is_refused(tmp_path):
    import fcntl

    (tmp_path / "instance").mkdir()
    with open(tmp_path / "instance" / "run.lock", "w") as held:
        held.write("4242")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = _arzani_run(tmp_path)
    _one_line_failure(result, "another `make run` (pid 4242) is using")


# -- 4. the Redis URL hand-off ---------------------------------------------------------------

def test_commands_find_the_dev_stack_through_instance_stack_env(tmp_path, monkeypatch, redis_url):
    (tmp_path / "instance").mkdir()
    (tmp_path / "instance" / "stack.env").write_text(f"REDIS_URL={redis_url}\nDATABASE_URL=sqlite:///x.db\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    import fcntl

    with open(tmp_path / "instance" / "run.lock", "w") as run_lock:  # what a running `make run` holds
        fcntl.flock(run_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert Settings.from_env().redis_url == redis_url
        result = CliRunner().invoke(cli, ["env"])
        assert result.exit_code == 0
        assert f"export REDIS_URL={redis_url}" in result.output and f"export RQ_REDIS_URL={redis_url}" in result.output
    # A `make run` SIGKILLed leaves its stack.env behind, but not its lock: the file is ignored.
    assert Settings.from_env().redis_url is None
    assert CliRunner().invoke(cli, ["env"]).exit_code == 1


def test_without_a_dev_stack_the_error_says_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert CliRunner().invoke(cli, ["env"]).exit_code == 1
    result = CliRunner().invoke(cli, ["sessions", "list"], env={"REDIS_URL": "", "DATABASE_URL": "sqlite:///x.db"})
    assert result.exit_code == 1 and "start `make run` here" in result.output


@pytest.mark.slow
def test_rq_worker_url_works_without_redis_url_exported(api, services, make_stack, settings):
    """`rq worker --url URL` (the Procfile's worker without REDIS_URL in its environment)."""
    stack = make_stack(settings.database_url)
    url = stack.env.pop("REDIS_URL")
    posted = api.send(new_session_id(), "answer me from a worker that knows only --url").json
    stack.start_worker("url-only", "--burst", url=url).wait(120)
    messages = api.get(f"/api/conversations/{posted['conversation_id']}").json["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"], stack.log(next(iter(stack.processes)))
