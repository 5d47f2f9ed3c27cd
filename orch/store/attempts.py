"""A worker's attempt: the claim (queued → running, with a lease), the heartbeat that renews the lease, the
result (running → its outcome, only while the lease holds), the leases that expired, and the inputs of the
attempt's prompt (its dependencies' handoffs, why its previous attempt failed)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Float, Text, and_, bindparam, func, insert, literal, or_, select, update
from sqlalchemy.orm import Session

from orch.decisions.replan import REPLAN_RETRIES, ReplanState, Settled, replaced, replacement_refused, settle
from orch.decisions.retry import Outcome
from orch.failures import NOT_COUNTED
from orch.intake.prices import Usage
from orch.intake.prompts import Handoff, PreviousFailure
from orch.records import AttemptResult, Claim, ClaimedTask, Recorded
from orch.states import AttemptStatus, TaskStatus
from orch.store._sql import ATTEMPTS, DEPENDENCIES, PLANS, TASKS, DbClock, no_sync, rowcount
from orch.store.events import log_event
from orch.store.models import AttemptRow, DependencyRow, TaskRow

if TYPE_CHECKING:
    from orch.store.growth import Batch, GrowthRules, Proposal, Writer

# Attempts that spend a task's retry budget: failed for a reason of the task's own, or lost with their worker.
_SPENDS_RETRIES = and_(
    AttemptRow.status.in_((AttemptStatus.FAILED, AttemptStatus.LOST)),
    or_(AttemptRow.failure_class.is_(None), AttemptRow.failure_class.not_in(NOT_COUNTED)),
)


def counted_failures(session: Session, task_pk: int) -> int:
    """Attempts of a task that spent its retry budget (since the operator last ran `orch retry` on it)."""
    floor = select(TaskRow.retry_floor).where(TaskRow.pk == task_pk).scalar_subquery()
    return int(
        session.scalar(
            select(func.count()).where(AttemptRow.task_pk == task_pk, AttemptRow.number > floor, _SPENDS_RETRIES)
        )
        or 0
    )


_OF_TASK = TASKS.c.pk == bindparam("of_task")
_SPEC_COLUMNS = (
    *(TASKS.c[name] for name in ("key", "title", "description", "success", "command", "files", "timeout")),
    *(TASKS.c[name] for name in ("agent", "executor", "verify", "scope", "call")),
)
_WORKTREE_COLUMNS = (TASKS.c.repository, TASKS.c.merge, TASKS.c.resolves)
_WORKDIR = select(PLANS.c.workdir).where(PLANS.c.id == TASKS.c.plan_id).scalar_subquery()
_DEPENDANTS = select(func.count()).where(DEPENDENCIES.c.depends_on_pk == TASKS.c.pk).scalar_subquery()


def _claim_statement(started: Any, expires: Any) -> Any:
    return (
        update(TASKS)
        .where(_OF_TASK, TASKS.c.status == TaskStatus.QUEUED, TASKS.c.attempt == bindparam("of_number"))
        .values(
            status=TaskStatus.RUNNING,
            lease=bindparam("new_lease"),
            lease_expires_at=expires,
            started_at=started,
            finished_at=None,
        )
        .returning(
            TASKS.c.plan_id,
            TASKS.c.retries,
            TASKS.c.queued_at,
            TASKS.c.started_at,
            _DEPENDANTS,
            *_SPEC_COLUMNS,
            _WORKDIR.label("workdir"),
            *_WORKTREE_COLUMNS,
            TASKS.c.replanning,
            TASKS.c.depth,
        )
    )


_LEASE_SECONDS = bindparam("lease_s", type_=Float)
# At a time the caller gives (tests, replays), or at the database's clock read by the claim itself (a worker).
_CLAIM_AT = _claim_statement(bindparam("now"), bindparam("expires"))
_CLAIM_NOW = _claim_statement(DbClock(literal(0.0, Float)), DbClock(_LEASE_SECONDS))
_INSERT_ATTEMPT = insert(ATTEMPTS)


def claim(
    session: Session,
    task_pk: int,
    attempt: int,
    worker: str,
    pid: int | None,
    lease_seconds: float,
    *,
    now: datetime | None = None,
    log_path: Callable[[str, ClaimedTask], str | None] | None = None,
) -> tuple[Claim, ClaimedTask] | None:
    """queued → running for this attempt, with a fresh lease that expires unless renewed; None when the message
    is a duplicate or stale. Returns the claim and what the worker needs to run the task. The lease is stamped by
    the database's clock, read by the claim itself (one round trip fewer), or at `now` when given (tests, replays:
    `now` is then the database's clock as the caller read it). `log_path(plan_id, task)`: where the worker writes
    the attempt's log, recorded with the attempt from its start (`orch logs -f` follows it while it runs)."""
    lease = str(uuid.uuid4())
    params: dict[str, Any] = {"of_task": task_pk, "of_number": attempt, "new_lease": lease, "lease_s": lease_seconds}
    if now is not None:
        params.update(now=now, expires=now + timedelta(seconds=lease_seconds))
    row = session.execute(_CLAIM_NOW if now is None else _CLAIM_AT, params).first()
    if row is None:
        return None
    plan_id, retries, queued_at, started, dependants, *spec = row
    now = started
    assert now is not None
    task = ClaimedTask(*spec)
    key, agent = task.key, task.agent
    session.execute(
        _INSERT_ATTEMPT,
        {
            "task_pk": task_pk,
            "number": attempt,
            "lease": lease,
            "status": AttemptStatus.RUNNING,
            "worker": worker,
            "pid": pid,
            "queued_at": queued_at,
            "started_at": now,
            "heartbeat_at": now,
            "output_tail": "",
            "log_path": None if log_path is None else log_path(plan_id, task),
        },
    )
    log_event(
        session,
        now,
        plan_id,
        task_pk=task_pk,
        attempt=attempt,
        kind="task",
        old=TaskStatus.QUEUED,
        new=TaskStatus.RUNNING,
        detail=f"on {worker}",
    )
    earlier = counted_failures(session, task_pk) if attempt > 1 else 0  # a first attempt has none
    if task.replanning:  # a re-plan attempt: the planner unreachable is retried, whatever the task's own retries
        retries = REPLAN_RETRIES
    return Claim(task_pk, plan_id, key, attempt, lease, retries, agent, earlier, dependants, task.replanning), task


