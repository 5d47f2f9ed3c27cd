"""`orch check` as an operator runs it: all good with a beat ticking the store and a worker reading the queue that
holds queued tasks; a queue nobody reads named, exit 1; no beat, or no worker at all, a failure naming when a beat
last ticked (issue 14, point 2); an unreachable broker or store reported at once, exit 1."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text, update

from orch.dispatch.reconcile import reconcile_plans
from orch.services.check import check_store
from orch.services.processes import stop_process
from orch.settings import get_settings
from orch.store import plans, services
from orch.store.db import db_now, ensure_schema, write_session
from orch.store.models import ServiceRow
from tests.e2e.conftest import Processes, orch_env, run_orch
from tests.helpers import free_port, make_plan, registry, wait_for

BEAT = [sys.executable, "-m", "celery", "-A", "orch", "beat"]
WORKER = [
    sys.executable,
    "-m",
    "celery",
    "-A",
    "orch",
    "worker",
    "--without-gossip",
    "--without-mingle",
    "-c",
    "1",
    "-l",
    "INFO",
]


def queue_in_store(tasks: list[dict[str, Any]], name: str) -> str:
    """A plan whose ready tasks are `queued` in the store; no message is sent, so they stay queued."""
    with write_session() as session:
        plan_id = plans.submit_plan(session, make_plan(tasks, name=name), db_now(session))
        dispatches = reconcile_plans(session, [plan_id], registry(), db_now(session))
    assert len(dispatches) == len(tasks)
    return plan_id


def lines_of(output: str) -> dict[str, str]:
    """`orch check`'s lines by check name: {'store': 'ok', 'queue agent.x': 'FAIL', ...}."""
    found = {}
    for line in output.splitlines():
        verdict, name = line[:4].strip(), line[6:].split("  ")[0].strip()
        found[name] = verdict
    return found


def test_all_good_with_a_worker_then_a_queue_nobody_reads_is_named(
    redis_url: str, tmp_path: Path, processes: Processes
) -> None:
    env = orch_env(tmp_path, ORCH_BROKER_URL=redis_url)
    ensure_schema()
    queue_in_store([{"id": "a", "title": "tidy up", "agent": "general-purpose", "command": "true"}], "served")
    log = tmp_path / "worker.log"
    processes.start([*WORKER, "-Q", "agent.general-purpose", "-n", "checked@%h"], tmp_path, env, log)
    processes.start([*BEAT, "-s", str(tmp_path / "beat-schedule")], tmp_path, env, tmp_path / "beat.log")
    wait_for(lambda: "checked@" in log.read_text() and "ready." in log.read_text(), 60, "the worker to be ready")
    wait_for(lambda: beat_ticked(), 60, "the beat to tick")

    good = run_orch(["check"], tmp_path, env, timeout=60)
    assert good.returncode == 0, good.stdout + good.stderr
    assert lines_of(good.stdout) == {
        "store": "ok",
        "migrations": "ok",
        "beat": "ok",
        "isolation": "ok",
        "git": "ok",
        "broker": "ok",
        "queue agent.general-purpose": "ok",
    }, good.stdout
    assert "1 queued; read by checked@" in good.stdout

    queue_in_store([{"id": "b", "title": "write the guide", "agent": "documentation-writer", "command": "true"}], "x")
    bad = run_orch(["check"], tmp_path, env, timeout=60)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    verdicts = lines_of(bad.stdout)
    assert verdicts["queue agent.documentation-writer"] == "FAIL", bad.stdout
    assert verdicts["queue agent.general-purpose"] == "ok", bad.stdout
    assert "agent.documentation-writer  1 queued; no worker reads this queue" in bad.stdout


def beat_ticked() -> bool:
    with write_session() as session:
        return bool(services.beats(session))


def test_no_beat_and_no_worker_are_failures_naming_when_a_beat_last_ticked(
    redis_url: str, tmp_path: Path, processes: Processes
) -> None:
    """Issue 14, point 2: with no beat and no worker at all, `orch check` said all was well (exit 0)."""
    env = orch_env(tmp_path, ORCH_BROKER_URL=redis_url)
    ensure_schema()
    nothing = run_orch(["check", "--timeout", "2"], tmp_path, env, timeout=60)
    assert nothing.returncode == 1, nothing.stdout + nothing.stderr
    verdicts = lines_of(nothing.stdout)
    assert verdicts["beat"] == "FAIL" and verdicts["consumers"] == "FAIL", nothing.stdout
    assert "no beat has ever ticked this store; start one: see docs/troubleshooting.md" in nothing.stdout
    assert "no worker answered: nothing reads any queue" in nothing.stdout

    # A beat that ticked, then stopped: check names when it last ticked.
    beat = processes.start([*BEAT, "-s", str(tmp_path / "beat-schedule")], tmp_path, env, tmp_path / "beat.log")
    wait_for(beat_ticked, 60, "the beat to tick")
    served = run_orch(["check", "--timeout", "2"], tmp_path, env, timeout=60)
    line = next(line for line in served.stdout.splitlines() if line[6:].startswith("beat"))
    assert line.startswith("ok") and f"beat pid {beat.pid} on {socket.gethostname()} ticked" in line, served.stdout
    stop_process(beat, signal.SIGTERM, 30)
    with write_session() as session:  # as if it had stopped ten minutes ago
        session.execute(update(ServiceRow).values(last_tick_at=db_now(session) - timedelta(minutes=10)))
    stopped = run_orch(["check", "--timeout", "2"], tmp_path, env, timeout=60)
    assert stopped.returncode == 1
    line = next(line for line in stopped.stdout.splitlines() if line[6:].startswith("beat"))
    assert line.startswith("FAIL") and "no beat has ticked this store since " in line and "(10m ago)" in line, line


