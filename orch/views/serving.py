"""Whether anything serves a plan, said where its user looks (`orch status`, `watch`, `submit`): a plan waits for
ever, in silence, when no beat ticks its store or no worker reads its tasks' queue. Read-only: the caller asks the
broker which queues have readers (orch.services.check.read_queue_readers) and hands the answer in."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from orch.decisions.serving import TROUBLESHOOTING, Serving, coarse_duration
from orch.states import PLAN_FINAL, PLAN_HELD, PlanStatus
from orch.views.format import counted


def _age(since: datetime, now: datetime) -> str:
    return coarse_duration((now - since).total_seconds())


def serving_notes(
    status: PlanStatus,
    created_at: datetime,
    pending: int,
    served: Serving | None,
    queued_since: Mapping[str, datetime],
    readers: Mapping[str, list[str]] | None,
    now: datetime,
) -> list[str]:
    """One line per reason the plan cannot move: no beat to dispatch its pending tasks (`served`: None when not
    asked), a queue of its queued tasks nobody reads (`readers`: None when the broker did not answer)."""
    if status in PLAN_FINAL or status in PLAN_HELD:
        return []
    notes = []
    if pending and served is not None and not served.alive:
        notes.append(f"pending {_age(created_at, now)} — {served.describe()}; start one: {TROUBLESHOOTING}")
    if queued_since and readers is None:
        queues = ", ".join(sorted(queued_since))
        notes.append(f"queued on {queues}: the broker did not answer, so whether a worker reads it is unknown")
    elif queued_since and readers is not None:
        for queue, since in sorted(queued_since.items()):
            if not readers.get(queue):
                notes.append(f"queued {_age(since, now)} — no worker reads {queue}; start one: {TROUBLESHOOTING}")
    return notes


def unread_queues(open_by_queue: Mapping[str, int], readers: Mapping[str, list[str]] | None) -> list[str]:
    """`orch submit`'s word on the plan's queues: those no worker reads (with how many of its tasks use them)."""
    if readers is None:
        return ["the broker did not answer: whether workers read this plan's queues is unknown"]
    return [
        f"no worker reads {queue} ({counted(count, 'task')} of this plan); start one: {TROUBLESHOOTING}"
        for queue, count in sorted(open_by_queue.items())
        if not readers.get(queue)
    ]
