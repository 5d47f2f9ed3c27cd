"""Worktrees and the merge queue in the store: a plan's integration branches (one per repository, each with its merge
lock), what a worktree attempt records, the merge requests, and the compare-and-sets that land one (its task
succeeds only then) or turn it down (a gate failed, a conflict) — each under the merge lock's token, so a merger
whose lock expired records nothing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from orch.decisions.retry import Outcome
from orch.intake.plan import Repository
from orch.records import Claim, Integration, MergeRequest, Recorded
from orch.states import MERGE_OPEN, TERMINAL, AttemptStatus, MergePhase, PlanStatus, TaskStatus
from orch.store._sql import rowcount
from orch.store.attempts import dependency_met
from orch.store.events import log_event
from orch.store.models import AttemptRow, DependencyRow, IntegrationRow, MergeRequestRow, PlanRow, TaskRow

INTEGRATION_PREFIX = "orch/"
MAX_CONFLICT_TEXT = 8_000  # of the conflict's details in a resolution task's prompt
RESOLVE_SUFFIX = ".resolve-"  # a conflict-resolution task's id: <task>.resolve-<request>; plans may not use it


def integration_branch(plan_id: str) -> str:
    return f"{INTEGRATION_PREFIX}{plan_id}"


def attempt_branch(plan_id: str, key: str, attempt: int) -> str:
    return f"orch-work/{plan_id}/{key}/{attempt}"


def archive_ref(plan_id: str, key: str, attempt: int) -> str:
    return f"refs/orch/archive/{plan_id}/{key}/{attempt}"


# --- at submit -------------------------------------------------------------------------------------------


def create_integrations(
    session: Session, plan_id: str, repositories: Sequence[Repository], base_commits: Mapping[str, str]
) -> None:
    """One integration branch per repository of a new plan, starting at its base's commit (`base_commits`, by
    repository name, as the submitting command read them from the remote)."""
    for repository in repositories:
        commit = base_commits[repository.name]
        session.add(
            IntegrationRow(
                plan_id=plan_id,
                repository=repository.name,
                url=repository.url,
                base=repository.base,
                base_commit=commit,
                branch=integration_branch(plan_id),
                head=commit,
                land=repository.land,
                gates=list(repository.gates),
                gate_timeout=repository.gate_timeout,
                on_conflict=repository.on_conflict,
                relock=[list(pair) for pair in repository.relock],
                context=repository.context,
            )
        )


# --- reading ---------------------------------------------------------------------------------------------


def _integration(row: IntegrationRow) -> Integration:
    return Integration(
        pk=row.pk,
        plan_id=row.plan_id,
        repository=row.repository,
        url=row.url,
        base=row.base,
        base_commit=row.base_commit,
        branch=row.branch,
        head=row.head,
        land=row.land,
        gates=tuple(row.gates or ()),
        gate_timeout=row.gate_timeout,
        on_conflict=row.on_conflict,
        relock=tuple((str(pattern), str(command)) for pattern, command in row.relock or ()),
        context=row.context or "",
    )


def get_integration(session: Session, integration_pk: int) -> Integration | None:
    row = session.get(IntegrationRow, integration_pk)
    return None if row is None else _integration(row)


def find_integration(session: Session, plan_id: str, repository: str) -> Integration | None:
    row = session.scalars(
        select(IntegrationRow).where(IntegrationRow.plan_id == plan_id, IntegrationRow.repository == repository)
    ).first()
    return None if row is None else _integration(row)


def plan_integrations(session: Session, plan_id: str) -> list[Integration]:
    rows = session.scalars(select(IntegrationRow).where(IntegrationRow.plan_id == plan_id).order_by(IntegrationRow.pk))
    return [_integration(row) for row in rows]


def get_request(session: Session, request_pk: int) -> MergeRequestRow | None:
    return session.get(MergeRequestRow, request_pk)


def waiting_requests(session: Session, integration_pk: int) -> list[MergeRequest]:
    """The integration's open merge requests (queued, or begun by a merger), with their tasks' direct
    dependencies: the merge order's input."""
    rows = session.execute(
        select(MergeRequestRow, TaskRow.key, TaskRow.priority, TaskRow.resolves)
        .join(TaskRow, TaskRow.pk == MergeRequestRow.task_pk)
        .where(MergeRequestRow.integration_pk == integration_pk, MergeRequestRow.phase.in_(sorted(MERGE_OPEN)))
    ).all()
    task_pks = [row[0].task_pk for row in rows]
    after: dict[int, list[int]] = {pk: [] for pk in task_pks}
    if task_pks:
        edges = session.execute(
            select(DependencyRow.task_pk, DependencyRow.depends_on_pk).where(DependencyRow.task_pk.in_(task_pks))
        )
        for task_pk, depends_on in edges:
            after[task_pk].append(depends_on)
    return [
        MergeRequest(
            pk=request.pk,
            task_pk=request.task_pk,
            key=key,
            attempt=request.attempt,
            phase=request.phase,
            base_commit=request.base_commit,
            head_commit=request.head_commit,
            enqueued_at=request.enqueued_at,
            priority=priority,
            after=tuple(after[request.task_pk]),
            resolves=resolves,
            tries=request.tries,
        )
        for request, key, priority, resolves in rows
    ]