def dropped_delivery(session: Session, task_pk: int, attempt: int) -> str:
    """Why a message for attempt `attempt` of a task could not be claimed, in plain words (it is the result a
    Celery monitor shows for the dropped copy)."""
    task = session.get(TaskRow, task_pk)
    if task is None:
        return f"stale delivery: task #{task_pk} is not in the store; nothing done"
    row = session.scalars(select(AttemptRow).where(AttemptRow.task_pk == task_pk, AttemptRow.number == attempt)).first()
    of_task = f"task {task.key} (plan {task.plan_id})"
    if row is None:
        what = f"stale delivery: {of_task} has no attempt {attempt} to run (it is {task.status})"
    elif row.status is AttemptStatus.RUNNING:
        what = f"duplicate delivery: attempt {attempt} of {of_task} already running on worker {row.worker}"
    else:
        what = f"stale delivery: attempt {attempt} of {of_task} already ended ({row.status})"
    return f"{what}; nothing done"


_OF_LEASE = and_(_OF_TASK, TASKS.c.status == TaskStatus.RUNNING, TASKS.c.lease == bindparam("held_lease"))
_END_RUNNING = (
    update(TASKS)
    .where(_OF_LEASE)
    .values(
        status=bindparam("new_status"),
        lease=None,
        lease_expires_at=None,
        not_before=bindparam("retry_at"),
        finished_at=bindparam("ended_at"),
        error=bindparam("task_error"),
    )
)
# The claim's own attempt row (a later attempt of the task has another lease).
_OWN_ATTEMPT = and_(
    ATTEMPTS.c.task_pk == bindparam("of_task"),
    ATTEMPTS.c.number == bindparam("of_number"),
    ATTEMPTS.c.lease == bindparam("held_lease"),
)
# A result names its log only if its executor wrote one; the path recorded at the claim stays otherwise.
_LOG_PATH = func.coalesce(bindparam("v_log_path", type_=Text), ATTEMPTS.c.log_path)
_FINISH_ATTEMPT = (
    update(ATTEMPTS)
    .where(_OWN_ATTEMPT)
    .values(
        {
            "log_path": _LOG_PATH,
            **{
                column: bindparam(f"v_{column}")
                for column in (
                    "status",
                    "finished_at",
                    "exit_code",
                    "failure_class",
                    "error",
                    "output_tail",
                    "model",
                    "input_tokens",
                    "output_tokens",
                    "cache_creation_tokens",
                    "cache_read_tokens",
                    "cost_usd",
                    "result",
                    "duration_s",
                    "files_changed",
                    "verified",
                )
            },
        }
    )
)
# A result refused because its lease is gone (cancelled, skipped, reaped): its output is still kept, on its own
# attempt only, whose status (and everything else) stays as the cancel, skip or reaper set it.
_KEEP_OUTPUT = update(ATTEMPTS).where(_OWN_ATTEMPT).values(output_tail=bindparam("v_output_tail"), log_path=_LOG_PATH)
# A success decrements its dependants' unmet count; those that reach zero while pending are ready.
_DEPENDENCY_MET = (
    update(TASKS)
    .where(TASKS.c.pk.in_(select(DEPENDENCIES.c.task_pk).where(DEPENDENCIES.c.depends_on_pk == bindparam("of_task"))))
    .values(unmet_deps=TASKS.c.unmet_deps - 1)
    .returning(TASKS.c.unmet_deps, TASKS.c.status)
)


