"""Configuration: every variable validated in one place (app/config.py over app/defaults.py), a
bad value is one line naming it; the agents' registry matches what the settings accept."""

from __future__ import annotations

import pytest

from app import defaults
from app.config import Settings
from app.errors import ConfigurationError
from workers import agents


def test_production_refuses_to_start_without_a_secret_key(monkeypatch):
    from app import create_app

    with pytest.raises(ConfigurationError, match="ARZANI_SECRET_KEY is required"):
        Settings.from_env({"ARZANI_ENV": "production", "REDIS_URL": "redis://x"})
    monkeypatch.setenv("ARZANI_ENV", "production")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    monkeypatch.delenv("ARZANI_SECRET_KEY", raising=False)
    with pytest.raises(ConfigurationError):
        create_app()
    monkeypatch.setenv("ARZANI_SECRET_KEY", "s3cret")
    with pytest.raises(ConfigurationError, match="at least 32 bytes"):  # a guessable key is no key
        create_app()
    monkeypatch.setenv("ARZANI_SECRET_KEY", "k" * 32)
    app = create_app()
    assert app.config["SESSION_COOKIE_SECURE"] is True
    assert app.config["SESSION_COOKIE_NAME"].startswith("__Host-arzani_session_")


@pytest.mark.parametrize(("name", "value", "says"), [
    ("ARZANI_SSE_MAX_S", "abc", "ARZANI_SSE_MAX_S must be a number of seconds, got 'abc'"),
    ("ARZANI_SSE_MAX_S", "-1", "ARZANI_SSE_MAX_S must be a finite number"),
    ("ARZANI_AGENT_TIMEOUT", "nan", "ARZANI_AGENT_TIMEOUT must be a finite number"),
    ("ARZANI_AGENT_TIMEOUT", "inf", "ARZANI_AGENT_TIMEOUT must be a finite number"),
    ("ARZANI_LOCK_TTL_MS", "soon", "ARZANI_LOCK_TTL_MS must be an integer, got 'soon'"),
    ("ARZANI_SWEEP_INTERVAL", "-5", "ARZANI_SWEEP_INTERVAL must be at least 0"),
    ("ARZANI_CLEANUP_AFTER", "1d", "ARZANI_CLEANUP_AFTER must be an integer"),
    ("ARZANI_LOG_LEVEL", "LOUD", "ARZANI_LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
    ("ARZANI_ENV", "prod", "ARZANI_ENV must be one of development, production, got 'prod'"),
    ("ARZANI_AGENT", "gpt", "ARZANI_AGENT must be one of echo, openai, got 'gpt'"),
])
def test_a_bad_value_is_one_line_naming_the_variable(name, value, says):
    with pytest.raises(ConfigurationError) as error:
        Settings.from_env({name: value, "ARZANI_SECRET_KEY": "k"})
    assert says in error.value.message
    assert "\n" not in error.value.message


def test_unset_variables_take_the_documented_defaults():
    settings = Settings.from_env({})
    assert (settings.sse_max_s, settings.agent_timeout_s) == (defaults.SSE_MAX_S, defaults.AGENT_TIMEOUT_S)
    assert (settings.queue_name, settings.database_url) == (defaults.QUEUE, defaults.DATABASE_URL)
    assert (settings.sweep_interval_s, settings.sweep_after_s) == (defaults.SWEEP_INTERVAL_S, defaults.SWEEP_AFTER_S)
    assert settings.log_level == defaults.LOG_LEVEL and settings.rate_limit is None
    assert Settings.from_env({"ARZANI_LOG_LEVEL": "warning"}).log_level == "WARNING"
    assert Settings.from_env({"ARZANI_SSE_MAX_S": "2.5"}).sse_max_s == 2.5


def test_the_agent_registry_is_what_the_settings_accept_and_builds_every_agent():
    assert set(agents.REGISTRY) == set(defaults.AGENT_NAMES)
    for name in defaults.AGENT_NAMES:
        agent = agents.make_agent(Settings.from_env({"ARZANI_AGENT": name}))
        assert callable(agent.reply)


def test_an_agent_name_without_a_factory_is_a_configuration_error_not_an_echo():
    import dataclasses

    unknown = dataclasses.replace(Settings.from_env({}), agent="claude-local")
    with pytest.raises(ConfigurationError, match="ARZANI_AGENT names no agent: 'claude-local'"):
        agents.make_agent(unknown)


def test_the_service_reads_its_variables_only_in_app_config():
    """No module but app/config.py reads an ARZANI_* variable or the service's URLs itself."""
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1]
    readers = re.compile(r"environ(?:\.get)?\(?\[?[\"'](?:ARZANI_|REDIS_URL|DATABASE_URL|OPENAI_)")
    offenders = [str(path.relative_to(root)) for folder in ("app", "workers")
                 for path in (root / folder).rglob("*.py")
                 if path.name != "config.py" and readers.search(path.read_text())]
    assert offenders == []


