"""The oracle itself: on a consistent history it finds nothing, and each kind of violation planted in a store, a
ledger or /proc is reported. Without this, a scenario passing could mean the oracle looks at nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from orch.store import plans
from orch.store.db import ensure_schema, write_session
from tests.faults.harness import FaultRun, Store, examine
from tests.helpers import make_plan

pytestmark = [pytest.mark.faults]

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def fill_required(table: sa.Table, values: dict[str, Any]) -> dict[str, Any]:
    """`values`, plus a neutral value for every NOT NULL column without a default (the schema grows)."""
    row = dict(values)
    for column in table.columns:
        if column.name in row or column.nullable or column.server_default is not None or column.primary_key:
            continue
        python_type = column.type.python_type
        row[column.name] = NOW if python_type is datetime else python_type()
    return row


class History:
    """Writes a plan's tasks, attempts and events straight into a store, as orch would (or should not)."""

    def __init__(self, url: str, run: FaultRun, keys: list[str]) -> None:
        ensure_schema(url)
        tasks = [
            {"id": k, "title": k, "command": run.agent_command(), "after": [keys[0]] if i else []}
            for i, k in enumerate(keys)
        ]
        with write_session(url) as session:
            self.plan_id = plans.submit_plan(session, make_plan(tasks, name="oracle", workdir=run.folder), NOW)
        self.store = Store(url)
        self.run = run
        with self.store.engine.connect() as conn:
            self.pk = {t.key: t.pk for t in self.store.tasks(conn, self.plan_id)}
        self.clock = NOW

    def _insert(self, table: str, **values: Any) -> None:
        target = self.store.table(table)
        with self.store.engine.begin() as conn:
            conn.execute(sa.insert(target).values(fill_required(target, values)))

    def event(self, key: str, old: str | None, new: str, attempt: int | None = None) -> None:
        self.clock += timedelta(seconds=1)
        self._insert(
            "events",
            at=self.clock,
            plan_id=self.plan_id,
            task_pk=self.pk[key],
            attempt=attempt,
            kind="task",
            old=old,
            new=new,
        )

    def attempt(self, key: str, number: int, lease: str, status: str) -> None:
        self._insert("attempts", task_pk=self.pk[key], number=number, lease=lease, status=status, started_at=self.clock)

    def task(self, key: str, status: str, attempt: int, lease: str | None = None) -> None:
        tasks = self.store.table("tasks")
        with self.store.engine.begin() as conn:
            conn.execute(
                sa.update(tasks).where(tasks.c.pk == self.pk[key]).values(status=status, attempt=attempt, lease=lease)
            )

    def plan(self, status: str) -> None:
        plans = self.store.table("plans")
        with self.store.engine.begin() as conn:
            conn.execute(sa.update(plans).where(plans.c.id == self.plan_id).values(status=status))

    def ledger(self, key: str, attempt: int, lease: str, *, end: bool = True, ok: bool = True) -> None:
        with self.run.ledger.open("a") as ledger:
            base = {"plan": self.plan_id, "task": key, "attempt": attempt, "lease": lease, "pid": 1, "host": "h"}
            ledger.write(json.dumps({**base, "event": "start", "time": 0}) + "\n")
            if end:
                ledger.write(json.dumps({**base, "event": "end", "ok": ok, "time": 1}) + "\n")

    def succeed(self, key: str, lease: str, attempt: int = 1) -> None:
        """The legal life of a task that succeeds on `attempt`, in store and ledger."""
        self.event(key, None, "queued", attempt)
        self.event(key, "queued", "running", attempt)
        self.attempt(key, attempt, lease, "succeeded")
        self.ledger(key, attempt, lease)
        self.event(key, "running", "succeeded", attempt)
        self.task(key, "succeeded", attempt)