def integrations_waiting(session: Session, now: datetime, plan_ids: Sequence[str] | None = None) -> list[int]:
    """Integrations with open merge requests and no live merge lock: nobody is merging them (their merge message
    was lost, or their merger died). The beat sends them a merger."""
    query = (
        select(MergeRequestRow.integration_pk)
        .join(IntegrationRow, IntegrationRow.pk == MergeRequestRow.integration_pk)
        .where(
            MergeRequestRow.phase.in_(sorted(MERGE_OPEN)),
            or_(IntegrationRow.lease.is_(None), IntegrationRow.lease_expires_at < now),
        )
        .distinct()
    )
    if plan_ids is not None:
        query = query.where(IntegrationRow.plan_id.in_(plan_ids))
    return list(session.scalars(query))


def merge_queue_of(session: Session, integration_pk: int) -> str:
    """The Celery queue a merger of this integration is sent on: that of its oldest open request's task (a queue
    some worker of the plan's repository consumes)."""
    queue = session.scalars(
        select(TaskRow.queue)
        .join(MergeRequestRow, MergeRequestRow.task_pk == TaskRow.pk)
        .where(MergeRequestRow.integration_pk == integration_pk, MergeRequestRow.phase.in_(sorted(MERGE_OPEN)))
        .order_by(MergeRequestRow.enqueued_at, MergeRequestRow.pk)
        .limit(1)
    ).first()
    if queue is not None:
        return queue
    integration = session.get(IntegrationRow, integration_pk)  # nothing open: the queue of one of its tasks
    fallback = None
    if integration is not None:
        fallback = session.scalars(
            select(TaskRow.queue)
            .where(TaskRow.plan_id == integration.plan_id, TaskRow.repository == integration.repository)
            .limit(1)
        ).first()
    return fallback or "celery"


def integrations_to_land(session: Session, plan_ids: Sequence[str] | None = None) -> list[int]:
    """Integrations of succeeded plans not landed yet: the plan's last task did not go through the merge queue (a
    `merge: false` review, a shared task, a skip), or the merger that finished it died before landing."""
    query = (
        select(IntegrationRow.pk)
        .join(PlanRow, PlanRow.id == IntegrationRow.plan_id)
        .where(PlanRow.status == PlanStatus.SUCCEEDED, IntegrationRow.landed.is_(None))
    )
    if plan_ids is not None:
        query = query.where(IntegrationRow.plan_id.in_(plan_ids))
    return list(session.scalars(query))


# --- a worktree attempt ----------------------------------------------------------------------------------


