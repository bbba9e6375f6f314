"""Alembic environment: the engine comes from app.db (SQLite pragmas included), the target is
the models' metadata. Run through `arzani db upgrade` (app/migrate.py), not the alembic CLI."""

from alembic import context

from app.db import for_writing, make_engine
from app.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    # A migration (or a stamp) reads the schema, then changes it: on SQLite it must hold the write
    # lock from its first statement, or it fails at once beside any other writer (app/db.py).
    with for_writing(engine).connect() as connection:
        _run(connection)
    engine.dispose()


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `arzani db upgrade`")
run_migrations_online()