# -- Redis Sentinel ------------------------------------------------------------------------------

SENTINELS = "sentinel-1:26379, sentinel-2:26379,[::1]:26380"


def test_sentinels_are_parsed_with_the_documented_defaults():
    settings = Settings.from_env({"ARZANI_REDIS_SENTINELS": SENTINELS})
    assert settings.redis_sentinels == (("sentinel-1", 26379), ("sentinel-2", 26379), ("::1", 26380))
    assert settings.redis_sentinel_master == defaults.REDIS_SENTINEL_MASTER == "mymaster"
    assert settings.redis_sentinel_password is None and settings.redis_url is None
    assert settings.redis_configured and not Settings.from_env({}).redis_configured
    named = Settings.from_env({"ARZANI_REDIS_SENTINELS": SENTINELS, "ARZANI_REDIS_SENTINEL_MASTER": "arzani",
                               "ARZANI_REDIS_SENTINEL_PASSWORD": "s3cret"})
    assert (named.redis_sentinel_master, named.redis_sentinel_password) == ("arzani", "s3cret")
    assert "s3cret" not in repr(named)


@pytest.mark.parametrize(("environ", "says"), [
    ({"ARZANI_REDIS_SENTINELS": "sentinel-1"}, "ARZANI_REDIS_SENTINELS must be HOST:PORT[,HOST:PORT...]"),
    ({"ARZANI_REDIS_SENTINELS": "a:26379,b:huge"}, "got 'b:huge'"),
    ({"ARZANI_REDIS_SENTINELS": "a:26379,"}, "got ''"),
    ({"ARZANI_REDIS_SENTINELS": "a:70000"}, "got 'a:70000'"),
    ({"ARZANI_REDIS_SENTINELS": "redis://a:26379"}, "got 'redis://a:26379'"),
    ({"ARZANI_REDIS_SENTINELS": "a:1", "ARZANI_REDIS_SENTINEL_MASTER": "my master"},
     "ARZANI_REDIS_SENTINEL_MASTER must be a name without spaces"),
    ({"ARZANI_REDIS_SENTINEL_MASTER": "mymaster"},
     "ARZANI_REDIS_SENTINEL_MASTER is set but ARZANI_REDIS_SENTINELS is not"),
    ({"ARZANI_REDIS_SENTINEL_PASSWORD": "x"}, "ARZANI_REDIS_SENTINEL_PASSWORD is set but ARZANI_REDIS_SENTINELS"),
    ({"ARZANI_REDIS_SENTINELS": "a:1", "ARZANI_REDIS_CLUSTER": "1", "ARZANI_QUEUE_REDIS_URL": "redis://q/0"},
     "ARZANI_REDIS_SENTINELS and ARZANI_REDIS_CLUSTER=1 cannot be combined"),
    ({"ARZANI_REDIS_SENTINELS": "a:1", "ARZANI_REDIS_CLUSTER": "1"},
     "ARZANI_REDIS_SENTINELS and ARZANI_REDIS_CLUSTER=1 cannot be combined"),
    ({"ARZANI_REDIS_SENTINELS": "a:1", "REDIS_URL": "unix:///run/redis.sock"},
     "with ARZANI_REDIS_SENTINELS, REDIS_URL must be redis:// or rediss://"),
])
def test_a_bad_sentinel_setting_is_one_line_naming_it(environ, says):
    with pytest.raises(ConfigurationError) as error:
        Settings.from_env(environ)
    assert says in error.value.message
    assert "\n" not in error.value.message


