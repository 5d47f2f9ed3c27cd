"""Engines and sessions: one engine per process and URL, SQLite tuned for several processes, Alembic at start."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.orm import Session

from orch.errors import ServiceUnavailable
from orch.settings import get_settings

HEAD_REVISION = "0007"
_MIGRATION_LOCK_KEY = 0x6F726368  # "orch"
DISPATCH_LOCK_KEY = 0x6F726369

# What an unreachable (or restarting) database raises: worth retrying, not a bug.
STORE_UNAVAILABLE: tuple[type[Exception], ...] = (OperationalError, InterfaceError, ServiceUnavailable)

T = TypeVar("T")

_engines: dict[tuple[int, str], Engine] = {}
_schema_ready: set[tuple[int, str]] = set()
_lock = threading.Lock()


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # We issue BEGIN ourselves (below), so the driver must not.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # A writer takes the write lock up front: in WAL mode a read transaction that later writes fails
        # with SQLITE_BUSY at once instead of waiting, so every writing transaction is BEGIN IMMEDIATE.
        immediate = connection.get_execution_options().get("orch_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def get_engine(url: str | None = None) -> Engine:
    """The engine of this process for `url` (engines are never shared across a fork)."""
    url = url or get_settings().resolved_database_url
    key = (os.getpid(), url)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            parsed = make_url(url)
            if parsed.get_backend_name() == "sqlite":  # sqlite:///, sqlite+pysqlite:///, …
                if parsed.database and parsed.database != ":memory:":
                    Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
                engine = create_engine(url, connect_args={"timeout": 30})
                _configure_sqlite(engine)
            else:
                # No pre-ping: it is a round trip per transaction (two per attempt). A connection that died with
                # the server fails its first statement instead; SQLAlchemy then drops every older pooled
                # connection, and with_store_retry, the tick and the heartbeat run again on fresh ones.
                engine = create_engine(url, pool_size=5, max_overflow=5)
            _engines[key] = engine
    return engine


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def ensure_schema(url: str | None = None) -> Engine:
    """Bring the store to the newest migration (once per process); safe when several processes race."""
    engine = get_engine(url)
    key = (os.getpid(), str(engine.url))
    if key in _schema_ready:
        return engine
    try:
        if current_revision(engine) != HEAD_REVISION:
            upgrade(engine)
    except OperationalError as exc:
        raise ServiceUnavailable(f"database {engine.url.render_as_string()} unreachable: {exc.orig}") from None
    _schema_ready.add(key)
    return engine


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
        return None if row is None else str(row[0])


def upgrade(engine: Engine, revision: str = "head") -> None:
    config = AlembicConfig()
    config.set_main_option("script_location", "orch:migrations")
    with engine.execution_options(orch_write=True).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


@contextmanager
def write_session(url: str | None = None) -> Iterator[Session]:
    """A transaction that writes: committed on success, rolled back on error."""
    engine = _writer(ensure_schema(url))
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


_writers: dict[int, tuple[Engine, Engine]] = {}


def _writer(engine: Engine) -> Engine:
    """`engine` with writes' execution options (built once per engine: a worker opens two write sessions per
    attempt)."""
    known = _writers.get(id(engine))
    if known is None or known[0] is not engine:
        known = _writers[id(engine)] = (engine, engine.execution_options(orch_write=True))
    return known[1]


@contextmanager
def read_session(url: str | None = None) -> Iterator[Session]:
    engine = ensure_schema(url)
    with Session(engine, expire_on_commit=False) as session:
        yield session


def take_dispatch_lock(session: Session) -> None:
    """Serialise dispatchers: on SQLite BEGIN IMMEDIATE already has; on PostgreSQL an advisory lock."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": DISPATCH_LOCK_KEY})


def dispose_engines() -> None:
    """Forget this process's engines (after a fork, or in tests)."""
    with _lock:
        for (pid, _url), engine in list(_engines.items()):
            if pid == os.getpid():
                engine.dispose()
        _engines.clear()
        _schema_ready.clear()
        _writers.clear()


def with_store_retry(
    operation: Callable[[], T], give_up_after: float, on_retry: Callable[[Exception, float], None] | None = None
) -> T:
    """Run `operation` (a whole transaction), retrying while the store is unreachable, up to `give_up_after`
    seconds (backoff 0.5 s doubling to 10 s). A worker's finished result must survive a database restart."""
    deadline = time.monotonic() + give_up_after
    delay = 0.5
    while True:
        try:
            return operation()
        except STORE_UNAVAILABLE as exc:
            if time.monotonic() + delay > deadline:
                raise
            if on_retry is not None:
                on_retry(exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def refresh_planner_statistics(session: Session) -> None:
    """On PostgreSQL, refresh the planner's statistics after a large plan is stored or dispatched: until
    autovacuum gets to the table, the planner believes what it saw before and picks nested loops or scans over
    thousands of rows."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("ANALYZE tasks, dependencies"))
