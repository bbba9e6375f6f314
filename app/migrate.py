"""Schema migrations (Alembic, scripts in app/migrations): `arzani db upgrade`."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from app.db import Database

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def current_revision(db: Database) -> str | None:
    with db.engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(db: Database, revision: str = "head") -> str | None:
    """Bring the schema to `revision`. A database made by `create_all` (tables, no
    alembic_version) is adopted: stamped at the newest revision if it already has the models'
    tables and columns (made by this version), else at the first one (made before migrations
    existed), then upgraded."""
    config = alembic_config(db.url)
    tables = set(inspect(db.engine).get_table_names())
    if "conversations" in tables and "alembic_version" not in tables:
        from alembic.autogenerate import compare_metadata

        from app.models import Base

        with db.engine.connect() as connection:
            current = not compare_metadata(MigrationContext.configure(connection), Base.metadata)
        command.stamp(config, "head" if current else "0001")
    command.upgrade(config, revision)
    return current_revision(db)