def holds_lease(session: Session, claim: Claim) -> bool:
    """Whether the attempt still holds its task's lease: orch commits, pushes and enqueues its work only then."""
    lease = session.scalar(
        select(TaskRow.lease).where(TaskRow.pk == claim.task_pk, TaskRow.status == TaskStatus.RUNNING)
    )
    return lease is not None and lease == claim.lease


def record_worktree(
    session: Session, claim: Claim, branch: str, base_commit: str, worktree: str, head_commit: str | None = None
) -> bool:
    """The attempt's branch, base commit and worktree (and head, once committed), on its own attempt row, only
    while it holds its lease."""
    if not holds_lease(session, claim):
        return False
    values: dict[str, Any] = {"branch": branch, "base_commit": base_commit, "worktree": worktree}
    if head_commit is not None:
        values["head_commit"] = head_commit
    done = session.execute(
        update(AttemptRow)
        .where(AttemptRow.task_pk == claim.task_pk, AttemptRow.number == claim.attempt, AttemptRow.lease == claim.lease)
        .values(**values)
    )
    return bool(rowcount(done))


def enqueue_merge(
    session: Session, claim: Claim, base_commit: str, head_commit: str, now: datetime
) -> tuple[int, str] | None:
    """A merge request for the attempt's work, in the transaction that recorded the attempt (running → merging):
    its integration's pk and the queue its merger is sent on. None when the task has no integration."""
    task = session.get(TaskRow, claim.task_pk)
    if task is None or task.repository is None:
        return None
    integration = find_integration(session, claim.plan_id, task.repository)
    if integration is None:
        return None
    request = MergeRequestRow(
        plan_id=claim.plan_id,
        integration_pk=integration.pk,
        task_pk=claim.task_pk,
        attempt=claim.attempt,
        phase=MergePhase.QUEUED,
        base_commit=base_commit,
        head_commit=head_commit,
        enqueued_at=now,
    )
    session.add(request)
    session.flush()
    session.execute(
        update(AttemptRow)
        .where(AttemptRow.task_pk == claim.task_pk, AttemptRow.number == claim.attempt)
        .values(head_commit=head_commit, base_commit=base_commit)
    )
    log_event(
        session, now, claim.plan_id, task_pk=claim.task_pk, attempt=claim.attempt, kind="merge",
        new=MergePhase.QUEUED, detail=f"merge request #{request.pk}: {head_commit[:12]} onto {integration.branch}",
    )  # fmt: skip
    return integration.pk, task.queue


# --- the merge lock --------------------------------------------------------------------------------------


def claim_merge_lock(session: Session, integration_pk: int, lease: str, seconds: float, now: datetime) -> bool:
    """Take the integration's merge lock if it is free or its holder's lease expired: a compare-and-set."""
    done = session.execute(
        update(IntegrationRow)
        .where(
            IntegrationRow.pk == integration_pk,
            or_(IntegrationRow.lease.is_(None), IntegrationRow.lease_expires_at < now),
        )
        .values(lease=lease, lease_expires_at=now + timedelta(seconds=seconds))
    )
    return bool(rowcount(done))


def renew_merge_lock(session: Session, integration_pk: int, lease: str, seconds: float, now: datetime) -> bool:
    done = session.execute(
        update(IntegrationRow)
        .where(IntegrationRow.pk == integration_pk, IntegrationRow.lease == lease)
        .values(lease_expires_at=now + timedelta(seconds=seconds))
    )
    return bool(rowcount(done))


def release_merge_lock(session: Session, integration_pk: int, lease: str) -> None:
    session.execute(
        update(IntegrationRow)
        .where(IntegrationRow.pk == integration_pk, IntegrationRow.lease == lease)
        .values(lease=None, lease_expires_at=None)
    )


def _holds_lock(session: Session, integration_pk: int, lease: str) -> bool:
    """Whether the merge lock is ours, checked by a no-op update of its row: the row stays locked for the rest of
    the transaction, so a merger whose lease just expired cannot record past the one that took the lock over."""
    done = session.execute(
        update(IntegrationRow)
        .where(IntegrationRow.pk == integration_pk, IntegrationRow.lease == lease)
        .values(lease=IntegrationRow.lease)
    )
    return bool(rowcount(done))


