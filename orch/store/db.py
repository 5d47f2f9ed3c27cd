"""Engines and sessions: one engine per process and URL, SQLite tuned for several processes, Alembic at start."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Engine, create_engine, event, inspect, make_url, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from orch.errors import (
    ConfigInvalid,
    ServiceUnavailable,
    StoreCorrupt,
    StoreFull,
    StoreMissing,
    StoreReadOnly,
    StoreUnusable,
)
from orch.hardening import private_dir, private_file
from orch.redaction import safe_url
from orch.settings import get_settings
from orch.store.creation import may_create_store

_MIGRATION_LOCK_KEY = 0x6F726368  # "orch"
DISPATCH_LOCK_KEY = 0x6F726369

# What an unreachable (or restarting) database raises: worth retrying, not a bug. A store that answers but cannot
# be used as it is (full, read-only, corrupt: `store_problem`) raises StoreUnusable instead, which is not in here.
STORE_UNAVAILABLE: tuple[type[Exception], ...] = (OperationalError, InterfaceError, ServiceUnavailable)

# SQLite primary result codes (an extended code carries its primary one in the low byte).
_SQLITE_READONLY = 8
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26
# PostgreSQL SQLSTATEs.
_PG_DISK_FULL = "53100"
_PG_READ_ONLY_TRANSACTION = "25006"

T = TypeVar("T")


def store_name(url: str) -> str:
    """How messages name a store: a SQLite store by its file, a server's by its URL with every password masked."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        return f"store at {parsed.database}"
    return f"store {safe_url(url)}"


def session_store_name(session: Session) -> str:
    """`store_name` of the store a session reads: what "not found" messages name."""
    bind = session.get_bind()
    return store_name(engine_url(bind if isinstance(bind, Engine) else bind.engine))


def no_store(url: str, detail: str = "") -> StoreMissing:
    """A store that is not where the settings point, in one line: the place (no password), where the setting
    comes from, and what to do."""
    settings = get_settings()
    origin = ""
    if url == settings.resolved_database_url:
        if settings.database_url:
            origin = " (ORCH_DATABASE_URL)"
        elif settings.home.is_absolute():
            origin = f" (ORCH_HOME={settings.home})"
        else:
            origin = f" (ORCH_HOME={settings.home}, relative to the current folder)"
    return StoreMissing(
        f"no store at {safe_url(url)}{detail}{origin}; point ORCH_HOME or ORCH_DATABASE_URL at your store, "
        f"or create one with `orch db upgrade`"
    )


def check_sqlite_place(url: str, create: bool) -> None:
    """A SQLite store's place, before anything is made there: its folder must exist (a typo'd path is named, not
    made; ORCH_HOME, orch's own folder, only when `create`), and its file too unless `create`. Raises ConfigInvalid
    (the folder) or StoreMissing (the file); any other URL passes."""
    parsed = make_url(url)
    database = _sqlite_file(parsed) if parsed.get_backend_name() == "sqlite" else None
    if database is None:
        return
    folder = database.parent
    if not folder.is_dir():
        if create and _is_home(folder):
            return
        if not create and _is_home(folder):
            raise no_store(url)
        if folder.exists():
            raise StoreUnusable(f"{store_name(url)} cannot be prepared: {folder} is not a folder")
        raise ConfigInvalid(
            f"{store_name(url)}: folder {folder} does not exist (orch creates a SQLite store's file, never its folders)"
        )
    if not create and not database.exists():
        raise no_store(url)


def _is_home(folder: Path) -> bool:
    return folder.resolve() == get_settings().home.resolve()


