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
