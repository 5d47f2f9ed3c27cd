"""The SQL store's tables (SQLAlchemy 2 typed ORM). Alembic migrations in orch/store/migrations create them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Enum,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
    false,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from orch.failures import PauseCause
from orch.states import AttemptStatus, PlanStatus, TaskStatus


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, stored naive-UTC (SQLite keeps no zone)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use UTC-aware datetimes")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


def _enum(enum: type[Any]) -> Enum:
    return Enum(enum, native_enum=False, length=20, values_callable=lambda e: [m.value for m in e])


class Base(DeclarativeBase):
    pass


class PlanRow(Base):
    __tablename__ = "plans"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(Text)
    workdir: Mapped[str] = mapped_column(Text)
    status: Mapped[PlanStatus] = mapped_column(_enum(PlanStatus), index=True)
    # The plan as written (can be megabytes): loaded only when asked for, never by dispatch.
    document: Mapped[dict[str, Any]] = mapped_column(JSON, deferred=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    budget_usd: Mapped[float | None]
    budget_tokens: Mapped[int | None] = mapped_column(BigInteger)
    held_reason: Mapped[str | None] = mapped_column(Text)  # why a paused or budget_exhausted plan is held
    # The `orch run` process that submitted the plan and runs its worker (None: submitted to a deployment). Once
    # that process is gone, the next CLI command on its host cancels the plan, freeing the caps its tasks held.
    runner_host: Mapped[str | None] = mapped_column(String(255))
    runner_pid: Mapped[int | None]
    runner_start_ticks: Mapped[int | None] = mapped_column(BigInteger)  # its start time: a reused pid is another
    # The task list the plan was read from and follows (`orch run --watch`, `orch sync`): its absolute path, its
    # format and the options it was read with ({"tag": ..., "include_optional": ...}); None: a plan file.
    list_file: Mapped[str | None] = mapped_column(Text)
    list_format: Mapped[str | None] = mapped_column(String(16))
    list_options: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    revision: Mapped[int] = mapped_column(default=1, server_default="1")  # 1 as submitted, +1 per revision applied


class TaskRow(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("plan_id", "key", name="uq_tasks_plan_key"),
        Index("ix_tasks_status_agent", "status", "agent"),
        Index("ix_tasks_status_lease_expires", "status", "lease_expires_at"),
        # (plan_id, status) lookups use its prefix; a second index on them would cost every status change
        Index("ix_tasks_ready", "plan_id", "status", "unmet_deps", "priority", "seq"),
    )

    pk: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(128))
    seq: Mapped[int]
    title: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")
    agent: Mapped[str] = mapped_column(String(64))
    route_reason: Mapped[str] = mapped_column(Text, default="")
    queue: Mapped[str] = mapped_column(String(128))
    executor: Mapped[str] = mapped_column(String(32))
    command: Mapped[str | None] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(default=0)
    files: Mapped[list[str]] = mapped_column(JSON, default=list)
    success: Mapped[str] = mapped_column(Text, default="")
    timeout: Mapped[float]
    retries: Mapped[int]
    status: Mapped[TaskStatus] = mapped_column(_enum(TaskStatus))
    attempt: Mapped[int] = mapped_column(default=0)  # number of the latest attempt dispatched
    lease: Mapped[str | None] = mapped_column(String(36))  # the running attempt's token
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # by the database's clock
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    dispatched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # last message sent
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(Text)  # why the latest attempt failed
    verify: Mapped[str | None] = mapped_column(Text)  # a shell command that checks the agent's work
    scope: Mapped[str] = mapped_column(String(10), default="loose", server_default="loose")
    call: Mapped[str | None] = mapped_column(String(300))  # python executor: "package.module:function"
    unmet_deps: Mapped[int] = mapped_column(default=0, server_default="0")  # dependencies not yet succeeded
    retry_floor: Mapped[int] = mapped_column(default=0, server_default="0")  # failures of attempts up to it
    budget_usd: Mapped[float | None]
    budget_tokens: Mapped[int | None] = mapped_column(BigInteger)
    # The plan's repository the task works in (an integration's `repository`); None: the plan's shared workdir.
    repository: Mapped[str | None] = mapped_column(String(64))
    merge: Mapped[bool] = mapped_column(default=True, server_default=true())  # its work lands (False: reviews)
    resolves: Mapped[int | None]  # the merge request whose conflict this task resolves
    # Where a task list wrote it: {"format", "file", "line", "id", "status"} (status: the list's word at import).
    source: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    hold: Mapped[str | None] = mapped_column(Text)  # why its list holds it (deferred): never dispatched while set
    estimate: Mapped[dict[str, float] | None] = mapped_column(JSON)  # {"tokens", "usd", "minutes"}: those set
    on_failure: Mapped[str] = mapped_column(String(16), default="fail", server_default="fail")  # fail | replan
    max_replans: Mapped[int] = mapped_column(default=1, server_default="1")
    replans: Mapped[int] = mapped_column(default=0, server_default="0")  # re-plans asked for so far
    replanning: Mapped[bool] = mapped_column(default=False, server_default=false())  # next attempt asks the planner
    added_by: Mapped[int | None]  # the task whose attempt added it (a follow-up) or that it replaces (a re-plan)
    added_how: Mapped[str | None] = mapped_column(String(16))  # followup | replan; None: in the plan as submitted
    depth: Mapped[int] = mapped_column(default=0, server_default="0")  # follow-ups of follow-ups: how deep


class PlanRevisionRow(Base):
    """A change a followed task list made to its running plan (tasks added, changed, cancelled, skipped), and what
    it reported and did not apply; append-only."""

    __tablename__ = "plan_revisions"
    __table_args__ = (UniqueConstraint("plan_id", "number", name="uq_plan_revisions_plan_number"),)

    pk: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id", ondelete="CASCADE"))
    number: Mapped[int]  # the plan's revision it made (2 is the first change after the submit)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    origin: Mapped[str] = mapped_column(String(255))  # what made it: "orch sync tasks.md on host (pid 123)"
    summary: Mapped[str] = mapped_column(Text)  # one line for people
    changes: Mapped[dict[str, Any]] = mapped_column(JSON)  # {"added": [ids], "changed": [...], ...}


class DependencyRow(Base):
    __tablename__ = "dependencies"
    __table_args__ = (Index("ix_dependencies_depends_on", "depends_on_pk"),)

    task_pk: Mapped[int] = mapped_column(ForeignKey("tasks.pk", ondelete="CASCADE"), primary_key=True)
    depends_on_pk: Mapped[int] = mapped_column(ForeignKey("tasks.pk", ondelete="CASCADE"), primary_key=True)


class AttemptRow(Base):
    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("task_pk", "number", name="uq_attempts_task_number"),)

    pk: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    task_pk: Mapped[int] = mapped_column(ForeignKey("tasks.pk", ondelete="CASCADE"))
    number: Mapped[int]
    lease: Mapped[str] = mapped_column(String(36))
    status: Mapped[AttemptStatus] = mapped_column(_enum(AttemptStatus))
    worker: Mapped[str] = mapped_column(String(255), default="")
    pid: Mapped[int | None]
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    exit_code: Mapped[int | None]
    failure_class: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    output_tail: Mapped[str] = mapped_column(Text, default="")
    log_path: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(64))
    input_tokens: Mapped[int] = mapped_column(default=0, server_default="0")
    output_tokens: Mapped[int] = mapped_column(default=0, server_default="0")
    cache_creation_tokens: Mapped[int] = mapped_column(default=0, server_default="0")
    cache_read_tokens: Mapped[int] = mapped_column(default=0, server_default="0")
    cost_usd: Mapped[float | None]
    result: Mapped[str | None] = mapped_column(Text)  # the agent's final answer / summary
    duration_s: Mapped[float | None]
    files_changed: Mapped[list[str] | None] = mapped_column(JSON)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    verified: Mapped[bool | None]  # the verify command passed / failed; None: there was none, or not reached
    branch: Mapped[str | None] = mapped_column(Text)  # orch-work/<plan>/<task>/<attempt>: a worktree attempt's
    base_commit: Mapped[str | None] = mapped_column(String(64))  # the commit its worktree started from
    head_commit: Mapped[str | None] = mapped_column(String(64))  # its branch's head once orch committed its work
    worktree: Mapped[str | None] = mapped_column(Text)  # the worktree's folder on its worker's host


class EventRow(Base):
    """Append-only log of state changes: never updated, never deleted (but with its plan)."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_plan", "plan_id", "pk"),)

    pk: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id", ondelete="CASCADE"))
    task_pk: Mapped[int | None]
    attempt: Mapped[int | None]
    kind: Mapped[str] = mapped_column(String(32))
    old: Mapped[str | None] = mapped_column(String(20))
    new: Mapped[str | None] = mapped_column(String(20))
    detail: Mapped[str | None] = mapped_column(Text)


