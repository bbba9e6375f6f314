"""The database: one engine per process, made lazily from DATABASE_URL, never shared across fork.

SQLite is the zero-install default and must survive several gunicorn processes writing at once:
WAL lets readers run beside a writer, `busy_timeout` makes a writer wait for the lock instead of
failing, and write transactions start with BEGIN IMMEDIATE. Without that last one, a transaction
that reads first and writes later gets SQLITE_BUSY *at once* when another process committed in
between (busy_timeout does not apply to that upgrade): "database is locked" in a client's face.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from app.errors import ConfigurationError
from app.models import Base

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for another process's write transaction before giving up."""

_WRITE_OPTION = "arzani_write"


def for_writing(engine: Engine) -> Engine:
    """`engine`, whose transactions on SQLite start with BEGIN IMMEDIATE (elsewhere: unchanged).
    For anything that reads and then writes outside `Database.write()`: schema changes (create_all,
    Alembic's migrations and stamps). A deferred transaction that has read cannot wait for the
    write lock: SQLite answers "database is locked" at once, whatever busy_timeout says, when
    another connection holds it (a worker warming up, a web process writing)."""
    return engine.execution_options(**{_WRITE_OPTION: True})


def make_engine(database_url: str) -> Engine:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)

    if url.database and url.database != ":memory:":
        # A mistyped path must not become a new, empty database in a new directory: the data
        # would seem lost. `make run` creates the default's directory, instance/, itself.
        folder = Path(url.database).parent
        if not folder.is_dir():
            raise ConfigurationError(
                f"DATABASE_URL names a SQLite file in a directory that does not exist: {folder}/ "
                f"(create it, or fix the path; `make run` creates instance/ for the default)")
        # Created 0600 (the conversations are private); SQLite gives its -wal and -shm files the
        # database file's mode. Only when it does not exist yet: opening and closing a database
        # file that this process already has open through SQLite would drop SQLite's POSIX locks
        # on it (they are per process, released by any close), and other processes would then
        # checkpoint and delete the WAL under our connections.
        try:
            os.close(os.open(url.database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _sqlite_connect(dbapi_connection, _record):
        # Take BEGIN away from pysqlite so that we can emit BEGIN IMMEDIATE ourselves
        # (SQLAlchemy's documented recipe for pysqlite transactions).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _sqlite_begin(conn):
        immediate = conn.get_execution_options().get(_WRITE_OPTION)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Database:
    """An engine and its two session factories, a pair: `read()` and `write()`."""

    def __init__(self, database_url: str):
        self.url = database_url
        self.engine = make_engine(database_url)
        self.is_sqlite = self.engine.dialect.name == "sqlite"
        self._read = sessionmaker(self.engine, expire_on_commit=False)
        self._write = sessionmaker(for_writing(self.engine), expire_on_commit=False)
        # SQLite: one write transaction at a time within this process, queued here. Under gunicorn's
        # gevent worker a writer that yields inside its transaction (any socket call) would
        # otherwise let a second greenlet of the same process wait for SQLite's lock in C, which
        # blocks the whole process, the first writer included, until busy_timeout. (Made after
        # the worker's monkey-patching, so it is a greenlet-aware lock there.)
        self._write_lock = threading.RLock() if self.is_sqlite else None
        _dispose_after_fork(self.engine)
        if self.is_sqlite:  # a fork (gunicorn, an RQ work-horse) must not inherit the lock held
            database = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: _renew_write_lock(database))

    @property
    def insert(self):
        """The dialect's own INSERT, with ON CONFLICT (upserts) for SQLite and PostgreSQL alike."""
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert

    def read(self) -> Session:
        """`with db.read() as session:` a session for reads (its transaction is never committed)."""
        return self._read()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """`with db.write() as session:` a session whose transaction is a write transaction from
        its first statement. Commits when the block ends, rolls back if it raises."""
        if self._write_lock is None:
            with self._write() as session, session.begin():
                yield session
            return
        with self._write_lock, self._write() as session, session.begin():
            yield session

    @contextmanager
    def rehearsal(self) -> Iterator[Rehearsal]:
        """A stand-in for this database whose read() and write() sessions all run inside one
        write transaction that is rolled back at the end (each commit of theirs releases a
        savepoint): nothing done through it is ever committed. It exists to run a code path's
        statements once so that this engine caches their compiled forms (workers/jobs.py
        warm_up), in a process that will fork: its connection is closed and the pool disposed
        before it returns, so no child inherits either."""
        try:
            with for_writing(self.engine).connect() as connection:
                transaction = connection.begin()
                try:
                    yield Rehearsal(self, connection)
                finally:
                    transaction.rollback()
        finally:
            self.engine.dispose()

    def create_all(self) -> None:
        Base.metadata.create_all(for_writing(self.engine))

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


class Rehearsal:
    """Database.rehearsal()'s stand-in: `read()` and `write()` as the Database's, on one connection
    whose transaction the rehearsal rolls back."""

    def __init__(self, database: Database, connection):
        self.url = database.url
        self.engine = database.engine
        self.is_sqlite = database.is_sqlite
        self._connection = connection

    @property
    def insert(self):
        return Database.insert.fget(self)

    def _session(self) -> Session:
        return Session(bind=self._connection, join_transaction_mode="create_savepoint", expire_on_commit=False)

    def read(self) -> Session:
        return self._session()

    @contextmanager
    def write(self) -> Iterator[Session]:
        with self._session() as session, session.begin():
            yield session


def _renew_write_lock(database: weakref.ref) -> None:
    db = database()
    if db is not None:
        db._write_lock = threading.RLock()


def _dispose_after_fork(engine: Engine) -> None:
    """A forked child (gunicorn worker, RQ work-horse) must not reuse its parent's connections."""
    ref = weakref.ref(engine)

    def _after_fork_in_child():
        eng = ref()
        if eng is not None:
            eng.dispose(close=False)

    os.register_at_fork(after_in_child=_after_fork_in_child)