# The running task under this claim's lease, locked, with what a result that re-plans it or grows the plan needs.
_HELD = (
    select(
        TASKS.c.on_failure,
        TASKS.c.replans,
        TASKS.c.max_replans,
        TASKS.c.key,
        TASKS.c.agent,
        TASKS.c.executor,
        TASKS.c.depth,
        TASKS.c.repository,
    )
    .where(_OF_LEASE)
    .with_for_update()
)


def record_result(
    session: Session,
    claim: Claim,
    result: AttemptResult,
    outcome: Outcome,
    now: datetime,
    rules: GrowthRules | None = None,
) -> Recorded | None:
    """running → the outcome's status, only while this claim's lease still holds. None: the result is stale.

    A failed outcome of a task with `on_failure: replan` may become a re-plan (retry_wait, its next attempt asks the
    planner); a re-plan attempt's replacement, checked with `rules`, replaces the task; a succeeded attempt's
    follow-ups, checked with `rules`, are added to the plan. All in this transaction, under the lease."""
    of_claim = {"of_task": claim.task_pk, "of_number": claim.attempt, "held_lease": claim.lease}
    grows = rules is not None and result.succeeded and _carries_tasks(claim, result)
    special = grows or claim.replanning or outcome.task_status is TaskStatus.FAILED
    revision = 0
    settled: Settled | None = None
    proposal: Proposal | None = None
    batch: Batch | None = None
    author: Writer | None = None
    if special:  # rare: read (and lock) the task first, to decide what its outcome becomes
        from orch.store import growth  # lazy: it imports orch.store.revisions, which imports this module

        # The locks in orch.store.plans.lock_plan's order: the plan's row, this task's, then what the new tasks need.
        revision = growth.lock_plan(session, claim.plan_id) if grows else 0
        held = session.execute(_HELD, of_claim).first()
        if held is None:
            return _stale(session, of_claim, result)
        on_failure, replans, max_replans, key, agent, executor, depth, repository = held
        state = ReplanState(on_failure, replans, max_replans)
        author = growth.Writer(key, agent, executor, depth, repository, state)
        settled = settle(outcome, state, claim.replanning, result.failure_class)
        outcome = settled.outcome
        if claim.replanning and result.succeeded:
            if rules is None or result.replacement is None:
                outcome = replacement_refused(["the planner gave no replacement"])
            else:
                proposal = growth.propose_replacement(session, claim, author, result.replacement, rules)
                accepted = proposal.accepted
                outcome = (
                    replaced(proposal.verdict.accepted) if accepted else replacement_refused(proposal.verdict.problems)
                )
                if accepted:
                    growth.lock_shared(session, proposal.locked)
        elif grows and rules is not None and result.followups and _succeeded(outcome.task_status):
            batch = growth.check_written_followups(session, claim, author, result.followups, rules)
            growth.lock_shared(session, batch.locked)
    new_status = outcome.task_status
    error = result.error if not result.succeeded else (outcome.detail if new_status is TaskStatus.FAILED else None)
    ended = {
        "new_status": new_status,
        "retry_at": outcome.not_before,
        "ended_at": None if new_status in (TaskStatus.RETRY_WAIT, TaskStatus.MERGING) else now,
        "task_error": error,
    }
    if not rowcount(session.execute(_END_RUNNING, {**of_claim, **ended})):
        return _stale(session, of_claim, result)
    if settled is not None and (settled.replanning or claim.replanning):
        replanning: dict[str, Any] = {"replanning": settled.replanning, "replans": settled.replans}
        if settled.starts_replan:  # its re-plan attempts' failures are counted afresh
            replanning["retry_floor"] = claim.attempt
        session.execute(update(TASKS).where(TASKS.c.pk == claim.task_pk).values(**replanning))
    newly_ready = 0
    # Looked for even when the claim saw none: a followed task list may have added a dependant since.
    if new_status is TaskStatus.SUCCEEDED:
        newly_ready = dependency_met(session, claim.task_pk)
    _finish_attempt(session, of_claim, result, outcome, error, now)
    log_event(
        session,
        now,
        claim.plan_id,
        task_pk=claim.task_pk,
        attempt=claim.attempt,
        kind="task",
        old=TaskStatus.RUNNING,
        new=new_status,
        detail=outcome.detail or result.error,
    )
    if proposal is not None and author is not None and new_status is TaskStatus.REPLACED:
        newly_ready += growth.apply_replacement(session, claim, author, proposal, revision, now)
    elif batch is not None and author is not None:
        newly_ready += growth.apply_followups(session, claim, author, batch, revision, now)
    return Recorded(newly_ready, new_status if settled is not None else None)