class AgentPauseRow(Base):
    """An agent type whose dispatch is held until `until`: its circuit breaker opened, or a provider's usage limit
    (e.g. Claude's) holds until its reset."""

    __tablename__ = "agent_pauses"

    agent: Mapped[str] = mapped_column(String(64), primary_key=True)
    until: Mapped[datetime] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(Text)  # for people: the cause's details (the failures, the reset time)
    cause: Mapped[PauseCause] = mapped_column(_enum(PauseCause))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ServiceRow(Base):
    """A long-running orch process that serves this store: today the beats (`kind` 'beat'), each stamping its last
    tick, so that a command can tell whether any beat serves the store and when one last did. A beat that stops
    leaves its row: its last tick is the answer to "since when has nothing ticked"."""

    __tablename__ = "services"
    __table_args__ = (UniqueConstraint("kind", "host", "pid", name="uq_services_kind_host_pid"),)

    pk: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(20))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int]
    plans: Mapped[str] = mapped_column(Text, default="", server_default="")  # comma-separated ids; "": every plan
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_tick_at: Mapped[datetime] = mapped_column(UTCDateTime)  # by the database's clock


class IntegrationRow(Base):
    """A plan's integration branch in one repository (`orch/<plan id>`): where it starts, the head the store last
    recorded, how the plan's work lands there, and the merge lock (a lease) whoever merges into it holds."""

    __tablename__ = "integrations"
    __table_args__ = (UniqueConstraint("plan_id", "repository", name="uq_integrations_plan_repository"),)

    pk: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id", ondelete="CASCADE"))
    repository: Mapped[str] = mapped_column(String(64))  # "repo" (the plan's own `repo:`) or a target's name
    url: Mapped[str] = mapped_column(Text)
    base: Mapped[str] = mapped_column(String(255))  # the branch the plan starts from (and lands on, `land: base`)
    base_commit: Mapped[str] = mapped_column(String(64))  # `base` when the plan was submitted
    branch: Mapped[str] = mapped_column(String(255))
    head: Mapped[str] = mapped_column(String(64))  # the integration branch as the last recorded merge left it
    land: Mapped[str] = mapped_column(String(10))
    gates: Mapped[list[str]] = mapped_column(JSON)
    gate_timeout: Mapped[float]
    on_conflict: Mapped[str] = mapped_column(String(10))
    relock: Mapped[list[list[str]]] = mapped_column(JSON)  # [[path pattern, command], ...]
    context: Mapped[str] = mapped_column(Text, default="", server_default="")
    lease: Mapped[str | None] = mapped_column(String(36))  # the merge lock's holder (a fencing token)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    landed: Mapped[str | None] = mapped_column(String(20))  # None: not yet; "landed", "refused", "kept" (land: branch)
    land_detail: Mapped[str | None] = mapped_column(Text)