def store_problem(exc: BaseException, url: str) -> StoreUnusable | None:
    """The StoreUnusable that `exc` (a driver error, or an OSError preparing a SQLite file) means, naming the store
    and the cause; None for what is worth retrying (a lost connection, a lock) or not the store's state."""
    cause = exc.orig if isinstance(exc, DBAPIError) else exc
    name = store_name(url)
    if isinstance(cause, sqlite3.Error):
        code = getattr(cause, "sqlite_errorcode", None)
        return None if code is None else _sqlite_problem(code & 0xFF, str(cause), name, url)
    sqlstate = getattr(cause, "sqlstate", None)
    if sqlstate == _PG_DISK_FULL:
        return StoreFull(f"{name} is full: {_first_line(cause)}; free space on the database server's disk")
    if sqlstate == _PG_READ_ONLY_TRANSACTION:
        return StoreReadOnly(f"{name} is read-only: {_first_line(cause)}; point ORCH_DATABASE_URL at the primary")
    if isinstance(cause, OSError):
        return _os_problem(cause, name)
    return None


def _sqlite_problem(code: int, why: str, name: str, url: str) -> StoreUnusable | None:
    if code == _SQLITE_FULL:
        return StoreFull(f"{name} is full: {why}; free space on its disk")
    if code == _SQLITE_READONLY:
        return StoreReadOnly(f"{name} is read-only: {why}; make it and its folder writable")
    if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
        return StoreCorrupt(f"{name} is not a valid orch store: {why}; move it aside (with its -wal and -shm files)")
    if code == _SQLITE_CANTOPEN:
        folder = Path(make_url(url).database or ".").parent
        if _read_only_file_system(folder):
            return StoreReadOnly(f"{name} cannot be opened: {why} (its folder {folder} is on a read-only file system)")
        return StoreUnusable(f"{name} cannot be opened: {why} (check that {folder} exists and is writable)")
    return None


def _os_problem(error: OSError, name: str) -> StoreUnusable:
    why = error.strerror or str(error)
    where = f" ({error.filename})" if error.filename else ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(f"{name} is full: {why}{where}; free space on its disk")
    if error.errno == errno.EROFS:
        return StoreReadOnly(f"{name} is read-only: {why}{where}")
    return StoreUnusable(f"{name} cannot be prepared: {why}{where}")


def _read_only_file_system(folder: Path) -> bool:
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _first_line(error: BaseException | None) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


_engines: dict[tuple[int, str], Engine] = {}
_schema_ready: set[tuple[int, str]] = set()
_lock = threading.Lock()


def _configure_sqlite(engine: Engine, database: Path | None) -> None:
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
        if database is not None:
            _private_store_files(database)  # -wal and -shm exist now; a store made before 0600 is tightened

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
                database = _sqlite_file(parsed)
                if database is not None:
                    _prepare_sqlite_file(database, url)
                engine = create_engine(url, connect_args={"timeout": 30})
                _configure_sqlite(engine, database)
            else:
                # No pre-ping: it is a round trip per transaction (two per attempt). A connection that died with
                # the server fails its first statement instead; SQLAlchemy then drops every older pooled
                # connection, and with_store_retry, the tick and the heartbeat run again on fresh ones.
                engine = create_engine(url, pool_size=5, max_overflow=5)
            _engines[key] = engine
    return engine


def _sqlite_file(parsed: URL) -> Path | None:
    """The file of a SQLite URL; None for an in-memory database or a `file:` URI (whose options SQLite reads)."""
    if not parsed.database or parsed.database == ":memory:" or parsed.query.get("uri"):
        return None
    return Path(parsed.database)