def _succeeded(status: TaskStatus) -> bool:
    return status in (TaskStatus.SUCCEEDED, TaskStatus.MERGING)  # (merging: its work waits in the merge queue)


def _carries_tasks(claim: Claim, result: AttemptResult) -> bool:
    if claim.replanning:
        return result.replacement is not None
    return bool(result.followups and result.followups.strip())


def _stale(session: Session, of_claim: dict[str, Any], result: AttemptResult) -> Recorded | None:
    """A result refused (its lease is gone): its output is kept, nothing else."""
    session.execute(_KEEP_OUTPUT, {**of_claim, "v_output_tail": result.output_tail, "v_log_path": result.log_path})
    return None


def _finish_attempt(
    session: Session,
    of_claim: dict[str, Any],
    result: AttemptResult,
    outcome: Outcome,
    error: str | None,
    now: datetime,
) -> None:
    usage = result.usage
    values = {
        "status": outcome.attempt_status,
        "finished_at": now,
        "exit_code": result.exit_code,
        "failure_class": result.failure_class,
        "error": error,
        "output_tail": result.output_tail,
        "log_path": result.log_path,
        "model": result.model,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_creation_tokens": usage.cache_creation_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cost_usd": result.cost_usd,
        "result": result.result,
        "duration_s": result.duration_s,
        "files_changed": None if result.files_changed is None else list(result.files_changed),
        "verified": result.verified,
    }
    session.execute(_FINISH_ATTEMPT, {**of_claim, **{f"v_{name}": value for name, value in values.items()}})


def dependency_met(session: Session, task_pk: int) -> int:
    """`task_pk` succeeded (it never un-succeeds): each of its dependants has one unmet dependency fewer.
    Returns how many are now ready."""
    rows = session.execute(_DEPENDENCY_MET, {"of_task": task_pk})
    return sum(1 for unmet, status in rows if unmet == 0 and status == TaskStatus.PENDING)