class MergeRequestRow(Base):
    """One attempt's work waiting to land on its plan's integration branch: the merge queue's entry."""

    __tablename__ = "merge_requests"
    __table_args__ = (
        Index("ix_merge_requests_queue", "integration_pk", "phase"),
        Index("ix_merge_requests_task", "task_pk"),
    )

    pk: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    plan_id: Mapped[str] = mapped_column(ForeignKey("plans.id", ondelete="CASCADE"))
    integration_pk: Mapped[int] = mapped_column(ForeignKey("integrations.pk", ondelete="CASCADE"))
    task_pk: Mapped[int] = mapped_column(ForeignKey("tasks.pk", ondelete="CASCADE"))
    attempt: Mapped[int]
    phase: Mapped[str] = mapped_column(String(20))  # orch.states.MergePhase
    base_commit: Mapped[str] = mapped_column(String(64))
    head_commit: Mapped[str] = mapped_column(String(64))
    enqueued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    merged_commit: Mapped[str | None] = mapped_column(String(64))
    conflicts: Mapped[list[str] | None] = mapped_column(JSON)
    detail: Mapped[str | None] = mapped_column(Text)
    tries: Mapped[int] = mapped_column(default=0, server_default="0")  # merges begun (a lost lease begins again)
    resolved_by: Mapped[int | None]  # the conflict-resolution task (pk) whose merge lands this request's work