# --- a merge's steps -------------------------------------------------------------------------------------


def begin_merge(
    session: Session, request: MergeRequest, integration_pk: int, lease: str, now: datetime
) -> Literal["begun", "cancelled", "lock_lost"]:
    """queued (or begun by a merger whose lock expired) → merging, under our lock. A request whose task no longer
    waits for it (cancelled, skipped, retried) is cancelled instead."""
    if not _holds_lock(session, integration_pk, lease):
        return "lock_lost"
    task = session.get(TaskRow, request.task_pk)
    if task is None or task.status is not TaskStatus.MERGING or task.attempt != request.attempt:
        shown = "gone" if task is None else f"{task.status} at attempt {task.attempt}"
        _close(session, request.pk, MergePhase.CANCELLED, now, f"its task no longer waits for it ({shown})")
        return "cancelled"
    session.execute(
        update(MergeRequestRow)
        .where(MergeRequestRow.pk == request.pk, MergeRequestRow.phase.in_(sorted(MERGE_OPEN)))
        .values(phase=MergePhase.MERGING, started_at=now, tries=MergeRequestRow.tries + 1)
    )
    return "begun"


def requeue(session: Session, integration_pk: int, lease: str, request_pk: int, why: str) -> None:
    """A merge that could not be done now (the remote unreachable, races lost) waits for a later merger."""
    if not _holds_lock(session, integration_pk, lease):
        return
    session.execute(
        update(MergeRequestRow)
        .where(MergeRequestRow.pk == request_pk, MergeRequestRow.phase == MergePhase.MERGING)
        .values(phase=MergePhase.QUEUED, detail=f"waiting: {why}"[:2000])
    )


def withdraw(session: Session, integration_pk: int, lease: str, request_pk: int, now: datetime, why: str) -> None:
    """A request whose task stopped waiting for it while it merged: cancelled, nothing of it pushed."""
    if _holds_lock(session, integration_pk, lease):
        _close(session, request_pk, MergePhase.CANCELLED, now, why)


def landed_state(session: Session, integration_pk: int) -> str | None:
    return session.scalar(select(IntegrationRow.landed).where(IntegrationRow.pk == integration_pk))


def land_detail(session: Session, integration_pk: int) -> str | None:
    return session.scalar(select(IntegrationRow.land_detail).where(IntegrationRow.pk == integration_pk))


def _close(
    session: Session, request_pk: int, phase: MergePhase, now: datetime, detail: str | None, **values: Any
) -> bool:
    done = session.execute(
        update(MergeRequestRow)
        .where(MergeRequestRow.pk == request_pk, MergeRequestRow.phase.in_(sorted(MERGE_OPEN)))
        .values(phase=phase, finished_at=now, detail=detail, **values)
    )
    return bool(rowcount(done))


def record_merged(
    session: Session, integration_pk: int, lease: str, request: MergeRequest, merged_commit: str, now: datetime
) -> Recorded | None:
    """The request's work is on the integration branch at `merged_commit`: the store's head moves there, the request
    is merged and its task succeeds (its dependants may start), as does the task whose conflict it resolved. None:
    the merge lock is no longer ours (nothing recorded; whoever holds it finds the work merged and records it)."""
    moved = session.execute(
        update(IntegrationRow)
        .where(IntegrationRow.pk == integration_pk, IntegrationRow.lease == lease)
        .values(head=merged_commit)
    )
    if not rowcount(moved):
        return None
    _close(session, request.pk, MergePhase.MERGED, now, None, merged_commit=merged_commit)
    newly_ready = _task_merged(session, request.task_pk, request.attempt, merged_commit, now)
    if request.resolves is not None:
        newly_ready += _resolution_merged(session, request, merged_commit, now)
    return Recorded(newly_ready)


