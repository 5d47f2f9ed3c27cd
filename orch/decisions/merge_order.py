"""The merge queue's order, a pure decision: which waiting merge request an integration's merger takes next.

Dependencies first (a request whose task depends on another waiting request's task waits for it), then the oldest
(first queued), so no request starves behind newer ones whatever their priority; a request a crashed merger had
begun comes before any that has not (its merge is redone, and its compare-and-swap keeps it from applying twice).
"""

from __future__ import annotations

from collections.abc import Sequence

from orch.records import MergeRequest
from orch.states import MergePhase


def merge_order(requests: Sequence[MergeRequest]) -> list[MergeRequest]:
    """`requests` (queued, or merging under a lock that expired) in the order they are to merge."""
    waiting = {request.task_pk for request in requests}
    remaining = sorted(requests, key=_age)
    ordered: list[MergeRequest] = []
    placed: set[int] = set()
    while remaining:
        ready = next(
            (r for r in remaining if all(dep in placed or dep not in waiting for dep in r.after)),
            remaining[0],  # a cycle cannot happen in a plan; if the store held one, age breaks it
        )
        ordered.append(ready)
        placed.add(ready.task_pk)
        remaining.remove(ready)
    return ordered


def next_merge(requests: Sequence[MergeRequest]) -> MergeRequest | None:
    """The request to merge next, or None when none waits."""
    ordered = merge_order(requests)
    return ordered[0] if ordered else None


def _age(request: MergeRequest) -> tuple[int, object, int]:
    begun = 0 if request.phase == MergePhase.MERGING else 1
    return begun, request.enqueued_at, request.pk
