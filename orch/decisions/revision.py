"""A plan revision, decided: what a task list as it is now changes in its running plan. Pure: the stored tasks and
the list's tasks in, the changes out; orch.store.revisions applies them with compare-and-set updates.

- a task new to the list is added; one the list removed is cancelled (withdrawn) if it has not started;
- a task not started whose fields or dependencies changed is changed; a task ticked done by hand is skipped;
- a task already running or finished keeps what it has: its edits are reported, not applied;
- the plan as it would be (the list's edges for what changes, the stored edges for what does not) must have no
  cycle: a revision that makes one is refused whole, naming the cycle;
- the tasks the plan grew (follow-ups, a re-plan's replacements) are in no list: never withdrawn, their edges kept;
- a task replaced by a re-plan stands for its replacement: a listed dependency on it means the replacement's sinks
  (the tasks its dependants were rewired to), never an edge onto the replaced task; ticking it, or editing it, is
  reported, not applied (it ended well: nothing is left to skip or change).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace

from orch.dag import Dag
from orch.states import ENDED_WELL, HOLDING_FILES, SKIPPABLE, TaskStatus

# A task whose fields a revision may still change: it has not started (pending: waiting for its dependencies).
EDITABLE = frozenset({TaskStatus.PENDING})
# A task a revision may withdraw once its list removed it: it is not running.
WITHDRAWABLE = frozenset({TaskStatus.PENDING, TaskStatus.RETRY_WAIT})


@dataclass(frozen=True)
class StoredTask:
    """A task as the store has it."""

    key: str
    status: TaskStatus
    after: tuple[str, ...]
    signature: Hashable  # every field an edit of the list can change, as the list's tasks' signatures are built
    withdrawn: bool = False  # removed from its list earlier (cancelled, held)
    grown: bool = False  # added while the plan ran (a follow-up, a replacement): in no list
    stands_for: tuple[str, ...] = ()  # a replaced task: its replacement's sinks, which its dependants wait for


@dataclass(frozen=True)
class ListedTask:
    """A task as the list says it now."""

    key: str
    after: tuple[str, ...]
    signature: Hashable
    done: bool  # its mark says done


@dataclass(frozen=True)
class Revision:
    added: tuple[str, ...] = ()  # in the list's order
    changed: tuple[str, ...] = ()  # not started: its fields and edges become the list's
    reopened: tuple[str, ...] = ()  # withdrawn earlier, back in the list: pending again, with the list's fields
    withdrawn: tuple[str, ...] = ()  # removed from the list before it started: cancelled
    skipped: tuple[str, ...] = ()  # ticked done by hand: `orch skip`
    not_applied: tuple[tuple[str, str], ...] = ()  # (task, why): edits of tasks that started or finished
    cycle: tuple[str, ...] = ()  # the cycle it would make (refused whole)

    @property
    def applies(self) -> bool:
        """Whether it changes the plan (a refused one changes nothing)."""
        return not self.cycle and bool(self.added or self.changed or self.reopened or self.withdrawn or self.skipped)

    def summary(self) -> str:
        """One line for people: what it changes and what it does not."""
        if self.cycle:
            return f"refused: it would make a dependency cycle: {' -> '.join(self.cycle)}"
        parts = [
            f"{what} {_names(keys)}"
            for what, keys in (
                ("added", self.added),
                ("changed", self.changed),
                ("reopened", self.reopened),
                ("cancelled (removed)", self.withdrawn),
                ("skipped (ticked)", self.skipped),
            )
            if keys
        ]
        if self.not_applied:
            parts.append("not applied: " + "; ".join(f"{key} ({why})" for key, why in self.not_applied[:10]))
            if len(self.not_applied) > 10:
                parts[-1] += f" and {len(self.not_applied) - 10} more"
        return ", ".join(parts) or "no change"


def _names(keys: Sequence[str], shown: int = 10) -> str:
    head = ", ".join(keys[:shown])
    return head if len(keys) <= shown else f"{head} and {len(keys) - shown} more"


def resolve_replaced(after: Sequence[str], stored: Mapping[str, StoredTask]) -> tuple[str, ...]:
    """`after` with each replaced task put as the tasks that stand for it (its replacement's sinks, themselves
    resolved when one was replaced in turn), in order, each once."""
    resolved: list[str] = []
    seen: set[str] = set()
    todo = list(reversed(after))
    while todo:
        dep = todo.pop()
        if dep in seen:
            continue
        seen.add(dep)
        old = stored.get(dep)
        if old is not None and old.status is TaskStatus.REPLACED:
            todo.extend(reversed(old.stands_for))
        else:
            resolved.append(dep)
    return tuple(resolved)


def decide_revision(stored: Mapping[str, StoredTask], listed: Sequence[ListedTask]) -> Revision:
    """What the list as it is now (`listed`, in its order) changes in the plan the store holds (`stored`, by key)."""
    listed = [replace(task, after=resolve_replaced(task.after, stored)) for task in listed]
    added: list[str] = []
    changed: list[str] = []
    reopened: list[str] = []
    skipped: list[str] = []
    not_applied: list[tuple[str, str]] = []
    edges: dict[str, tuple[str, ...]] = {}  # the plan as it would be
    for task in listed:
        old = stored.get(task.key)
        if old is None:
            added.append(task.key)
            edges[task.key] = task.after
            continue
        edited = old.signature != task.signature or set(resolve_replaced(old.after, stored)) != set(task.after)
        if old.withdrawn:
            reopened.append(task.key)
            edges[task.key] = task.after
        elif task.done and old.status is not TaskStatus.SUCCEEDED:
            edges[task.key] = old.after
            if old.status in HOLDING_FILES or old.status not in SKIPPABLE:
                not_applied.append((task.key, f"ticked, but it is {old.status}"))
            else:
                skipped.append(task.key)
        elif not edited:  # (a succeeded task not ticked yet is write-back's to tick)
            edges[task.key] = old.after
        elif old.status in EDITABLE:
            changed.append(task.key)
            edges[task.key] = task.after
        else:
            edges[task.key] = old.after
            not_applied.append((task.key, f"edited, but it is {old.status}"))
    in_list = {task.key for task in listed}
    withdrawn: list[str] = []
    for key, old in stored.items():
        if key in in_list or old.withdrawn:
            continue
        if old.status in WITHDRAWABLE and not old.grown:
            withdrawn.append(key)
        else:
            edges[key] = old.after
            if not old.grown and old.status not in (*ENDED_WELL, TaskStatus.CANCELLED):
                not_applied.append((key, f"removed from the list, but it is {old.status}"))
    cycle = Dag({key: [d for d in after if d in edges] for key, after in edges.items()}).find_cycle()
    if cycle:
        return Revision(cycle=tuple(cycle))
    return Revision(tuple(added), tuple(changed), tuple(reopened), tuple(withdrawn), tuple(skipped), tuple(not_applied))