def _task_merged(session: Session, task_pk: int, attempt: int | None, merged_commit: str, now: datetime) -> int:
    """merging → succeeded; returns how many of its dependants are now ready."""
    query = update(TaskRow).where(TaskRow.pk == task_pk, TaskRow.status == TaskStatus.MERGING)
    if attempt is not None:
        query = query.where(TaskRow.attempt == attempt)
    done = session.execute(
        query.values(status=TaskStatus.SUCCEEDED, finished_at=now, error=None).returning(TaskRow.plan_id)
    ).first()
    if done is None:
        return 0
    _log_merge_end(
        session, now, done.plan_id, task_pk, attempt, TaskStatus.SUCCEEDED, f"merged as {merged_commit[:12]}"
    )
    return dependency_met(session, task_pk)


def _log_merge_end(
    session: Session, now: datetime, plan_id: str, task_pk: int, attempt: int | None, new: TaskStatus, detail: str
) -> None:
    log_event(session, now, plan_id, task_pk=task_pk, attempt=attempt, old=TaskStatus.MERGING, new=new, detail=detail)


def _resolution_merged(session: Session, request: MergeRequest, merged_commit: str, now: datetime) -> int:
    """The conflicted request a resolution task's merge landed: merged too, and its task succeeds — and so on up,
    when that task was itself resolving another's conflict (a resolution's own merge can conflict)."""
    newly_ready = 0
    resolves, resolver = request.resolves, request.key
    while resolves is not None:
        original = session.get(MergeRequestRow, resolves)
        if original is None:
            break
        waiting = session.get(TaskRow, original.task_pk)
        if waiting is None or waiting.status is not TaskStatus.MERGING or waiting.attempt != original.attempt:
            break  # it no longer waits for this work (cancelled, skipped, retried, settled as failed)
        session.execute(
            update(MergeRequestRow)
            .where(MergeRequestRow.pk == original.pk, MergeRequestRow.phase == MergePhase.CONFLICTED)
            .values(phase=MergePhase.MERGED, merged_commit=merged_commit, detail=f"resolved by {resolver}")
        )
        newly_ready += _task_merged(session, original.task_pk, original.attempt, merged_commit, now)
        task = session.get(TaskRow, original.task_pk)
        resolves, resolver = (task.resolves, task.key) if task is not None else (None, resolver)
    return newly_ready


def record_turned_down(
    session: Session,
    integration_pk: int,
    lease: str,
    request: MergeRequest,
    phase: MergePhase,
    outcome: Outcome,
    failure_class: str,
    detail: str,
    now: datetime,
    conflicts: Sequence[str] = (),
) -> bool:
    """A gate failed on the merged result, or the work conflicts (on_conflict: fail): the request closes, its
    attempt fails with `failure_class` (its retry budget counts it) and its task takes the outcome (retry_wait or
    failed). False when the lock is no longer ours."""
    if not _holds_lock(session, integration_pk, lease):
        return False
    _close(session, request.pk, phase, now, detail, conflicts=list(conflicts) or None)
    _fail_attempt(session, request.task_pk, request.attempt, failure_class, detail, now)
    _task_turned_down(session, request.task_pk, request.attempt, outcome, detail, now)
    return True


def _fail_attempt(session: Session, task_pk: int, attempt: int, failure_class: str, detail: str, now: datetime) -> None:
    session.execute(
        update(AttemptRow)
        .where(AttemptRow.task_pk == task_pk, AttemptRow.number == attempt)
        .values(status=AttemptStatus.FAILED, failure_class=failure_class, error=detail, finished_at=now)
    )


def _task_turned_down(
    session: Session, task_pk: int, attempt: int | None, outcome: Outcome, detail: str, now: datetime
) -> bool:
    query = update(TaskRow).where(TaskRow.pk == task_pk, TaskRow.status == TaskStatus.MERGING)
    if attempt is not None:
        query = query.where(TaskRow.attempt == attempt)
    final = outcome.task_status is not TaskStatus.RETRY_WAIT
    done = session.execute(
        query.values(
            status=outcome.task_status,
            not_before=outcome.not_before,
            finished_at=now if final else None,
            error=detail,
        ).returning(TaskRow.plan_id)
    ).first()
    if done is None:
        return False
    _log_merge_end(session, now, done.plan_id, task_pk, attempt, outcome.task_status, outcome.detail or detail)
    return True