def _prepare_sqlite_file(database: Path, url: str) -> None:
    """The store's folder and file, private to this user whatever the umask: ORCH_HOME 0700 (an existing one
    tightened), the file 0600 before SQLite makes its -wal and -shm alike. Another folder must exist; nothing is
    created where the store may not be (`existing_store_only`)."""
    check_sqlite_place(url, may_create_store())
    try:
        folder = database.parent
        if _is_home(folder):
            private_dir(folder)
        if not database.exists():
            with contextlib.suppress(FileExistsError):
                os.close(os.open(database, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as exc:
        raise _os_problem(exc, store_name(url)) from None
    _private_store_files(database)


def _private_store_files(database: Path) -> None:
    for path in (database, database.with_name(database.name + "-wal"), database.with_name(database.name + "-shm")):
        private_file(path)


def engine_url(engine: Engine) -> str:
    """The engine's URL in full (passwords included): for `store_name` and `safe_url`, never to be shown as is."""
    return engine.url.render_as_string(hide_password=False)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def ensure_schema(url: str | None = None) -> Engine:
    """Bring the store to the newest migration (once per process); safe when several processes race. A SQLite
    store is checked first (`PRAGMA quick_check`): a damaged file is refused with StoreCorrupt, where reads would
    otherwise silently miss rows."""
    url = url or get_settings().resolved_database_url
    engine = get_engine(url)
    key = (os.getpid(), str(engine.url))
    if key in _schema_ready:
        return engine
    try:
        if is_sqlite(engine):
            _check_sqlite_integrity(engine, url)
        revision = current_revision(engine)
        if revision is None and not may_create_store():
            raise no_store(url, ": it has no orch tables")
        if revision != head_revision():
            upgrade(engine)
    except DBAPIError as exc:
        problem = store_problem(exc, url)
        if problem is not None:
            raise problem from None
        if not isinstance(exc, OperationalError):
            raise
        raise ServiceUnavailable(f"database {safe_url(url)} unreachable: {_first_line(exc.orig)}") from None
    _schema_ready.add(key)
    return engine


def _check_sqlite_integrity(engine: Engine, url: str) -> None:
    # About 0.1 s per 100,000 tasks, once per process: the price of never showing a partial store as whole.
    with engine.connect() as conn:
        found = [str(row[0]) for row in conn.exec_driver_sql("PRAGMA quick_check(1)")]
    if found != ["ok"]:
        why = " ".join(line for line in "\n".join(found).splitlines() if not line.startswith("***"))
        raise StoreCorrupt(
            f"{store_name(url)} is not a valid orch store: malformed ({why[:300]}); move it aside (with its -wal and "
            f"-shm files)"
        )


def _alembic_config() -> AlembicConfig:
    config = AlembicConfig()
    config.set_main_option("script_location", "orch.store:migrations")
    return config


@lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest migration in orch/store/migrations, as Alembic finds it: the revision this orch needs. Read on
    first use and kept (it loads every migration script, some milliseconds), so importing this module stays cheap."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None, "orch/store/migrations has no migration"
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
        return None if row is None else str(row[0])


def upgrade(engine: Engine, revision: str = "head") -> None:
    config = _alembic_config()
    with engine.execution_options(orch_write=True).begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


@contextmanager
def write_session(url: str | None = None) -> Iterator[Session]:
    """A transaction that writes: committed on success, rolled back on error."""
    engine = _writer(ensure_schema(url))
    try:
        with Session(engine, expire_on_commit=False) as session, session.begin():
            yield session
    except DBAPIError as exc:
        _raise_store_problem(exc, engine)
        raise


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
    try:
        with Session(engine, expire_on_commit=False) as session:
            yield session
    except DBAPIError as exc:
        _raise_store_problem(exc, engine)
        raise


def _raise_store_problem(exc: DBAPIError, engine: Engine) -> None:
    problem = store_problem(exc, engine_url(engine))
    if problem is not None:
        raise problem from None


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
    seconds (backoff 0.5 s doubling to 10 s). A worker's finished result must survive a database restart. A store
    that answers but cannot be used (full, read-only, corrupt) raises StoreUnusable at once: waiting will not
    mend it."""
    deadline = time.monotonic() + give_up_after
    delay = 0.5
    while True:
        try:
            return operation()
        except STORE_UNAVAILABLE as exc:
            problem = store_problem(exc, get_settings().resolved_database_url)
            if problem is not None:  # an operation on an engine of its own, not through the sessions above
                raise problem from None
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


_PG_NOW = text("SELECT clock_timestamp()")


def db_now(session: Session) -> datetime:
    """The database's clock: leases are judged by it, never by a worker's own clock. A SQLite store lives on
    this host, and its clock ('now') is this host's: it is read here without a statement."""
    if session.get_bind().dialect.name == "postgresql":
        value = session.scalar(_PG_NOW)
        assert isinstance(value, datetime)
        return value.astimezone(UTC)
    return datetime.now(UTC)