def test_with_sentinels_redis_url_gives_only_the_masters_credentials_db_and_tls():
    from redis.sentinel import SentinelConnectionPool, SentinelManagedSSLConnection

    from app.wiring import BlockingConnectionPool, Wiring

    settings = Settings.from_env({"ARZANI_REDIS_SENTINELS": SENTINELS, "ARZANI_REDIS_MAX_CONNECTIONS": "7",
                                  "ARZANI_REDIS_SENTINEL_PASSWORD": "sentinel-secret",
                                  "REDIS_URL": "rediss://arzani:s3cret@not-used:1/2"})
    wiring = Wiring(settings)
    for client, decoded in ((wiring.redis, True), (wiring.rq_redis, False)):
        pool = client.connection_pool
        assert isinstance(pool, SentinelConnectionPool) and isinstance(pool, BlockingConnectionPool)
        assert pool.service_name == "mymaster" and pool.max_connections == 7
        assert pool.connection_class is SentinelManagedSSLConnection
        made = pool.connection_kwargs
        assert (made["username"], made["password"], made["db"], made["decode_responses"]) == (
            "arzani", "s3cret", 2, decoded)
        assert "host" not in made and made["socket_timeout"] == made["socket_connect_timeout"] == 5.0
        assert made["driver_info"] is None  # no CLIENT SETINFO on connect (test_a_new_connection_...)
    asked = wiring.sentinel.sentinels
    assert [(c.connection_pool.connection_kwargs["host"], c.connection_pool.connection_kwargs["port"])
            for c in asked] == [("sentinel-1", 26379), ("sentinel-2", 26379), ("::1", 26380)]
    assert asked[0].connection_pool.connection_kwargs["password"] == "sentinel-secret"
    assert wiring.redis.connection_pool.sentinel_manager is wiring.rq_redis.connection_pool.sentinel_manager
    wiring.close()


def test_with_sentinels_and_a_queue_url_rq_uses_the_queue_url():
    from app.wiring import Wiring

    wiring = Wiring(Settings.from_env({"ARZANI_REDIS_SENTINELS": SENTINELS,
                                       "ARZANI_QUEUE_REDIS_URL": "redis://queue.internal:6379/3"}))
    assert wiring.rq_redis.connection_pool.connection_kwargs["host"] == "queue.internal"
    assert wiring.redis.connection_pool.service_name == "mymaster"


def test_the_rate_limiter_counts_on_the_master_through_the_sentinels():
    from limits.storage import RedisSentinelStorage

    from app.wiring import Wiring

    settings = Settings.from_env({"ARZANI_REDIS_SENTINELS": SENTINELS, "ARZANI_RATE_LIMIT": "10/minute",
                                  "REDIS_URL": "redis://:s3cret@mymaster/0"})
    storage = Wiring(settings).rate_limiter.storage
    assert isinstance(storage, RedisSentinelStorage) and storage.service_name == "mymaster"
    assert not storage.use_replicas  # a replica's counts lag: the limit would let bursts through
    assert storage.storage.connection_pool.connection_kwargs["password"] == "s3cret"