def add_resolution_task(
    session: Session,
    integration_pk: int,
    lease: str,
    request: MergeRequest,
    conflicts: Sequence[str],
    details: str,
    now: datetime,
) -> str | None:
    """A conflict-resolution task for the request (its task keeps waiting, merging): after the work it conflicts
    with (already on the integration branch), with the conflicted paths as its files, the conflict in its prompt,
    the conflicting task's agent type, retries and budget. Returns its key; None when the lock is no longer ours."""
    if not _holds_lock(session, integration_pk, lease):
        return None
    task = session.get(TaskRow, request.task_pk)
    if task is None:
        return None
    key = f"{task.key[:100].rstrip('.')}{RESOLVE_SUFFIX}{request.pk}"
    seq = int(session.scalar(select(func.max(TaskRow.seq)).where(TaskRow.plan_id == task.plan_id)) or 0) + 1
    resolver = TaskRow(
        plan_id=task.plan_id,
        key=key,
        seq=seq,
        title=f"Resolve the merge conflict of {task.key}"[:500],
        description=resolution_prompt(task.key, task.title, request, conflicts, details),
        agent=task.agent,
        route_reason=f"resolves the conflict of {task.key}'s merge (its agent type)",
        queue=task.queue,
        executor=task.executor,
        command=None,
        priority=task.priority,
        files=list(conflicts),
        success="No conflict markers remain and both sides' intent is kept.",
        timeout=task.timeout,
        retries=task.retries,
        status=TaskStatus.PENDING,
        unmet_deps=0,
        verify=task.verify,
        scope="loose",
        budget_usd=task.budget_usd,
        budget_tokens=task.budget_tokens,
        repository=task.repository,
        merge=True,
        resolves=request.pk,
    )
    session.add(resolver)
    session.flush()
    shown = ", ".join(conflicts[:20])
    _close(session, request.pk, MergePhase.CONFLICTED, now, f"conflicts in {shown}; resolving: {key}",
           conflicts=list(conflicts), resolved_by=resolver.pk)  # fmt: skip
    # a merge event (a task's log starts pending; this one's row is new): the conflict, and who resolves it
    log_event(session, now, task.plan_id, task_pk=task.pk, attempt=request.attempt, kind="merge",
              new=MergePhase.CONFLICTED, detail=f"conflicts in {shown}: task {key} added to resolve them")  # fmt: skip
    return key


def resolution_prompt(key: str, title: str, request: MergeRequest, conflicts: Sequence[str], details: str) -> str:
    listed = "\n".join(f"- {path}" for path in conflicts)
    return (
        f"The work of task {key} ({title!r}, attempt {request.attempt}, commit {request.head_commit[:12]}) conflicts "
        f"with work already merged on the integration branch. Your worktree holds the integration branch with "
        f"{key}'s commit being merged into it: the conflicted files below contain conflict markers "
        f"(<<<<<<<, =======, >>>>>>>). Resolve each conflict so that both sides' intent is kept, remove every "
        f"marker, and leave the files in place: orch commits the merge for you (do not run git commit).\n\n"
        f"Conflicted files:\n{listed}\n\nWhat git reported:\n{details[:MAX_CONFLICT_TEXT]}"
    )


