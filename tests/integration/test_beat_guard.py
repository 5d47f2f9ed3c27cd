"""One beat per PostgreSQL store (beat/single.py): the session-level advisory lock, driven in-process against the
machine's PostgreSQL. tests/e2e/test_beat_guard.py runs the same against real `celery -A orch beat` processes."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from beat.single import BEAT_LOCK_KEY, PostgresBeatLock, SqliteBeatLock, hold_single_beat_lock
from orch.errors import ConfigInvalid

pytestmark = pytest.mark.postgres


def conninfo(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def holder(url: str) -> tuple[int, str] | None:
    """The backend pid and application name of the session holding the beat lock, if any."""
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT l.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objid::bigint = %s AND l.database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())",
            (BEAT_LOCK_KEY,),
        ).fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def terminate(url: str, backend_pid: int) -> None:
    """End a session the way a PostgreSQL restart or a network loss would, and wait until it has ended."""
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        assert conn.execute("SELECT pg_terminate_backend(%s, 10000)", (backend_pid,)).fetchone() == (True,)


def terminate_holder(url: str) -> None:
    held = holder(url)
    assert held is not None, "nobody holds the beat lock"
    terminate(url, held[0])


def take(url: str) -> PostgresBeatLock:
    lock = hold_single_beat_lock(url)
    assert isinstance(lock, PostgresBeatLock)
    return lock


@pytest.fixture
def locks() -> Iterator[list[PostgresBeatLock]]:
    held: list[PostgresBeatLock] = []
    try:
        yield held
    finally:
        for lock in held:
            lock.release()


def test_a_second_beat_is_refused_naming_the_holder_but_not_the_password(
    postgres_url: str, locks: list[PostgresBeatLock]
) -> None:
    url = postgres_url.replace("postgres@", "postgres:s3cret-pw@", 1)  # trust auth: the password is not checked
    first = take(url)
    locks.append(first)
    assert first.keep()
    assert first.application_name.startswith(f"orch-beat on {socket.gethostname()[:28]}, pid {os.getpid()} (")
    held = holder(postgres_url)
    assert held is not None and held[1] == first.application_name

    with pytest.raises(ConfigInvalid) as refused:
        hold_single_beat_lock(url)
    message = str(refused.value)
    shown = postgres_url.replace("postgres@", "postgres:***@", 1)
    assert (
        message
        == f"another beat ({first.application_name}) already runs against {shown}: one beat per store; stop it first"
    )
    assert refused.value.exit_code == 2
    assert "s3cret" not in message

    first.release()  # the session's end frees the lock
    assert holder(postgres_url) is None
    locks.append(take(url))


def test_the_lock_is_taken_again_after_its_connection_dropped(postgres_url: str, locks: list[PostgresBeatLock]) -> None:
    lock = take(postgres_url)
    locks.append(lock)
    old = holder(postgres_url)
    assert old is not None and old[1] == lock.application_name
    terminate(postgres_url, old[0])
    assert holder(postgres_url) is None

    assert lock.keep(), "a new connection takes the lock again"
    new = holder(postgres_url)
    assert new is not None and new[0] != old[0] and new[1] == lock.application_name
    assert lock.keep()  # and keeps it, on that connection
    assert holder(postgres_url) == new


def test_a_beat_whose_lock_another_took_meanwhile_stops(postgres_url: str, locks: list[PostgresBeatLock]) -> None:
    first = take(postgres_url)
    locks.append(first)
    terminate_holder(postgres_url)
    second = take(postgres_url)  # another beat starts while the first one's connection is down
    locks.append(second)

    with pytest.raises(ConfigInvalid) as stopped:
        first.keep()
    assert str(stopped.value).startswith(f"another beat ({second.application_name}) took the beat lock of ")
    assert stopped.value.exit_code == 2
    held = holder(postgres_url)
    assert held is not None and held[1] == second.application_name


def test_a_beat_ends_its_own_left_over_session(postgres_url: str, locks: list[PostgresBeatLock]) -> None:
    """After a network loss the beat may see its connection dead while the server still holds its session (and
    the lock): the beat recognises its own application name, ends that session and takes the lock again."""
    lock = take(postgres_url)
    locks.append(lock)
    terminate_holder(postgres_url)
    with psycopg.connect(conninfo(postgres_url), autocommit=True, application_name=lock.application_name) as stale:
        assert stale.execute("SELECT pg_try_advisory_lock(%s)", (BEAT_LOCK_KEY,)).fetchone() == (True,)
        stale_pid = stale.info.backend_pid

        assert lock.keep()
        held = holder(postgres_url)
        assert held is not None and held[0] != stale_pid and held[1] == lock.application_name
        with pytest.raises(psycopg.OperationalError):
            stale.execute("SELECT 1")


def test_a_beat_that_cannot_reach_the_store_waits_for_it(postgres_url: str, locks: list[PostgresBeatLock]) -> None:
    unreachable = take("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")
    locks.append(unreachable)
    assert not unreachable.keep(), "no lock, no tick; and no refusal either"


def test_a_sqlite_url_with_a_driver_name_is_guarded_too(tmp_path: Path) -> None:
    url = f"sqlite+pysqlite:///{tmp_path / 'orch.db'}"
    lock = hold_single_beat_lock(url)
    assert isinstance(lock, SqliteBeatLock)
    try:
        with pytest.raises(ConfigInvalid, match="another beat"):
            hold_single_beat_lock(url)
    finally:
        lock.release()
