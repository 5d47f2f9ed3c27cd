"""The plan around a task, for its prompt: the plan's name and goal with the context file of the repository the
task works in (one read), and the tasks waiting on it with those running beside it (one read, each list bounded
and counted). Read-only."""

from __future__ import annotations

from sqlalchemy import Select, and_, func, literal, select, union_all
from sqlalchemy.orm import Session

from orch.intake.prompts import GOAL_CHARS, LISTED_TASKS, PlanContext, TaskList, TaskRef
from orch.states import HOLDING_FILES, TERMINAL, TaskStatus
from orch.store.models import DependencyRow, IntegrationRow, PlanRow, TaskRow

RUNNING_BESIDE = sorted(HOLDING_FILES)  # queued, running, merging: work under way beside the task
# Dependants that will still run (not final): a cancelled, upstream_failed or replaced one waits on nothing.
STILL_TO_RUN = sorted(set(TaskStatus) - TERMINAL)
_DEPENDANTS, _RUNNING = "dependants", "running"


def for_task(session: Session, plan_id: str, task_pk: int, repository: str | None) -> PlanContext:
    """What a task's prompt says of its plan. A plan that is gone gives an empty context."""
    header = session.execute(
        select(PlanRow.name, func.substr(PlanRow.description, 1, GOAL_CHARS + 1), IntegrationRow.context)
        .select_from(PlanRow)
        .outerjoin(
            IntegrationRow,
            and_(IntegrationRow.plan_id == PlanRow.id, IntegrationRow.repository == (repository or "")),
        )
        .where(PlanRow.id == plan_id)
    ).first()
    if header is None:
        return PlanContext()
    name, goal, context = header
    lists = _task_lists(session, plan_id, task_pk)
    return PlanContext(
        name=name,
        goal=goal or "",
        dependants=lists[_DEPENDANTS],
        running=lists[_RUNNING],
        repository_context=(context or "") if repository else "",
    )


def _task_lists(session: Session, plan_id: str, task_pk: int) -> dict[str, TaskList]:
    """Its direct dependants that will still run and the plan's other tasks under way, LISTED_TASKS of each in plan
    order, each with its list's full count (a window count, taken before the limit)."""
    dependants = (
        _listed(_DEPENDANTS)
        .join(DependencyRow, DependencyRow.task_pk == TaskRow.pk)
        .where(DependencyRow.depends_on_pk == task_pk, TaskRow.status.in_(STILL_TO_RUN))
    )
    running = _listed(_RUNNING).where(
        TaskRow.plan_id == plan_id, TaskRow.status.in_(RUNNING_BESIDE), TaskRow.pk != task_pk
    )
    # Each part limited in a subquery of its own: SQLite takes no LIMIT on a compound SELECT's parts.
    parts = [part.order_by(TaskRow.seq).limit(LISTED_TASKS).subquery() for part in (dependants, running)]
    both = union_all(*(select(part.c.kind, part.c.seq, part.c.key, part.c.title, part.c.total) for part in parts))
    found: dict[str, tuple[list[TaskRef], int]] = {_DEPENDANTS: ([], 0), _RUNNING: ([], 0)}
    # a union keeps no order of its parts: plan order is restored here (at most twice LISTED_TASKS rows)
    for kind, _seq, key, title, total in sorted(session.execute(both), key=lambda row: row[1]):
        refs, _ = found[kind]
        refs.append(TaskRef(key, title))
        found[kind] = (refs, total)
    return {kind: TaskList(tuple(refs), total) for kind, (refs, total) in found.items()}


def _listed(kind: str) -> Select[str, int, str, str, int]:
    return select(
        literal(kind).label("kind"), TaskRow.seq, TaskRow.key, TaskRow.title, func.count().over().label("total")
    )