def settle_abandoned_conflicts(session: Session, plan_id: str, now: datetime) -> int:
    """Tasks waiting (merging) on a resolution task that ended without landing their work (it failed, was
    cancelled, or was skipped): they fail with merge_conflict, as `on_conflict: fail` would have. How many."""
    rows = session.execute(
        select(MergeRequestRow.task_pk, MergeRequestRow.attempt, MergeRequestRow.detail, TaskRow.key)
        .join(TaskRow, TaskRow.pk == MergeRequestRow.resolved_by)
        .where(
            MergeRequestRow.plan_id == plan_id,
            MergeRequestRow.phase == MergePhase.CONFLICTED,
            TaskRow.status.in_(sorted(TERMINAL)),  # had it landed, the request would be merged, not conflicted
        )
    ).all()
    settled = 0
    for task_pk, attempt, detail, resolver in rows:
        why = f"merge conflict not resolved: {resolver} did not land it ({detail or 'conflict'})"
        outcome = Outcome(TaskStatus.FAILED, AttemptStatus.FAILED, None, why)
        if _task_turned_down(session, task_pk, attempt, outcome, why, now):
            _fail_attempt(session, task_pk, attempt, "merge_conflict", why, now)
            settled += 1
    return settled


def record_landing(session: Session, integration_pk: int, landed: str, detail: str) -> None:
    session.execute(
        update(IntegrationRow).where(IntegrationRow.pk == integration_pk).values(landed=landed, land_detail=detail)
    )


def open_request_of(session: Session, task_pk: int) -> MergeRequestRow | None:
    return session.scalars(
        select(MergeRequestRow).where(MergeRequestRow.task_pk == task_pk).order_by(MergeRequestRow.pk.desc()).limit(1)
    ).first()


def plan_requests(session: Session, plan_id: str) -> list[tuple[MergeRequestRow, str]]:
    """Every merge request of a plan with its task's key, oldest first (`orch mq`, the report)."""
    rows = session.execute(
        select(MergeRequestRow, TaskRow.key)
        .join(TaskRow, TaskRow.pk == MergeRequestRow.task_pk)
        .where(MergeRequestRow.plan_id == plan_id)
        .order_by(MergeRequestRow.enqueued_at, MergeRequestRow.pk)
    ).all()
    return [(row, key) for row, key in rows]


@dataclass(frozen=True)
class TaskGit:
    """A worktree task's git state for the views: its latest attempt's branch and commits, its latest merge
    request."""

    branch: str | None
    base_commit: str | None
    head_commit: str | None
    phase: str | None
    merged_commit: str | None
    merged_at: datetime | None
    conflicts: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "branch": self.branch,
            "base_commit": self.base_commit,
            "head_commit": self.head_commit,
            "merge_phase": self.phase,
            "merged_commit": self.merged_commit,
            "merged_at": None if self.merged_at is None else self.merged_at.isoformat(),
            "conflicts": list(self.conflicts),
        }


def task_git_states(session: Session, plan_id: str) -> dict[int, TaskGit]:
    """Per worktree task of the plan (by pk): its git state. Two reads, of the plan's worktree attempts and merge
    requests; empty for a plan without repositories."""
    attempts: dict[int, tuple[str | None, str | None, str | None]] = {}
    rows = session.execute(
        select(AttemptRow.task_pk, AttemptRow.branch, AttemptRow.base_commit, AttemptRow.head_commit)
        .join(TaskRow, TaskRow.pk == AttemptRow.task_pk)
        .where(TaskRow.plan_id == plan_id, AttemptRow.branch.is_not(None))
        .order_by(AttemptRow.number)
    )
    for task_pk, branch, base, head in rows:
        attempts[task_pk] = (branch, base, head)  # the latest attempt's, by the order
    requests: dict[int, MergeRequestRow] = {}
    for row in session.scalars(
        select(MergeRequestRow).where(MergeRequestRow.plan_id == plan_id).order_by(MergeRequestRow.pk)
    ):
        requests[row.task_pk] = row
    states = {}
    for task_pk in attempts.keys() | requests.keys():
        branch, base, head = attempts.get(task_pk, (None, None, None))
        latest = requests.get(task_pk)
        if latest is None:
            states[task_pk] = TaskGit(branch, base, head, None, None, None, ())
            continue
        merged_at = latest.finished_at if latest.phase == MergePhase.MERGED else None
        conflicts = tuple(latest.conflicts or ())
        states[task_pk] = TaskGit(branch, base, head, latest.phase, latest.merged_commit, merged_at, conflicts)
    return states
