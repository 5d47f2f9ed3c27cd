"""What agent types took, by the store's history (read-only): per agent type and executor, the medians of its last
finished attempts' tokens, cost and duration. `orch plan` and `orch validate --estimate` estimate a plan with them.

Keyed by the executor too: a task with a `command:` of a type (shell, no tokens, seconds) says nothing of what an
agent task of that type takes."""

from __future__ import annotations

import statistics
from collections.abc import Collection, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from orch.decisions.estimate import AgentHistory, HistoryKey
from orch.states import AttemptStatus, TaskStatus
from orch.store.models import AttemptRow, TaskRow

DEFAULT_LAST = 50  # the attempts per type a median is taken over: recent enough to follow a changed model or prompt

_TOKENS = (
    AttemptRow.input_tokens + AttemptRow.output_tokens + AttemptRow.cache_creation_tokens + AttemptRow.cache_read_tokens
)


def _median(values: Sequence[float | None]) -> float | None:
    known = [float(value) for value in values if value is not None]
    return statistics.median(known) if known else None


def agent_history(session: Session, agent: str, executor: str, last: int = DEFAULT_LAST) -> AgentHistory | None:
    """Medians over the last `last` succeeded attempts (newest first by their end) of the type's tasks run by
    `executor`; None when there are none."""
    rows = session.execute(
        select(_TOKENS, AttemptRow.cost_usd, AttemptRow.duration_s)
        .join(TaskRow, TaskRow.pk == AttemptRow.task_pk)
        .where(
            # the task's status too: ix_tasks_status_agent finds the type's tasks (a succeeded attempt's task
            # succeeded, unless an operator ran it again since)
            TaskRow.status == TaskStatus.SUCCEEDED,
            TaskRow.agent == agent,
            TaskRow.executor == executor,
            AttemptRow.status == AttemptStatus.SUCCEEDED,
            AttemptRow.finished_at.is_not(None),
        )
        .order_by(AttemptRow.finished_at.desc(), AttemptRow.pk.desc())
        .limit(last)
    ).all()
    if not rows:
        return None
    return AgentHistory(
        attempts=len(rows),
        tokens=_median([tokens for tokens, _, _ in rows]),
        usd=_median([cost for _, cost, _ in rows]),
        seconds=_median([duration for _, _, duration in rows]),
    )


def agent_histories(
    session: Session, keys: Collection[HistoryKey], last: int = DEFAULT_LAST
) -> dict[HistoryKey, AgentHistory]:
    """`agent_history` of each (agent type, executor) of `keys` that has any."""
    found = {key: agent_history(session, *key, last=last) for key in sorted(set(keys))}
    return {key: history for key, history in found.items() if history is not None}
