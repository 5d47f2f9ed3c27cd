"""Plans that grow, applied: a succeeded attempt's follow-up tasks and a re-plan attempt's replacement, each a plan
revision written in the transaction that records the attempt's result, under its lease (orch.store.attempts calls
these once its compare-and-set holds; a stale attempt's result is refused, and its tasks with it). What is added and
what is refused is decided by orch.decisions.followups and orch.decisions.replan; this reads their inputs and writes.

Locks, in one order (orch.store.plans.lock_plan): the plan's row first (FOR NO KEY UPDATE: its revision number is
taken, so two results adding tasks to one plan apply one after the other, the second seeing the first's ids), then
the attempt's own task row, then (shared, in primary-key order) every stored task the new tasks wait for and every
dependency of a dependant a replacement rewires, and only then any other task row. A success recorded meanwhile is
so either seen, or waits and decrements the new counts after this commits.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from orch.dag import Dag
from orch.decisions.followups import (
    FOLLOWUP,
    REPLAN,
    Author,
    Candidate,
    Grant,
    Limits,
    PlanShape,
    Verdict,
    check_followups,
    check_replacement,
    parse_tasks,
    quoted,
)
from orch.decisions.replan import ReplanState, Rewiring, inherited, rewire
from orch.executors import ExecutorName
from orch.intake.agents import AgentRegistry, AgentType, agent_network
from orch.intake.plan import ID_PATTERN, ResolvedTask
from orch.intake.plan_schema import PlannedTask
from orch.intake.plan_validation import describe_error, unfit_for_a_branch
from orch.intake.routing import KeywordIndex, route, weakness
from orch.records import Claim, FailedAttempt, PlannedAround, ReplanInputs
from orch.states import PLAN_FINAL, AttemptStatus, PlanStatus, TaskStatus
from orch.store._sql import chunks, no_sync
from orch.store.events import log_event
from orch.store.models import AttemptRow, DependencyRow, PlanRevisionRow, PlanRow, TaskRow
from orch.store.plans import lock_plan as lock_plan_row
from orch.store.plans import plan_dependencies, set_plan_status
from orch.store.revisions import _add, _set_dependencies

MAX_AROUND = 20  # tasks of each kind a re-plan's prompt names
MAX_FAILURE_CHARS = 2000  # of each failed attempt's error and output tail
_ID = re.compile(ID_PATTERN)  # a task id: only these are looked up in the store


@dataclass(frozen=True)
class GrowthRules:
    """What a result's follow-ups and replacements are checked with: the agent types and the limits."""

    registry: AgentRegistry
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class Writer:
    """The task whose attempt wrote tasks (or that a replacement replaces), as its row says."""

    key: str
    agent: str
    executor: str
    depth: int = 0
    repository: str | None = None
    replan: ReplanState = field(default_factory=ReplanState)  # a replacement inherits what is left