def test_rq_settings_give_the_rq_cli_the_sentinels_or_the_url(monkeypatch):
    """What `rq worker -c workers.rq_settings` connects with (rq/cli/helpers.py get_redis_from_config)."""
    import gc
    import sys

    from rq.cli.helpers import get_redis_from_config, read_config_file

    from workers import jobs

    def rq_connection(environ: dict):
        for name in ("REDIS_URL", "ARZANI_QUEUE_REDIS_URL", "ARZANI_REDIS_SENTINELS", "ARZANI_REDIS_SENTINEL_MASTER",
                     "ARZANI_REDIS_SENTINEL_PASSWORD"):
            monkeypatch.delenv(name, raising=False)
        for name, value in environ.items():
            monkeypatch.setenv(name, value)
        jobs.use_services(None)
        sys.modules.pop("workers.rq_settings", None)
        try:
            settings = read_config_file("workers.rq_settings")
        finally:
            sys.modules.pop("workers.rq_settings", None)
            jobs.use_services(None)
            gc.unfreeze()  # the module freezes the heap for the horses a worker forks; not ours
        return settings, get_redis_from_config(settings)

    settings, client = rq_connection({"ARZANI_REDIS_SENTINELS": SENTINELS, "ARZANI_REDIS_SENTINEL_MASTER": "arzani",
                                      "ARZANI_REDIS_SENTINEL_PASSWORD": "sentinel-secret",
                                      "REDIS_URL": "redis://worker:s3cret@not-used/4"})
    assert "REDIS_URL" not in settings
    pool = client.connection_pool
    assert pool.service_name == "arzani"
    assert (pool.connection_kwargs["username"], pool.connection_kwargs["password"], pool.connection_kwargs["db"]) == (
        "worker", "s3cret", 4)
    assert pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs["password"] == "sentinel-secret"

    settings, client = rq_connection({"REDIS_URL": "redis://:pw@plain.internal:6380/1"})
    assert "SENTINEL" not in settings and client.connection_pool.connection_kwargs["host"] == "plain.internal"
    settings, client = rq_connection({"REDIS_URL": "redis://sessions:1/0", "ARZANI_QUEUE_REDIS_URL": "redis://q:2/0"})
    assert client.connection_pool.connection_kwargs["host"] == "q"  # RQ's own Redis, as the app enqueues to it


def test_the_readmes_configuration_table_names_every_variable_the_settings_read():
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1]
    read = set(re.findall(r'"((?:ARZANI_|OPENAI_)[A-Z_]+|REDIS_URL|DATABASE_URL)"',
                          (root / "app" / "config.py").read_text()))
    table = (root / "README.md").read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    assert {"ARZANI_REDIS_SENTINELS", "ARZANI_REDIS_SENTINEL_MASTER", "ARZANI_REDIS_SENTINEL_PASSWORD"} <= read
    assert sorted(name for name in read if f"`{name}`" not in table) == []


def test_a_new_connection_of_ours_sends_no_client_setinfo(settings):
    """A work-horse opens its Redis connections afresh for every job: redis-py's two CLIENT
    SETINFO round trips per connection were a fixed cost of each reply. Counted by the server."""
    import redis

    from app.wiring import Wiring

    probe = redis.Redis.from_url(settings.redis_url, driver_info=None)

    def client_commands() -> int:
        return probe.info("commandstats").get("cmdstat_client", {}).get("calls", 0)

    before = client_commands()
    wiring = Wiring(settings, process_kind="worker")
    for client in (wiring.redis, wiring.rq_redis):
        client.ping()  # a new connection each
        client.connection_pool.disconnect()
        client.ping()
    assert client_commands() == before
    stock = redis.Redis.from_url(settings.redis_url)
    stock.ping()  # redis-py's default, for contrast: it does send them
    assert client_commands() == before + 2
    stock.close()
    wiring.close()
    probe.close()


def test_our_redis_connections_parse_and_pack_with_hiredis(settings):
    """redis[hiredis] is a dependency (setup.cfg): commands are packed and answers parsed in C, not
    in redis-py's Python (a message's announcements and renewal transaction: 23 us less; issue 15's
    ingest). A dependency list that lost it would fall back silently: the connections say which."""
    from redis._parsers import _HiredisParser
    from redis.connection import HiredisRespSerializer

    from app.wiring import Wiring

    wiring = Wiring(settings)
    try:
        for client in (wiring.redis, wiring.rq_redis):
            connection = client.connection_pool.get_connection()
            try:
                assert isinstance(connection._parser, _HiredisParser)
                assert isinstance(connection._command_packer, HiredisRespSerializer)
            finally:
                client.connection_pool.release(connection)
    finally:
        wiring.close()
