"""The store on SQLite and PostgreSQL: submit, compare-and-set transitions, readiness applied, dispatch races."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text

from orch.decisions.breaker import CIRCUIT_OPEN
from orch.decisions.retry import Outcome
from orch.dispatch.reconcile import reconcile_plans
from orch.failures import PauseCause
from orch.records import AttemptResult, Dispatch
from orch.states import AttemptStatus, PlanStatus, TaskStatus
from orch.store import attempts, dispatching, events, operator, pauses, plans
from orch.store.db import ensure_schema, read_session, write_session
from orch.store.models import AttemptRow, Base, TaskRow
from tests.helpers import DIAMOND, SUCCESS, layered_dag, make_plan, registry

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
LEASE = 60.0


def submit(tasks: list[dict[str, object]], name: str = "p", at: datetime = NOW) -> str:
    with write_session() as session:
        return plans.submit_plan(session, make_plan(tasks, name=name), at)


def statuses(plan_id: str) -> dict[str, TaskStatus]:
    with read_session() as session:
        return {t.key: t.status for t in plans.plan_tasks(session, plan_id)}


def tick(at: datetime = NOW) -> list[Dispatch]:
    with write_session() as session:
        return reconcile_plans(session, plans.active_plan_ids(session), registry(), at)


def run_to_result(dispatch: Dispatch, ok: bool, at: datetime = NOW, retry_at: datetime | None = None) -> bool:
    with write_session() as session:
        claimed = attempts.claim(session, dispatch.task_pk, dispatch.attempt, "w1", 1, LEASE, now=at)
    assert claimed is not None
    claim, _ = claimed
    new = TaskStatus.SUCCEEDED if ok else (TaskStatus.RETRY_WAIT if retry_at else TaskStatus.FAILED)
    done = AttemptStatus.SUCCEEDED if ok else AttemptStatus.FAILED
    result = AttemptResult(ok, exit_code=0 if ok else 1, error=None if ok else "boom")
    with write_session() as session:
        return attempts.record_result(session, claim, result, Outcome(new, done, retry_at), at) is not None


def test_migrations_match_the_models(store_url: str) -> None:
    with ensure_schema(store_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_a_pause_set_before_the_cause_column_keeps_its_cause(store_url: str) -> None:
    """A store upgraded mid-pause: the migration that adds agent_pauses.cause reads it from the reason (a breaker's
    begins with CIRCUIT_OPEN), so the pause is reported as before; its downgrade drops the column again."""
    engine = ensure_schema(store_url)
    config = AlembicConfig()
    config.set_main_option("script_location", "orch.store:migrations")

    def migrate(step: Callable[[AlembicConfig, str], None], revision: str) -> None:
        with engine.execution_options(orch_write=True).begin() as conn:
            config.attributes["connection"] = conn
            step(config, revision)

    migrate(command.downgrade, "0008")
    try:
        assert "cause" not in {column["name"] for column in inspect(engine).get_columns("agent_pauses")}
        until, at = datetime(2026, 11, 21, 13, 0), datetime(2026, 11, 21, 12, 0)  # stored naive UTC
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO agent_pauses (agent, until, reason, created_at) VALUES (:a, :u, :r, :c)"),
                [
                    {"a": "breaker", "u": until, "r": f"{CIRCUIT_OPEN}: 5 consecutive failures", "c": at},
                    {"a": "limit", "u": until, "r": "Claude usage limit reached; resets at 14:00", "c": at},
                    {"a": "capital", "u": until, "r": "Circuit open? no: a provider's message", "c": at},
                ],
            )
    finally:
        migrate(command.upgrade, "head")
    with read_session() as session:
        causes = {agent: row.cause for agent, row in pauses.active_pauses(session, NOW).items()}
    assert causes == {
        "breaker": PauseCause.CIRCUIT_BREAKER,
        "limit": PauseCause.USAGE_LIMIT,
        "capital": PauseCause.USAGE_LIMIT,
    }


def test_submit_stores_tasks_edges_and_finds_by_id_or_latest_name(store_url: str) -> None:
    first = submit(DIAMOND, name="diamond")
    second = submit(DIAMOND, name="diamond", at=NOW + timedelta(seconds=1))
    with read_session() as session:
        assert plans.find_plan(session, first).id == first
        assert plans.find_plan(session, "diamond").id == second
        tasks = plans.plan_tasks(session, first)
        assert [t.key for t in tasks] == ["a", "b", "c", "d"]
        assert {t.status for t in tasks} == {TaskStatus.PENDING}
        key_of = {t.pk: t.key for t in tasks}
        edges = {(key_of[t], key_of[d]) for t, d in plans.plan_dependencies(session, first)}
        assert edges == {("b", "a"), ("c", "a"), ("d", "b"), ("d", "c")}
        assert tasks[0].queue == "agent.backend-development"


def test_dispatch_claims_ready_tasks_once_in_priority_order(store_url: str) -> None:
    plan_id = submit(DIAMOND)
    first = tick()
    assert [(d.key, d.attempt) for d in first] == [("a", 1)]
    assert tick() == []  # nothing new is ready: no double claim
    assert run_to_result(first[0], ok=True)
    second = tick()
    assert [d.key for d in second] == ["c", "b"]  # c has the higher priority
    assert statuses(plan_id) == {"a": "succeeded", "b": "queued", "c": "queued", "d": "pending"}


def test_claim_is_a_compare_and_set_and_duplicates_are_dropped(store_url: str) -> None:
    submit(DIAMOND)
    (dispatch,) = tick()
    with write_session() as session:
        assert attempts.claim(session, dispatch.task_pk, dispatch.attempt + 1, "w", 1, LEASE, now=NOW) is None
        claimed = attempts.claim(session, dispatch.task_pk, dispatch.attempt, "w", 1, LEASE, now=NOW)
        assert claimed is not None
    with write_session() as session:
        assert attempts.claim(session, dispatch.task_pk, dispatch.attempt, "w2", 2, LEASE, now=NOW) is None
        rows = session.scalars(select(AttemptRow).where(AttemptRow.task_pk == dispatch.task_pk)).all()
        assert [(a.number, a.worker, a.status) for a in rows] == [(1, "w", AttemptStatus.RUNNING)]


def test_a_result_under_a_stale_lease_is_rejected(store_url: str) -> None:
    plan_id = submit(DIAMOND)
    (dispatch,) = tick()
    with write_session() as session:
        claimed = attempts.claim(session, dispatch.task_pk, dispatch.attempt, "w", 1, LEASE, now=NOW)
    assert claimed is not None
    claim, _ = claimed
    with write_session() as session:
        operator.cancel_plan(session, plan_id, NOW, "operator cancelled")
    with write_session() as session:
        accepted = attempts.record_result(session, claim, AttemptResult(True, exit_code=0), SUCCESS, NOW)
    assert accepted is None
    assert statuses(plan_id)["a"] is TaskStatus.CANCELLED
    with read_session() as session:
        assert plans.get_plan(session, plan_id).status is PlanStatus.CANCELLED  # type: ignore[union-attr]


def test_a_failure_dooms_descendants_and_fails_the_plan(store_url: str) -> None:
    plan_id = submit(DIAMOND)
    (dispatch,) = tick()
    assert run_to_result(dispatch, ok=False)
    assert tick() == []
    assert statuses(plan_id) == {"a": "failed", "b": "upstream_failed", "c": "upstream_failed", "d": "upstream_failed"}
    with read_session() as session:
        plan = plans.get_plan(session, plan_id)
        assert plan is not None and plan.status is PlanStatus.FAILED
        kinds = Counter((e.kind, e.old, e.new) for e in events.plan_events(session, plan_id))
    assert kinds[("task", "pending", "upstream_failed")] == 3
    assert kinds[("task", "running", "failed")] == 1
    assert kinds[("plan", "running", "failed")] == 1


def test_retry_waits_for_its_backoff_then_runs_as_a_new_attempt(store_url: str) -> None:
    plan_id = submit(DIAMOND)
    (dispatch,) = tick()
    assert run_to_result(dispatch, ok=False, retry_at=NOW + timedelta(seconds=10))
    assert statuses(plan_id)["a"] is TaskStatus.RETRY_WAIT
    assert tick(NOW + timedelta(seconds=5)) == []
    (again,) = tick(NOW + timedelta(seconds=11))
    assert (again.key, again.attempt) == ("a", 2)
    assert run_to_result(again, ok=True, at=NOW + timedelta(seconds=12))
    assert statuses(plan_id)["a"] is TaskStatus.SUCCEEDED


def test_the_plan_succeeds_when_every_task_did(store_url: str) -> None:
    plan_id = submit(DIAMOND)
    for _ in range(4):
        for dispatch in tick():
            assert run_to_result(dispatch, ok=True)
    tick()
    with read_session() as session:
        plan = plans.get_plan(session, plan_id)
        assert plan is not None and plan.status is PlanStatus.SUCCEEDED and plan.finished_at is not None


def test_an_agent_types_cap_bounds_queued_and_running_tasks(store_url: str) -> None:
    cap = registry().get("backend-development").concurrency
    submit([{"id": f"t{i}", "title": "api", "agent": "backend-development", "command": "true"} for i in range(cap + 5)])
    assert len(tick()) == cap
    assert tick() == []


def test_stale_queued_tasks_are_sent_again(store_url: str) -> None:
    submit(DIAMOND)
    (dispatch,) = tick()
    with write_session() as session:
        assert dispatching.stale_dispatches(session, NOW, NOW) == []
        again = dispatching.stale_dispatches(session, NOW + timedelta(seconds=1), NOW + timedelta(seconds=1))
    assert [(d.task_pk, d.attempt) for d in again] == [(dispatch.task_pk, dispatch.attempt)]


def test_concurrent_dispatchers_never_claim_a_task_twice(store_url: str) -> None:
    tasks = layered_dag(width=30, depth=1, command="true")
    for t in tasks:
        t["agent"] = "general-purpose"
    for cap_task in tasks:
        cap_task["priority"] = 0
    plan_id = submit(tasks)
    claimed: list[tuple[int, int]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def dispatcher() -> None:
        try:
            for _ in range(10):
                got = tick()
                with lock:
                    claimed.extend((d.task_pk, d.attempt) for d in got)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=dispatcher) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(claimed) == len(set(claimed))
    cap = registry().get("general-purpose").concurrency
    assert len(claimed) == cap  # never over the agent type's cap, even racing
    with read_session() as session:
        queued = session.scalars(
            select(TaskRow).where(TaskRow.plan_id == plan_id, TaskRow.status == TaskStatus.QUEUED)
        ).all()
    assert len(queued) == cap


def unmet(plan_id: str) -> dict[str, int]:
    with read_session() as session:
        return {t.key: t.unmet_deps for t in plans.plan_tasks(session, plan_id)}


def test_unmet_dependencies_count_down_as_dependencies_succeed(store_url: str) -> None:
    import importlib

    from sqlalchemy import text

    plan_id = submit(DIAMOND)
    assert unmet(plan_id) == {"a": 0, "b": 1, "c": 1, "d": 2}
    (first,) = tick()
    assert run_to_result(first, ok=True)
    assert unmet(plan_id) == {"a": 0, "b": 0, "c": 0, "d": 2}
    b, _c = sorted(tick(), key=lambda d: d.key)
    assert run_to_result(b, ok=True)
    assert unmet(plan_id)["d"] == 1 and [d.key for d in tick()] == []  # d still waits for c
    with write_session() as session:
        assert operator.skip_task(session, plan_id, "c", NOW) == ["c"]
    assert unmet(plan_id)["d"] == 0 and [d.key for d in tick()] == ["d"]
    # The migration's backfill computes the same counts from the tasks' statuses.
    backfill = importlib.import_module("orch.store.migrations.versions.0006_unmet_dependencies").BACKFILL
    with write_session() as session:
        session.execute(text("UPDATE tasks SET unmet_deps = 99"))
        session.execute(text(backfill))
    assert unmet(plan_id) == {"a": 0, "b": 0, "c": 0, "d": 0}


def test_events_are_written_at_commit_in_order_and_dropped_on_rollback(store_url: str) -> None:
    plan_id = submit(DIAMOND)
    with pytest.raises(RuntimeError), write_session() as session:
        tick_claims = reconcile_plans(session, [plan_id], registry(), NOW)
        assert [e.new for e in events.plan_events(session, plan_id)][-1] == "queued"  # a reader sees its own
        raise RuntimeError("the transaction fails after logging")
    with read_session() as session:
        assert [(e.kind, e.new) for e in events.plan_events(session, plan_id)] == [("plan", "running")]
    (dispatch,) = tick()
    assert tick_claims[0].task_pk == dispatch.task_pk
    assert run_to_result(dispatch, ok=True)
    assert len(tick()) == 2
    with read_session() as session:
        logged = [(e.kind, e.task_pk, e.new) for e in events.plan_events(session, plan_id)]
    a = dispatch.task_pk
    assert logged[:4] == [
        ("plan", None, "running"),
        ("task", a, "queued"),
        ("task", a, "running"),
        ("task", a, "succeeded"),
    ]
    assert sorted(str(new) for _, _, new in logged[4:]) == ["queued", "queued"]


def test_a_sqlite_url_with_a_driver_name_gets_the_same_store_set_up(tmp_path: Path) -> None:
    (tmp_path / "nested").mkdir()  # orch makes the store's file, never its folders
    url = f"sqlite+pysqlite:///{tmp_path / 'nested' / 'store.db'}"
    with ensure_schema(url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_a_worker_transaction_survives_the_servers_connections_dying(postgres_url: str) -> None:
    """Pooled connections are not pinged before use: when the server drops them (a restart), the first
    transaction fails with a store error, SQLAlchemy discards the pool's older connections, and the retry runs."""
    from orch.store.db import get_engine, with_store_retry

    plan_id = submit(DIAMOND)
    engine = get_engine()
    pooled, killer = engine.connect(), engine.connect()
    pooled.close()  # back to the pool, alive for now
    own = killer.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
    killer.exec_driver_sql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND pid <> %s",
        (own,),
    )
    killer.invalidate()  # this one goes too: the pool holds only the dead connection
    retries: list[float] = []

    def dispatch() -> list[Dispatch]:
        with write_session() as session:
            return reconcile_plans(session, [plan_id], registry(), NOW)

    dispatched = with_store_retry(dispatch, 30, lambda exc, delay: retries.append(delay))
    assert [d.plan_id for d in dispatched] == [plan_id]
    assert retries == [0.5]  # one failure on the dead connection, then a fresh one
    assert statuses(plan_id)["a"] == TaskStatus.QUEUED


def test_a_savepoints_commit_leaves_its_events_to_the_outer_transaction(store_url: str) -> None:
    plan_id = submit(DIAMOND)
    with write_session() as session:
        with session.begin_nested():
            reconcile_plans(session, [plan_id], registry(), NOW)
        kinds = [(e.kind, e.new) for e in events.plan_events(session, plan_id)]
    with read_session() as session:
        assert [(e.kind, e.new) for e in events.plan_events(session, plan_id)] == kinds
    assert kinds == [("plan", "running"), ("task", "queued")]
