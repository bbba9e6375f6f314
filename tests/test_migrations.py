"""Alembic migrations produce exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

from app.db import Database
from app.migrate import alembic_config, current_revision, upgrade
from app.models import Base


def head() -> str:
    """The newest revision, as Alembic's own script directory knows it."""
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


def schema_differences(db: Database) -> list:
    with db.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return compare_metadata(context, Base.metadata)


def test_the_migrated_schema_equals_the_models(database_url):
    db = Database(database_url)
    try:
        assert upgrade(db) == head()
        assert schema_differences(db) == []
        indexes = {ix["name"]: ix for ix in inspect(db.engine).get_indexes("conversations")}
        assert indexes["uq_conversations_live_session"]["unique"]
        assert upgrade(db) == head()  # idempotent
        command.downgrade(alembic_config(db.url), "base")
        assert current_revision(db) is None
        assert set(inspect(db.engine).get_table_names()) == {"alembic_version"}
        assert upgrade(db) == head()
    finally:
        db.dispose()


def test_a_database_made_before_migrations_is_adopted(database_url):
    db = Database(database_url)
    try:
        db.create_all()  # what `arzani db init` did before Alembic
        assert upgrade(db) == head()
        assert schema_differences(db) == []
    finally:
        db.dispose()
