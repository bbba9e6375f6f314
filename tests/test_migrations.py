"""Alembic migrations produce exactly the schema the models describe, on SQLite and PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
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


def hold_sqlite_write_lock(path, seconds: float) -> threading.Timer:
    """Another connection takes SQLite's write lock now (BEGIN IMMEDIATE, as a worker warming up
    or a web process writing does) and lets it go after `seconds`."""
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")

    def release():
        holder.rollback()
        holder.close()

    timer = threading.Timer(seconds, release)
    timer.start()
    return timer


@pytest.mark.parametrize("made_by", ["nothing", "create_all"])
def test_a_migration_waits_for_another_writer_instead_of_failing(tmp_path, made_by):
    """`arzani users create` (and `db upgrade`) beside a worker that holds SQLite's write lock: a
    migration or a stamp that read the schema in a deferred transaction could not wait for the
    lock (SQLite skips busy_timeout there) and failed at once with "database is locked"."""
    path = tmp_path / "busy.db"
    db = Database(f"sqlite:///{path}")
    try:
        if made_by == "create_all":
            db.create_all()  # then upgrade() stamps it: reads alembic_version's absence, writes it
        else:
            db.ping()  # the file exists, in WAL mode, with nothing in it
        held_for = 1.0
        timer = hold_sqlite_write_lock(path, held_for)
        started = time.monotonic()
        try:
            assert upgrade(db) == head()
        finally:
            timer.join()
        assert time.monotonic() - started >= held_for * 0.9  # it waited for the lock, not around it
        assert schema_differences(db) == []
    finally:
        db.dispose()


def test_create_all_waits_for_another_writer_instead_of_failing(tmp_path):
    path = tmp_path / "busy.db"
    db = Database(f"sqlite:///{path}")
    try:
        db.ping()
        timer = hold_sqlite_write_lock(path, 1.0)
        try:
            db.create_all()
        finally:
            timer.join()
        assert {"conversations", "messages", "users"} <= set(inspect(db.engine).get_table_names())
    finally:
        db.dispose()