def test_a_consistent_history_passes(sqlite_url: str, tmp_path: Path) -> None:
    run = FaultRun(tmp_path)
    history = History(sqlite_url, run, ["a", "b", "c"])
    # b fails once and succeeds on retry; the first run's ledger shows the failure.
    history.succeed("a", "lease-a")
    history.event("b", None, "queued", 1)
    history.event("b", "queued", "running", 1)
    history.attempt("b", 1, "lease-b1", "failed")
    history.ledger("b", 1, "lease-b1", ok=False)
    history.event("b", "running", "retry_wait", 1)
    history.succeed("b", "lease-b2", attempt=2)
    history.succeed("c", "lease-c")
    history.plan("succeeded")

    verdict = examine(sqlite_url, history.plan_id, run.ledger, run.marker)
    history.store.close()
    assert verdict.problems == []
    assert verdict.figures["tasks lost"] == (0, 3)
    assert verdict.figures["illegal transitions"] == (0, 12)


def test_every_kind_of_violation_is_reported(sqlite_url: str, tmp_path: Path) -> None:
    run = FaultRun(tmp_path)
    history = History(sqlite_url, run, ["a", "b", "c", "d"])
    # a: two committed successes, the second after an illegal succeeded -> running.
    history.succeed("a", "lease-a1")
    history.event("a", "succeeded", "running", 2)
    history.attempt("a", 2, "lease-a2", "succeeded")
    history.ledger("a", 2, "lease-a2")
    history.event("a", "running", "succeeded", 2)
    history.task("a", "succeeded", 2)
    # b: running without a lease, so the plan cannot be final either.
    history.event("b", None, "queued", 1)
    history.event("b", "queued", "running", 1)
    history.attempt("b", 1, "lease-b", "running")
    history.task("b", "running", 1, lease=None)
    # c: succeeded in the store, but no run of its agent completed under that lease; attempt 1 ran twice.
    history.event("c", None, "queued", 1)
    history.event("c", "queued", "running", 1)
    history.attempt("c", 1, "lease-c", "succeeded")
    history.ledger("c", 1, "lease-c", end=False)
    history.ledger("c", 1, "lease-c", end=False)
    history.event("c", "running", "succeeded", 1)
    history.task("c", "succeeded", 1)
    # d: an agent ran under a lease no attempt holds; the log skips running; the store disagrees with the log.
    history.ledger("d", 1, "stolen-lease")
    history.event("d", None, "queued", 1)
    history.event("d", "queued", "retry_wait", 1)
    history.task("d", "failed", 1)
    history.plan("succeeded")
    leftover = subprocess.Popen(["sleep", "60"], env={**os.environ, "FAULT_MARKER": run.marker}, start_new_session=True)
    try:
        verdict = examine(sqlite_url, history.plan_id, run.ledger, run.marker)
    finally:
        os.killpg(leftover.pid, signal.SIGKILL)
        leftover.wait()
        history.store.close()

    text = "\n".join(verdict.problems)
    figures = verdict.figures
    assert figures["tasks lost"] == (1, 4), text
    assert figures["committed twice"] == (1, 4), text
    assert figures["illegal transitions"] == (2, 12), text  # succeeded -> running, queued -> retry_wait
    assert figures["leftover processes"] == 1, text
    assert figures["running without live lease"] == (1, 1), text
    assert figures["attempts run twice"] == (1, 4), text
    assert figures["unclaimed runs"] == 1, text
    for expected in (
        "task 'a': 2 succeeded attempts",
        "task 'b' ended running, not a final state",
        "task 'b' is running without a lease",
        "task 'c': its committed success (attempt 1) is backed by 0 completed runs",
        "task 'c': attempt 1 ran 2 times",
        "task 'd': an agent ran attempt 1 under lease 'stolen-lease'",
        "task 'd': illegal transition queued -> retry_wait",
        "task 'd': the event log ends in retry_wait, the store says failed",
        "process left behind",
    ):
        assert expected in text, f"{expected!r} not reported:\n{text}"
    with pytest.raises(AssertionError, match="invariants violated"):
        verdict.assert_ok()