def test_an_unreachable_broker_is_reported_quickly(tmp_path: Path) -> None:
    ensure_schema()
    env = orch_env(tmp_path, ORCH_BROKER_URL=f"redis://:broker-pass-8c1d@127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    result = run_orch(["check", "--timeout", "2"], tmp_path, env, timeout=60)
    assert time.monotonic() - started < 20
    assert result.returncode == 1, result.stdout + result.stderr
    assert lines_of(result.stdout) == {
        "store": "ok", "migrations": "ok", "beat": "FAIL", "isolation": "ok", "git": "ok", "broker": "FAIL",
        "consumers": "FAIL"
    }  # fmt: skip
    assert "unreachable" in result.stdout and "not checked: the broker is unreachable" in result.stdout
    assert "broker-pass-8c1d" not in result.stdout + result.stderr


def test_an_unreachable_store_and_broker_are_reported_quickly(tmp_path: Path) -> None:
    env = orch_env(
        tmp_path,
        ORCH_DATABASE_URL=f"postgresql://orch:store-pass-4e2a@127.0.0.1:{free_port()}/orch",
        ORCH_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0",
    )
    started = time.monotonic()
    result = run_orch(["check", "--timeout", "2"], tmp_path, env, timeout=60)
    assert time.monotonic() - started < 20
    assert result.returncode == 1, result.stdout + result.stderr
    verdicts = lines_of(result.stdout)
    assert verdicts == {
        "store": "FAIL", "migrations": "FAIL", "beat": "FAIL", "isolation": "ok", "git": "ok", "broker": "FAIL",
        "consumers": "FAIL"
    }, result.stdout  # fmt: skip
    assert "postgresql+psycopg://orch:***@127.0.0.1" in result.stdout
    assert "store-pass-4e2a" not in result.stdout + result.stderr


def test_a_store_behind_on_migrations_or_missing_is_reported(tmp_path: Path) -> None:
    url = get_settings().resolved_database_url
    (missing, _), queued = check_store(url, 2.0)
    assert not missing.ok and "/.orch does not exist" in missing.detail and queued is None  # ORCH_HOME: not yet
    with ensure_schema().begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0001'"))
    reachable, migrations = check_store(url, 2.0)[0]
    assert reachable.ok
    assert not migrations.ok and migrations.detail.startswith("revision 0001; this orch needs 0")


def test_an_sqlite_store_named_with_its_driver_is_checked_not_created(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    (missing, migrations), queued = check_store(f"sqlite+pysqlite:///{path}", 2.0)
    assert not missing.ok and "no such database file" in missing.detail and queued is None
    assert not migrations.ok
    assert not path.exists()


def test_the_isolation_in_force_is_reported_and_no_sandbox_is_a_warning(tmp_path: Path) -> None:
    ensure_schema()
    env = orch_env(tmp_path, ORCH_BROKER_URL=f"redis://127.0.0.1:{free_port()}/0")
    sandboxed = run_orch(["check", "--timeout", "1"], tmp_path, env, timeout=60)
    line = next(line for line in sandboxed.stdout.splitlines() if line[6:].startswith("isolation"))
    assert line.startswith("ok") and "bubblewrap sandbox" in line, sandboxed.stdout
    assert ("user orch-agent" in line) is (os.geteuid() == 0)
    assert "network: host for" in line and "none for shell and python tasks" in line

    opted_out = run_orch(["check", "--timeout", "1"], tmp_path, {**env, "ORCH_SANDBOX": "none"}, timeout=60)
    assert lines_of(opted_out.stdout)["isolation"] == "WARN", opted_out.stdout
    assert "ORCH_SANDBOX=none: agents run without a sandbox" in opted_out.stdout

    if os.geteuid() == 0:  # a root worker whose agents would have no user to run as
        no_user = {**env, "ORCH_AGENT_USER": "no-such-agent-user"}
        refused = run_orch(["check", "--timeout", "1"], tmp_path, no_user, timeout=60)
        assert lines_of(refused.stdout)["isolation"] == "FAIL", refused.stdout
        assert "ORCH_AGENT_USER=no-such-agent-user, and no such user exists" in refused.stdout
