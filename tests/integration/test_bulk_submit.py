"""A submitted plan's rows go in by the driver's bulk path (COPY on PostgreSQL, executemany on SQLite) with primary
keys reserved first: what lands must be what the ORM would have written, and keys must never collide."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import cast

from sqlalchemy import Table, func, select

from orch.states import TaskStatus
from orch.store import plans
from orch.store.bulk import reserve_primary_keys
from orch.store.db import read_session, write_session
from orch.store.models import DependencyRow, TaskRow
from tests.helpers import make_plan

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)

TASKS: list[dict[str, object]] = [
    {"id": "later", "title": "write the API docs", "after": ["first"], "files": ["docs/**/*.md", "README.md"]},
    {"id": "first", "title": "build the schema", "priority": 5, "budget": {"usd": 2.5, "tokens": 1000}},
    {"id": "verify", "title": "run the checks", "command": "true", "verify": "true", "scope": "strict",
     "after": ["first", "later"], "timeout": "90s", "retries": 0},
]  # fmt: skip


def submit(name: str) -> str:
    with write_session() as session:
        return plans.submit_plan(session, make_plan(TASKS, name=name), NOW)


def test_bulk_rows_hold_every_field_the_plan_gave(store_url: str) -> None:
    plan_id = submit("fields")
    with read_session() as session:
        tasks = {t.key: t for t in plans.plan_tasks(session, plan_id)}
        key_of = {t.pk: t.key for t in tasks.values()}
        edges = {(key_of[t], key_of[d]) for t, d in plans.plan_dependencies(session, plan_id)}
    assert edges == {("later", "first"), ("verify", "first"), ("verify", "later")}
    later, first, verify = tasks["later"], tasks["first"], tasks["verify"]
    assert [later.seq, first.seq, verify.seq] == [0, 1, 2]
    assert later.files == ["docs/**/*.md", "README.md"] and first.files == []
    assert (first.priority, first.budget_usd, first.budget_tokens) == (5, 2.5, 1000)
    assert (verify.executor, verify.command, verify.verify, verify.scope) == ("shell", "true", "true", "strict")
    assert (verify.timeout, verify.retries) == (90.0, 0)
    assert [later.unmet_deps, first.unmet_deps, verify.unmet_deps] == [1, 0, 2]
    assert {t.status for t in tasks.values()} == {TaskStatus.PENDING}
    assert {(t.attempt, t.retry_floor, t.lease, t.error) for t in tasks.values()} == {(0, 0, None, None)}
    assert later.route_reason.startswith("score") and later.queue.startswith("agent.")


def test_keys_never_collide_across_plans_or_with_rows_the_database_numbers(store_url: str) -> None:
    first, second = submit("one"), submit("two")
    with write_session() as session:
        numbered = TaskRow(
            plan_id=first, key="by-the-orm", seq=9, title="t", agent="a", queue="q", executor="noop",
            timeout=60, retries=0, status=TaskStatus.PENDING,
        )  # fmt: skip
        session.add(numbered)
        session.flush()
        orm_pk = numbered.pk
    third = submit("three")
    with read_session() as session:
        stored = list(session.scalars(select(TaskRow.pk)))
        by_plan = {p: [t.pk for t in plans.plan_tasks(session, p)] for p in (first, second, third)}
        edge_count = session.scalar(select(func.count()).select_from(DependencyRow))
    assert len(stored) == len(set(stored)) == 10
    assert orm_pk in stored
    assert [len(by_plan[p]) for p in (first, second, third)] == [4, 3, 3]
    assert edge_count == 9


def test_reserved_keys_are_new_and_distinct(store_url: str) -> None:
    submit("taken")
    with write_session() as session:
        taken = set(session.scalars(select(TaskRow.pk)))
        reserved = reserve_primary_keys(session, cast(Table, TaskRow.__table__), 1000)
        assert reserve_primary_keys(session, cast(Table, TaskRow.__table__), 0) == []
    assert len(set(reserved)) == 1000 and not taken & set(reserved)
