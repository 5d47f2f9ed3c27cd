"""Which driver errors mean a store that cannot be used as it is (not retried), and how they name the store:
never with a password, in the userinfo or in the query string."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.exc import OperationalError

from orch.errors import ServiceUnavailable, StoreCorrupt, StoreFull, StoreReadOnly
from orch.store.db import ensure_schema, store_name, store_problem

PG_URL = "postgresql+psycopg://orch:UserInfoPassw0rd@db.example:5432/orch?password=S3cretPassw0rd"


def wrapped(error: Exception) -> OperationalError:
    return OperationalError("INSERT INTO events …", {}, error)


def test_postgres_disk_full_is_store_full_naming_the_server_without_its_passwords() -> None:
    problem = store_problem(wrapped(psycopg.errors.DiskFull("could not extend file: No space left on device")), PG_URL)
    assert isinstance(problem, StoreFull)
    assert "S3cretPassw0rd" not in str(problem) and "UserInfoPassw0rd" not in str(problem)
    assert str(problem).startswith("store postgresql+psycopg://orch:***@db.example:5432/orch?password=")
    assert str(problem).endswith(
        " is full: could not extend file: No space left on device; free space on the database server's disk"
    )


def test_a_postgres_standby_is_store_read_only() -> None:
    error = psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction")
    assert isinstance(store_problem(wrapped(error), PG_URL), StoreReadOnly)


@pytest.mark.parametrize(
    "error",
    [
        psycopg.OperationalError("connection failed: Connection refused"),
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
        psycopg.errors.TooManyConnections("sorry, too many clients already"),
    ],
)
def test_a_server_that_is_away_or_busy_is_not_a_store_problem(error: Exception) -> None:
    assert store_problem(wrapped(error), PG_URL) is None  # with_store_retry waits for it


def sqlite_error(tmp_path: Path, statement: str) -> sqlite3.Error:
    database = tmp_path / "s.db"
    with sqlite3.connect(database) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        conn.execute(statement)
    except sqlite3.Error as exc:
        return exc
    finally:
        conn.close()
    raise AssertionError(f"{statement} did not fail")


def test_sqlite_read_only_and_locked_are_told_apart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    read_only = store_problem(wrapped(sqlite_error(tmp_path, "INSERT INTO t VALUES (1)")), url)
    assert isinstance(read_only, StoreReadOnly)
    assert str(read_only).startswith(f"store at {tmp_path / 's.db'} is read-only: attempt to write a readonly")
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = 5  # SQLITE_BUSY: another writer; worth waiting for
    assert store_problem(wrapped(locked), url) is None


def test_a_missing_store_folder_that_cannot_be_created_names_the_store(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the store's folder should be")
    with pytest.raises(Exception) as raised:
        ensure_schema(f"sqlite:///{blocker / 'orch.db'}")
    assert str(raised.value).startswith(f"store at {blocker / 'orch.db'} cannot be prepared: ")


def test_an_unreachable_server_is_named_with_every_password_masked() -> None:
    with pytest.raises(ServiceUnavailable) as raised:
        ensure_schema("postgresql+psycopg://orch@127.0.0.1:1/orch?password=S3cretPassw0rd&connect_timeout=2")
    message = str(raised.value)
    assert "S3cretPassw0rd" not in message
    assert message.startswith("database postgresql+psycopg://orch@127.0.0.1:1/orch?")
    assert "password=[redacted] unreachable: " in message and "\n" not in message


def test_a_sqlite_store_is_named_by_its_file_and_a_corrupt_one_says_so(tmp_path: Path) -> None:
    assert store_name(f"sqlite:///{tmp_path / 'orch.db'}") == f"store at {tmp_path / 'orch.db'}"
    garbage = tmp_path / "orch.db"
    garbage.write_bytes(b"not sqlite at all " * 100)
    with pytest.raises(StoreCorrupt):
        ensure_schema(f"sqlite:///{garbage}")
