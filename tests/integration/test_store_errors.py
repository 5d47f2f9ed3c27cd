"""A store that answers but cannot be used — its disk full, read-only, a corrupted file — raises a StoreUnusable
naming the store and the cause, at once (retrying would not mend it); the store's files are private to their
owner whatever the umask; the plans of an `orch run` that died are cancelled by the next command on its host."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orch.errors import StoreCorrupt, StoreFull, StoreReadOnly
from orch.records import ProcessIdentity, RunnerPlan
from orch.services.local_run import cancel_dead_runs
from orch.services.processes import process_alive, process_start_ticks, this_process
from orch.settings import get_settings
from orch.states import AttemptStatus, PlanStatus, TaskStatus
from orch.store import attempts, operator, plans, runners
from orch.store.db import dispose_engines, ensure_schema, read_session, with_store_retry, write_session
from orch.store.models import AttemptRow
from tests.helpers import DIAMOND, make_plan, registry
from tests.rootfs import fill, remount, small_tmpfs

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def submit(name: str = "p") -> str:
    with write_session() as session:
        return plans.submit_plan(session, make_plan(DIAMOND, name=name), NOW)


def use_store(monkeypatch: pytest.MonkeyPatch, database: Path) -> str:
    url = f"sqlite:///{database}"
    monkeypatch.setenv("ORCH_DATABASE_URL", url)
    get_settings.cache_clear()
    dispose_engines()
    return url


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    with small_tmpfs(tmp_path / "fs", size="8m") as mount_point:
        try:
            yield mount_point
        finally:
            dispose_engines()  # no open file may keep the unmount waiting


def test_a_full_disk_is_store_full_at_once_not_retried_as_unreachable(
    tmpfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmpfs / "orch.db"
    use_store(monkeypatch, database)
    plan_id = submit()
    filler = fill(tmpfs)
    retries: list[float] = []
    started = time.monotonic()
    with pytest.raises(StoreFull) as raised:
        with_store_retry(lambda: submit("more"), 30, lambda _exc, delay: retries.append(delay))
    assert time.monotonic() - started < 5 and retries == []
    assert str(raised.value) == f"store at {database} is full: database or disk is full; free space on its disk"
    with read_session() as session:  # reading a full store still works
        assert [p.id for p in plans.list_plans(session)] == [plan_id]
    filler.unlink()
    assert submit("more")


def test_a_store_on_a_read_only_file_system_is_store_read_only(tmpfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    database = tmpfs / "orch.db"
    use_store(monkeypatch, database)
    submit()
    dispose_engines()  # closes the store: a file system with a file open for writing cannot be remounted
    remount(tmpfs, "ro")
    try:
        with pytest.raises(StoreReadOnly) as raised, write_session() as session:
            plans.submit_plan(session, make_plan(DIAMOND, name="q"), NOW)
        assert str(raised.value).startswith(f"store at {database} ")
        assert "read-only file system" in str(raised.value)
    finally:
        dispose_engines()
        remount(tmpfs, "rw")


def test_a_read_only_database_is_store_read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    database = tmp_path / "orch.db"
    use_store(monkeypatch, database)
    submit()
    read_only = f"sqlite:///file:{database}?mode=ro&uri=true"
    with pytest.raises(StoreReadOnly) as raised, write_session(read_only) as session:
        plans.submit_plan(session, make_plan(DIAMOND, name="q"), NOW)
    assert "is read-only: attempt to write a readonly database" in str(raised.value)
    assert not (Path.cwd() / "file:").exists()  # a URI is SQLite's to read, not a folder to create


def test_a_file_that_is_not_a_database_is_store_corrupt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    database = tmp_path / "orch.db"
    database.write_bytes(b"this is not a database, but a text file long enough to have a header\n" * 20)
    use_store(monkeypatch, database)
    with pytest.raises(StoreCorrupt) as raised, read_session() as session:
        plans.list_plans(session)
    assert str(raised.value) == (
        f"store at {database} is not a valid orch store: file is not a database; move it aside (with its -wal and "
        f"-shm files)"
    )


def test_a_partly_damaged_store_is_refused_rather_than_read_in_part(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "orch.db"
    use_store(monkeypatch, database)
    for name in ("one", "two", "three"):
        submit(name)
    dispose_engines()  # the last connection's close checkpoints the WAL into the file
    with sqlite3.connect(database) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'ix_plans_name'").fetchone()[0]
    with database.open("r+b") as file:  # an index page that claims a cell it does not have
        file.seek((root - 1) * page_size)
        file.write(b"\x0a\x00\x00\x00\x01\x0f\xf0\x00" + b"\x00" * (page_size - 8))
    with pytest.raises(StoreCorrupt) as raised, read_session() as session:
        plans.find_plan(session, "two")
    assert f"store at {database} is not a valid orch store: malformed (" in str(raised.value)
    assert str(raised.value).endswith("; move it aside (with its -wal and -shm files)")


def test_the_store_and_orch_home_are_private_whatever_the_umask(tmp_path: Path) -> None:
    home = get_settings().home
    home.mkdir(mode=0o777)
    home.chmod(0o777)
    database = home / "orch.db"
    database.touch()
    database.chmod(0o666)  # as a release before this one left it under umask 022
    previous = os.umask(0)
    try:
        submit()
        (home / "fresh").mkdir()  # what the umask alone gives here
    finally:
        os.umask(previous)
    assert (home / "fresh").stat().st_mode & 0o777 == 0o777
    assert home.stat().st_mode & 0o777 == 0o700
    for name in ("orch.db", "orch.db-wal", "orch.db-shm"):
        assert (home / name).stat().st_mode & 0o777 == 0o600, name


def test_a_new_store_elsewhere_is_created_private_and_its_folder_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    use_store(monkeypatch, shared / "orch.db")
    previous = os.umask(0)
    try:
        submit()
    finally:
        os.umask(previous)
    assert shared.stat().st_mode & 0o777 == 0o755  # not ORCH_HOME: not ours to tighten
    assert (shared / "orch.db").stat().st_mode & 0o777 == 0o600


# --- the `orch run` behind a plan ----------------------------------------------------------------------


def gone_process() -> ProcessIdentity:
    """The identity of a process that ran on this host and has exited since."""
    child = subprocess.Popen(["sleep", "30"])
    ticks = process_start_ticks(child.pid)
    child.kill()
    child.wait()
    assert ticks is not None
    return ProcessIdentity(os.uname().nodename, child.pid, ticks)


def test_a_runner_is_alive_while_its_process_runs_and_not_once_it_has_exited() -> None:
    me = this_process()
    assert me is not None and process_alive(me) is True
    assert process_alive(gone_process()) is False
    assert process_alive(ProcessIdentity(me.host, me.pid, me.start_ticks + 1)) is False  # the pid, reused
    assert process_alive(ProcessIdentity("another-host", me.pid, me.start_ticks)) is None  # cannot tell


def test_runner_plans_are_the_unfinished_ones_of_this_host(store_url: str) -> None:
    me = this_process()
    assert me is not None
    running, finished, elsewhere, submitted = (submit(name) for name in ("running", "finished", "elsewhere", "sub"))
    with write_session() as session:
        runners.record_runner(session, running, me)
        runners.record_runner(session, finished, me)
        runners.record_runner(session, elsewhere, ProcessIdentity("another-host", me.pid, me.start_ticks))
        operator.cancel_plan(session, finished, NOW, "done")
    with read_session() as session:
        assert runners.unfinished_runner_plans(session, me.host) == [RunnerPlan(running, me)]
        assert plans.get_plan(session, submitted).runner_pid is None  # type: ignore[union-attr]


def test_the_plans_of_a_dead_orch_run_are_cancelled_and_a_live_ones_named(
    store_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from orch.dispatch.reconcile import reconcile_plans

    dead, alive = gone_process(), this_process()
    assert alive is not None
    orphan, live = submit("orphan"), submit("live")
    with write_session() as session:
        runners.record_runner(session, orphan, dead)
        runners.record_runner(session, live, alive)
        (first,) = [d for d in reconcile_plans(session, [orphan], registry(), NOW) if d.plan_id == orphan]
    with write_session() as session:
        assert attempts.claim(session, first.task_pk, first.attempt, "w", 1, 60.0, now=NOW) is not None
    cancel_dead_runs(warn_live=True)
    reason = f"its orch run (pid {dead.pid} on {dead.host}) died"
    with read_session() as session:
        assert plans.get_plan(session, orphan).status is PlanStatus.CANCELLED  # type: ignore[union-attr]
        tasks = plans.plan_tasks(session, orphan)
        assert {(t.status, t.error) for t in tasks} == {(TaskStatus.CANCELLED, reason)}
        (attempt,) = session.query(AttemptRow).filter(AttemptRow.task_pk == first.task_pk).all()
        assert attempt.status is AttemptStatus.CANCELLED and attempt.finished_at is not None
        assert plans.get_plan(session, live).status is PlanStatus.RUNNING  # type: ignore[union-attr]
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"orch: plan {orphan} cancelled: {reason}",
        f"orch: note: orch run still runs {live} ({alive.describe()}) in this store; their tasks count against the "
        f"same agent types' caps",
    ]
    cancel_dead_runs()  # nothing left to do: no write, no line
    assert capsys.readouterr().err == ""
    assert ensure_schema()  # the store is whole


def test_the_embedded_redis_folder_and_log_are_private_whatever_the_umask(tmp_path: Path) -> None:
    from orch.services.embedded import EmbeddedRedis

    previous = os.umask(0)
    try:
        server = EmbeddedRedis(log_path=tmp_path / "logs" / "redis.log")
        server.start()
    finally:
        os.umask(previous)
    try:
        assert server.folder.name.startswith(f"orch-redis-{os.getpid()}-")  # its owner, for the sweep
        assert server.folder.stat().st_mode & 0o777 == 0o700
        assert (tmp_path / "logs").stat().st_mode & 0o777 == 0o700
        assert server.log_path.stat().st_mode & 0o777 == 0o600
    finally:
        server.stop()
    assert not server.folder.exists()


def test_the_next_start_sweeps_the_redis_folders_of_owners_that_are_gone(tmp_path: Path) -> None:
    from orch.services.embedded import sweep_orphaned_folders

    me, gone = this_process(), gone_process()
    assert me is not None
    mine = tmp_path / f"orch-redis-{me.pid}-{me.start_ticks}-abc"
    orphan = tmp_path / f"orch-redis-{gone.pid}-{gone.start_ticks}-def"
    unnamed = tmp_path / "orch-redis-xyz"  # an older release's: its owner is unknown, so it stays
    for folder in (mine, orphan, unnamed):
        folder.mkdir()
    assert sweep_orphaned_folders(tmp_path) == [orphan]
    assert mine.exists() and unnamed.exists() and not orphan.exists()
