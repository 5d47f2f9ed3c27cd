"""One beat per PostgreSQL store, with real `celery -A orch beat` processes: a second one refuses to start with one
line naming the holder (exit 2); the lock goes with its holder's session, so a new beat starts once the first
stopped; a beat whose lock connection PostgreSQL ended takes the lock again, and stops (exit 2) if another beat
took it meanwhile."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from beat.single import BEAT_LOCK_KEY
from tests.e2e.conftest import Processes, orch_env
from tests.helpers import wait_for
from tests.integration.test_beat_guard import conninfo, holder, terminate

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

BEAT = [sys.executable, "-m", "celery", "-A", "orch", "beat"]


def beat_name(pid: int) -> str:
    return f"orch-beat on {socket.gethostname()[:28]}, pid {pid} ("


def held_by(url: str, pid: int) -> tuple[int, str] | None:
    """The lock's holding session if it is beat `pid`'s."""
    found = holder(url)
    return found if found is not None and found[1].startswith(beat_name(pid)) else None


def test_one_beat_per_postgres_store(postgres_url: str, redis_url: str, tmp_path: Path, processes: Processes) -> None:
    env = orch_env(tmp_path, ORCH_BROKER_URL=redis_url, ORCH_DATABASE_URL=postgres_url, ORCH_TICK_SECONDS="0.2")

    def start(name: str) -> subprocess.Popen[bytes]:
        return processes.start([*BEAT, "-s", str(tmp_path / f"{name}-schedule")], tmp_path, env, tmp_path / name)

    first = start("beat-1")
    held = wait_for(lambda: held_by(postgres_url, first.pid), 60, "the first beat to take the lock")

    second = subprocess.run(
        [*BEAT, "-s", str(tmp_path / "beat-2-schedule")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 2, second.stderr
    refusals = [line for line in second.stderr.splitlines() if line.startswith("orch:")]
    assert refusals == [
        f"orch: another beat ({held[1]}) already runs against {postgres_url}: one beat per store; stop it first"
    ], second.stderr
    assert "Traceback" not in second.stderr
    assert first.poll() is None, "the first beat goes on"

    # PostgreSQL ends the lock's session (a restart, a network loss): the beat takes the lock again.
    terminate(postgres_url, held[0])

    def held_again() -> tuple[int, str] | None:
        found = held_by(postgres_url, first.pid)
        return found if found is not None and found[0] != held[0] else None

    again = wait_for(held_again, 30, "the first beat to take the lock again on a new connection")
    assert again[1] == held[1] and first.poll() is None

    first.send_signal(signal.SIGTERM)
    wait_for(lambda: first.poll() is not None, 30, "the first beat to stop")
    assert first.returncode == 0
    wait_for(lambda: holder(postgres_url) is None, 10, "the stopped beat's session to end, freeing the lock")
    third = start("beat-3")
    taken = wait_for(lambda: held_by(postgres_url, third.pid), 60, "a new beat to take the lock")

    # While the third beat is frozen, its lock's session ends and another session takes the lock: once it runs
    # again, it finds the lock taken and stops rather than tick beside another beat.
    third.send_signal(signal.SIGSTOP)
    try:
        terminate(postgres_url, taken[0])
        with psycopg.connect(conninfo(postgres_url), autocommit=True, application_name="the other beat") as other:
            assert other.execute("SELECT pg_try_advisory_lock(%s)", (BEAT_LOCK_KEY,)).fetchone() == (True,)
            third.send_signal(signal.SIGCONT)
            wait_for(lambda: third.poll() is not None, 30, "the beat that lost its lock to stop")
            assert third.returncode == 2
            log = (tmp_path / "beat-3").read_text()
            assert f"orch: another beat (the other beat) took the beat lock of {postgres_url} while" in log
    finally:
        third.send_signal(signal.SIGCONT)