_RENEW = update(TASKS).where(_OF_LEASE).values(lease_expires_at=bindparam("expires"))


def renew_lease(
    session: Session, claim: Claim, now: datetime, lease_seconds: float, usage: Usage, cost: float | None
) -> bool:
    """A heartbeat: push the lease's expiry out and record the attempt's usage so far. False: the lease is gone
    (the attempt was cancelled, skipped or reaped) and the agent must stop."""
    of_claim = {"of_task": claim.task_pk, "held_lease": claim.lease}
    renewed = rowcount(session.execute(_RENEW, {**of_claim, "expires": now + timedelta(seconds=lease_seconds)}))
    if renewed:
        session.execute(
            update(AttemptRow)
            .where(AttemptRow.task_pk == claim.task_pk, AttemptRow.lease == claim.lease)
            .values(
                heartbeat_at=now,
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_creation_tokens=usage.cache_creation_tokens,
                cache_read_tokens=usage.cache_read_tokens,
                cost_usd=cost,
            )
            .execution_options(**no_sync())
        )
    return bool(renewed)


def expired_claims(session: Session, now: datetime, plan_ids: Sequence[str] | None = None) -> list[Claim]:
    """Running attempts whose lease expired by `now` (the database's clock): their workers are gone."""
    query = select(
        TaskRow.pk,
        TaskRow.plan_id,
        TaskRow.key,
        TaskRow.attempt,
        TaskRow.lease,
        TaskRow.retries,
        TaskRow.agent,
        TaskRow.replanning,
    ).where(TaskRow.status == TaskStatus.RUNNING, TaskRow.lease_expires_at < now)
    if plan_ids is not None:
        query = query.where(TaskRow.plan_id.in_(plan_ids))
    claims = []
    for pk, plan_id, key, attempt, lease, retries, agent, replanning in session.execute(query).all():
        retries = REPLAN_RETRIES if replanning else retries
        failures = counted_failures(session, pk)
        claims.append(Claim(pk, plan_id, key, attempt, lease or "", retries, agent, failures, replanning=replanning))
    return claims


def get_attempt(session: Session, claim: Claim) -> AttemptRow | None:
    return session.scalars(
        select(AttemptRow).where(AttemptRow.task_pk == claim.task_pk, AttemptRow.number == claim.attempt)
    ).first()


def reported_usage(attempt: AttemptRow) -> Usage:
    return Usage(attempt.input_tokens, attempt.output_tokens, attempt.cache_creation_tokens, attempt.cache_read_tokens)


def handoffs(session: Session, task_pk: int) -> list[Handoff]:
    """What each dependency's succeeded attempt reported: the handoff into this task's prompt."""
    dep_pks = list(session.scalars(select(DependencyRow.depends_on_pk).where(DependencyRow.task_pk == task_pk)))
    found: list[Handoff] = []
    for dep in session.scalars(select(TaskRow).where(TaskRow.pk.in_(dep_pks)).order_by(TaskRow.seq)):
        attempt = session.scalars(
            select(AttemptRow)
            .where(AttemptRow.task_pk == dep.pk, AttemptRow.status == AttemptStatus.SUCCEEDED)
            .order_by(AttemptRow.number.desc())
            .limit(1)
        ).first()
        result = (attempt.result or attempt.output_tail) if attempt else ""
        files = tuple(attempt.files_changed or ()) if attempt else ()
        found.append(Handoff(dep.key, dep.title, dep.agent, result or "", files))
    return found


def previous_failure(session: Session, task_pk: int, attempt: int) -> PreviousFailure | None:
    """Why attempt `attempt - 1` of a task failed, for the next attempt's prompt."""
    row = session.scalars(
        select(AttemptRow).where(AttemptRow.task_pk == task_pk, AttemptRow.number == attempt - 1)
    ).first()
    if row is None or row.status is not AttemptStatus.FAILED:
        return None
    return PreviousFailure(row.number, row.error or "failed", row.output_tail or "")