@dataclass(frozen=True)
class Proposal:
    """A re-plan's replacement, checked: its tasks and edges when it is accepted, else its problems; and the stored
    tasks to lock (shared) before any task row is touched."""

    verdict: Verdict
    tasks: tuple[ResolvedTask, ...] = ()
    rewiring: Rewiring | None = None
    locked: tuple[int, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.rewiring is not None and not self.verdict.problems


def lock_plan(session: Session, plan_id: str) -> int:
    """Lock the plan's row (tasks are added one result at a time) and return its revision number."""
    revision = lock_plan_row(session, plan_id)
    assert revision is not None  # a task's plan is never deleted while the task runs
    return revision


def grant_of(agent: AgentType, executor: str) -> Grant:
    """What a task of type `agent` run by `executor` is given."""
    return Grant(agent.name, frozenset(agent.secrets), frozenset(agent.env), agent_network(agent.network, executor))


def read_tasks(
    raw: Sequence[Any], writer: Writer, registry: AgentRegistry, what: str
) -> list[tuple[Candidate, ResolvedTask | None]]:
    """Each task as written, read with the plan model's PlannedTask (strict) and routed to its agent type as a plan's
    task is; a command runs on the shell executor. Its candidate for the check, and the task to add if it passes."""
    index = KeywordIndex.build(registry)
    read: list[tuple[Candidate, ResolvedTask | None]] = []
    for position, item in enumerate(raw):
        written_id = item.get("id") if isinstance(item, dict) else None
        key = written_id if isinstance(written_id, str) else None
        label = f"{what} {quoted(key)}" if key is not None else f"{what} [{position}]"
        if not isinstance(item, dict):
            read.append((Candidate(label, None, problem="a task is a mapping with 'id' and 'title'"), None))
            continue
        try:
            spec = PlannedTask.model_validate(item)
        except ValidationError as exc:
            invalid = describe_error(exc.errors(include_url=False)[0], "", PlannedTask.model_fields)
            read.append((Candidate(label, key, problem=invalid), None))
            continue
        task, problem = _resolve(spec.model_dump(), writer, registry, index)
        if task is None:
            read.append((Candidate(label, key, problem=problem), None))
            continue
        grant = grant_of(registry.get(task.agent), task.executor)
        read.append((Candidate(label, task.key, task.after, grant), task))
    return read


def _resolve(
    fields: Mapping[str, Any], writer: Writer, registry: AgentRegistry, index: KeywordIndex
) -> tuple[ResolvedTask | None, str | None]:
    key: str = fields["id"]
    if writer.repository is not None and (why := unfit_for_a_branch(key)):
        return None, f"its id {why}: it names the task's git branch"
    explicit = fields.get("agent")
    if explicit is not None and explicit not in registry:
        return None, f"unknown agent type {quoted(explicit)} (known: {', '.join(registry.names)})"
    decision = route(f"{fields['title']}\n{fields['description']}", registry, explicit=explicit, index=index)
    agent = registry.get(decision.agent)
    estimate = fields.get("estimate")
    task = ResolvedTask(
        key=key,
        title=fields["title"],
        description=fields["description"],
        agent=agent.name,
        route_reason=decision.reason,
        queue=agent.queue,
        executor=ExecutorName.SHELL if fields.get("command") else agent.executor,
        command=fields.get("command"),
        after=tuple(dict.fromkeys(fields["after"])),
        priority=0,
        files=tuple(fields["files"]),
        success=fields["success"],
        timeout=agent.timeout,
        retries=agent.retries,
        seq=0,
        verify=fields.get("verify"),
        routed=not explicit,
        route_weakness=weakness(decision),
        repository=writer.repository,
        estimate=None if estimate is None else {k: v for k, v in estimate.items() if v is not None},
    )
    return task, None


def _author(writer: Writer, registry: AgentRegistry) -> Author:
    return Author(writer.key, grant_of(registry.get_or_default(writer.agent), writer.executor), writer.depth)


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def _names(raw: Sequence[Any]) -> set[str]:
    """The ids a batch of written tasks gives and names as dependencies: all the plan's tasks it can touch. Only
    well-formed ids (ID_PATTERN) reach a query: anything else an agent wrote (a lone surrogate the database cannot
    encode) is the refused task's problem, never the result's."""
    names: set[str] = set()
    for item in raw:
        if not isinstance(item, dict):
            continue
        if _is_id(item.get("id")):
            names.add(item["id"])
        after = item.get("after")
        if isinstance(after, list):
            names.update(dep for dep in after[:10_000] if _is_id(dep))
    return names


def _shape(session: Session, plan_id: str, names: Collection[str]) -> tuple[PlanShape, dict[str, int]]:
    """The statuses and primary keys of the plan's tasks among `names`, and its follow-ups so far."""
    statuses: dict[str, TaskStatus] = {}
    pks: dict[str, int] = {}
    listed = sorted(names)
    for start in range(0, len(listed), 2000):
        rows = session.execute(
            select(TaskRow.key, TaskRow.pk, TaskRow.status).where(
                TaskRow.plan_id == plan_id, TaskRow.key.in_(listed[start : start + 2000])
            )
        )
        for key, pk, status in rows:
            statuses[key], pks[key] = status, pk
    followups = session.scalar(select(func.count()).where(TaskRow.plan_id == plan_id, TaskRow.added_how == FOLLOWUP))
    return PlanShape(statuses, int(followups or 0)), pks


def lock_shared(session: Session, task_pks: Collection[int]) -> None:
    """Lock (shared, in primary-key order) stored tasks that new edges or counts depend on, before any task row but
    the attempt's own is touched: a success recorded meanwhile is either seen or decrements the new counts after this
    commits (as orch.store.revisions does)."""
    for chunk in chunks(sorted(set(task_pks))):
        session.execute(
            select(TaskRow.pk).where(TaskRow.pk.in_(chunk)).order_by(TaskRow.pk).with_for_update(read=True)
        ).all()


@dataclass(frozen=True)
class Batch:
    """A succeeded attempt's follow-ups, checked: the tasks to add, the verdict, and the stored tasks they wait for
    (to lock, shared, before any task row is touched)."""

    verdict: Verdict
    tasks: tuple[ResolvedTask, ...] = ()
    pks: Mapping[str, int] = field(default_factory=dict)
    locked: tuple[int, ...] = ()


def check_written_followups(session: Session, claim: Claim, writer: Writer, text: str, rules: GrowthRules) -> Batch:
    """The follow-ups a succeeded attempt wrote, read and checked against the plan (nothing written yet)."""
    raw, problem = parse_tasks(text)
    if problem:
        return Batch(Verdict(problems=(problem,)))
    read = read_tasks(raw, writer, rules.registry, "follow-up")
    plan, pks = _shape(session, claim.plan_id, _names(raw))
    verdict = check_followups([c for c, _ in read], _author(writer, rules.registry), plan, rules.limits)
    accepted = set(verdict.accepted)
    tasks = tuple(t for _, t in read if t is not None and t.key in accepted)
    locked = tuple(pks[dep] for task in tasks for dep in task.after if dep in pks)
    return Batch(verdict, tasks, pks, locked)


def apply_followups(session: Session, claim: Claim, writer: Writer, batch: Batch, revision: int, now: datetime) -> int:
    """Add a checked batch of follow-ups as the plan's revision `revision + 1` (with the problems of those refused);
    what they wait for is locked already (`lock_shared(batch.locked)`). Returns how many were added."""
    if not batch.tasks and not batch.verdict.problems:
        return 0
    if batch.tasks:
        detail = f"added by task {claim.key} (attempt {claim.attempt}) as a follow-up"
        _insert(session, claim, batch.tasks, dict(batch.pks), now, detail, FOLLOWUP, writer.depth + 1)
    origin = f"follow-ups of task {claim.key} (attempt {claim.attempt})"
    _record_revision(session, claim, batch.verdict, revision, now, origin, FOLLOWUP)
    return len(batch.tasks)


def propose_replacement(
    session: Session, claim: Claim, writer: Writer, replacement: Mapping[str, Any], rules: GrowthRules
) -> Proposal:
    """A re-plan attempt's answer checked against the plan: every task valid (as follow-ups are, the failed task's
    type their author), and no cycle once the failed task's dependants wait for them."""
    written = replacement.get("tasks")
    raw = written if isinstance(written, list) else []
    read = read_tasks(raw, writer, rules.registry, "replacement task")
    plan, _pks = _shape(session, claim.plan_id, _names(raw) | {writer.key})
    verdict = check_replacement([c for c, _ in read], _author(writer, rules.registry), plan, rules.limits)
    if verdict.problems:
        return Proposal(verdict)
    tasks = [t for _, t in read if t is not None]
    dag = Dag.from_edges(plan_dependencies(session, claim.plan_id))
    key_of = _keys(session, claim.plan_id)
    after = tuple(key_of[pk] for pk in dag.dependencies(claim.task_pk))
    dependants = tuple(key_of[pk] for pk in dag.dependants(claim.task_pk))
    descendants = {key_of[pk] for pk in dag.descendants(claim.task_pk)}
    rewiring, problems = rewire(writer.key, after, dependants, descendants, {t.key: t.after for t in tasks})
    if rewiring is None:
        return Proposal(Verdict(problems=tuple(problems)))
    policy = inherited(writer.replan)
    wired = tuple(
        replace(task, after=rewiring.after[task.key], on_failure=policy.on_failure, max_replans=policy.max_replans)
        for task in tasks
    )
    pk_of = {key: pk for pk, key in key_of.items()}
    # What the new tasks wait for, and everything the rewired dependants wait for: their counts are made afresh.
    locked = {pk_of[dep] for task in wired for dep in task.after if dep in pk_of}
    locked.update(dep for pk in dag.dependants(claim.task_pk) for dep in dag.dependencies(pk))
    return Proposal(verdict, wired, rewiring, tuple(sorted(locked)))


def _keys(session: Session, plan_id: str) -> dict[int, str]:
    return {pk: key for pk, key in session.execute(select(TaskRow.pk, TaskRow.key).where(TaskRow.plan_id == plan_id))}


def apply_replacement(
    session: Session, claim: Claim, writer: Writer, proposal: Proposal, revision: int, now: datetime
) -> int:
    """Add an accepted replacement's tasks and wait the failed task's dependants for its sinks; what they and the
    dependants wait for is locked already (`lock_shared(proposal.locked)`). Returns how many tasks were added."""
    rewiring = proposal.rewiring
    assert rewiring is not None
    tasks = proposal.tasks
    names = {dep for task in tasks for dep in task.after} | set(rewiring.dependants)
    _plan, pks = _shape(session, claim.plan_id, names)
    detail = f"added by the re-plan of task {claim.key} (attempt {claim.attempt}), in its place"
    _insert(session, claim, tasks, pks, now, detail, REPLAN, writer.depth)
    dependants = [pks[key] for key in rewiring.dependants]
    for chunk in chunks(dependants):
        session.execute(
            delete(DependencyRow).where(DependencyRow.task_pk.in_(chunk), DependencyRow.depends_on_pk == claim.task_pk)
        )
    rewired = [_Edges(key, rewiring.sinks) for key in rewiring.dependants]
    _set_dependencies(session, rewired, pks)
    origin = f"re-plan of task {claim.key} (attempt {claim.attempt})"
    _record_revision(session, claim, proposal.verdict, revision, now, origin, REPLAN, rewired=rewiring.dependants)
    return len(tasks)


@dataclass(frozen=True)
class _Edges:
    """A task's new edges, as orch.store.revisions' _set_dependencies reads them."""

    key: str
    after: tuple[str, ...]


def _insert(
    session: Session,
    claim: Claim,
    tasks: Sequence[ResolvedTask],
    pks: dict[str, int],
    now: datetime,
    detail: str,
    how: str,
    depth: int,
) -> None:
    if not tasks:
        return
    _add(session, claim.plan_id, tasks, pks, now, detail=detail)
    added = [pks[task.key] for task in tasks]
    for chunk in chunks(added):
        session.execute(
            update(TaskRow)
            .where(TaskRow.pk.in_(chunk))
            .values(added_by=claim.task_pk, added_how=how, depth=depth)
            .execution_options(**no_sync())
        )


def _record_revision(
    session: Session,
    claim: Claim,
    verdict: Verdict,
    revision: int,
    now: datetime,
    origin: str,
    how: str,
    rewired: Sequence[str] = (),
) -> None:
    number = revision + 1
    session.execute(
        update(PlanRow).where(PlanRow.id == claim.plan_id).values(revision=number).execution_options(**no_sync())
    )
    if verdict.accepted:
        status = session.scalar(select(PlanRow.status).where(PlanRow.id == claim.plan_id))
        if status in PLAN_FINAL and status is not PlanStatus.CANCELLED:
            set_plan_status(
                session, claim.plan_id, {status}, PlanStatus.RUNNING, now, f"revision {number}", finished_at=None
            )
    summary = verdict.summary()
    if rewired:
        summary += f"; {', '.join(rewired)} now wait{'s' if len(rewired) == 1 else ''} for it instead"
    session.add(
        PlanRevisionRow(
            plan_id=claim.plan_id,
            number=number,
            at=now,
            origin=origin[:255],
            summary=summary,
            changes={
                "added": list(verdict.accepted),
                "refused": list(verdict.problems),
                "by": claim.key,
                "attempt": claim.attempt,
                "how": how,
                "rewired": list(rewired),
            },
        )
    )
    log_event(
        session,
        now,
        claim.plan_id,
        task_pk=claim.task_pk,
        attempt=claim.attempt,
        kind="revision",
        detail=f"revision {number} ({origin}): {summary}",
    )


# --- what a re-plan attempt tells the planner ------------------------------------------------------------


def _clip(text: str | None) -> str:
    text = text or ""
    return text if len(text) <= MAX_FAILURE_CHARS else f"…{text[-MAX_FAILURE_CHARS:]}"


def replan_inputs(session: Session, task_pk: int) -> ReplanInputs:
    """The task whose retries are spent, its failed attempts and the plan around it (ids and titles)."""
    task = session.get(TaskRow, task_pk)
    assert task is not None
    plan = session.get(PlanRow, task.plan_id)
    assert plan is not None
    failed = session.scalars(
        select(AttemptRow)
        .where(AttemptRow.task_pk == task_pk, AttemptRow.status.in_((AttemptStatus.FAILED, AttemptStatus.LOST)))
        .order_by(AttemptRow.number.desc())
        .limit(5)
    )
    failures = tuple(
        FailedAttempt(a.number, _clip(a.error or a.status), a.failure_class, _clip(a.output_tail))
        for a in reversed(list(failed))
    )
    dag = Dag.from_edges(plan_dependencies(session, task.plan_id))
    deps = list(dag.dependencies(task_pk))
    dependants = list(dag.dependants(task_pk))
    if deps:
        siblings = {s for dep in deps for s in dag.dependants(dep)}
    else:
        roots = select(TaskRow.pk).where(
            TaskRow.plan_id == task.plan_id, ~TaskRow.pk.in_(select(DependencyRow.task_pk))
        )
        siblings = set(session.scalars(roots.limit(MAX_AROUND + 1)))
    siblings.discard(task_pk)
    return ReplanInputs(
        plan_name=plan.name,
        plan_description=plan.description,
        key=task.key,
        title=task.title,
        description=task.description,
        success=task.success,
        agent=task.agent,
        command=task.command,
        verify=task.verify,
        files=tuple(task.files or ()),
        failures=failures,
        dependencies=_around(session, deps),
        dependants=_around(session, dependants),
        siblings=_around(session, sorted(siblings)),
    )


def _around(session: Session, pks: Sequence[int]) -> tuple[PlannedAround, ...]:
    if not pks:
        return ()
    rows = session.execute(
        select(TaskRow.key, TaskRow.title, TaskRow.status)
        .where(TaskRow.pk.in_(list(pks)[:MAX_AROUND]))
        .order_by(TaskRow.seq)
    )
    return tuple(PlannedAround(key, title, str(status)) for key, title, status in rows)
