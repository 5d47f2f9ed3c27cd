"""Tasks an agent asks to add to its plan, checked: a running task's follow-ups (the JSON it wrote to
$ORCH_FOLLOWUPS, or its final message's ```orch-followups block) and a re-plan's replacement tasks. Pure: the tasks as
read (orch.store.growth reads each with the plan model's PlannedTask, strict, and routes it to its agent type), the
task that wrote them (the author), the plan as stored and the limits in; the ids orch adds and one problem line per
task it refuses out. Ids are unique against the plan and each other;
dependencies name tasks of the plan or of the same batch (never one replaced); the batch makes no cycle; limits per
attempt, depth and plan hold; and no task may run with more than its author's grant: its agent type's secrets and
`env:` must be among the author's type's, and its network (the type's, with the executor it would run on) no wider.
A hostile agent can ask for work within its own grant, never for another type's secrets.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orch.dag import Dag
from orch.states import TaskStatus

PLANNER = "planner"  # orch's own agent type (config/agents.yaml): it writes plans; no task runs as it
FOLLOWUPS_BLOCK = "orch-followups"  # the fenced block an agent's final message carries its follow-ups in
MAX_FOLLOWUPS_BYTES = 256 * 1024  # the file or block read; more is refused whole
MAX_PROBLEMS = 20  # problem lines kept per batch; the rest are counted
MAX_QUOTED = 128  # characters of an id a problem quotes
FOLLOWUP = "followup"
REPLAN = "replan"

# A ```orch-followups block's opening line, and a closing fence (on a line of its own). Each is matched line by line,
# never as one pattern spanning the block: a lazy span tried from every opening line is quadratic in a message of
# many openings and no closing fence (a final message may be megabytes).
_OPENING = re.compile(r"^[ \t]*```[ \t]*" + FOLLOWUPS_BLOCK + r"[ \t]*\n", re.MULTILINE)
_CLOSING = re.compile(r"^[ \t]*```[ \t]*$", re.MULTILINE)
_NETWORK_RANK = {"none": 0, "host": 1}


def quoted(value: str) -> str:
    return repr(value) if len(value) <= MAX_QUOTED else f"{value[:MAX_QUOTED]!r}…"


@dataclass(frozen=True)
class Grant:
    """What a task runs with: its agent type's secrets and `env:` names, and its network (with its executor)."""

    agent: str
    secrets: frozenset[str] = frozenset()
    env: frozenset[str] = frozenset()
    network: str = "none"  # "host" | "none"


@dataclass(frozen=True)
class Candidate:
    """A task an agent wrote, as read: its id and dependencies and the grant it would run with, or why it cannot
    be read (its fields, an unknown agent type)."""

    label: str  # how a problem names it: "follow-up 'x'", or its place in the batch when it has no id
    key: str | None
    after: tuple[str, ...] = ()
    grant: Grant | None = None
    problem: str | None = None


@dataclass(frozen=True)
class Author:
    """The task whose attempt wrote the tasks (for a re-plan: the task they replace), and its grant."""

    key: str
    grant: Grant
    depth: int = 0


@dataclass(frozen=True)
class PlanShape:
    """What the check needs of the plan as stored: the statuses of the tasks a batch names, by id, and the plan's
    follow-ups so far."""

    statuses: Mapping[str, TaskStatus]
    followups: int = 0


@dataclass(frozen=True)
class Limits:
    per_attempt: int = 20
    depth: int = 3
    total: int = 200


@dataclass(frozen=True)
class Verdict:
    """The ids to add (in the order written) and one line per task refused (or for the whole batch)."""

    accepted: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    def summary(self) -> str:
        added = f"added {', '.join(self.accepted)}" if self.accepted else "added none"
        return f"{added}; refused: {'; '.join(self.problems)}" if self.problems else added


def last_block(message: str | None) -> str | None:
    """The body of the last ```orch-followups block of an agent's final message, or None."""
    if not message or FOLLOWUPS_BLOCK not in message:
        return None
    last_closing = _last(_CLOSING.finditer(message))
    if last_closing is None:
        return None
    opening = _last(_OPENING.finditer(message, 0, last_closing.start()))
    if opening is None:
        return None
    closing = _CLOSING.search(message, opening.end())  # its own: the first closing fence after it
    assert closing is not None  # the last one is after it
    return message[opening.end() : closing.start()]


def _last(matches: Iterator[re.Match[str]]) -> re.Match[str] | None:
    found = deque(matches, maxlen=1)
    return found[0] if found else None


def parse_tasks(text: str) -> tuple[list[Any], str | None]:
    """The task objects of `{"tasks": [...]}` or of a bare list, or the one problem of the whole text."""
    if len(text.encode()) > MAX_FOLLOWUPS_BYTES:
        return [], f"follow-ups: {len(text.encode())} bytes, more than the {MAX_FOLLOWUPS_BYTES} read"
    try:
        document = json.loads(text)
    except ValueError as exc:
        return [], f"follow-ups: not JSON ({str(exc)[:200]})"
    if isinstance(document, dict) and set(document) == {"tasks"}:
        document = document["tasks"]
    if not isinstance(document, list):
        return [], 'follow-ups: give {"tasks": [...]} or a list of tasks'
    return document, None


def check_followups(candidates: Sequence[Candidate], author: Author, plan: PlanShape, limits: Limits) -> Verdict:
    """A succeeded attempt's follow-ups: those that pass are added, each one refused is one problem line (a
    follow-up that needs a refused one is refused too). Nothing refused fails the task."""
    if not candidates:
        return Verdict()
    depth = author.depth + 1
    if depth > limits.depth:
        why = f"follow-ups {depth} deep, more than ORCH_FOLLOWUPS_DEPTH={limits.depth}"
        return Verdict(problems=_capped([f"{c.label}: {why}" for c in candidates]))
    room = min(limits.per_attempt, max(0, limits.total - plan.followups))
    kept, problems = _check(candidates, author, plan)
    if len(kept) > room:
        limit = (
            f"ORCH_FOLLOWUPS_PER_TASK={limits.per_attempt}"
            if room == limits.per_attempt
            else f"ORCH_FOLLOWUPS_TOTAL={limits.total} for the plan"
        )
        over = kept[room:]
        problems += [f"{c.label}: over the limit ({limit})" for c in over]
        kept, problems = _drop_orphans(kept[:room], {c.key for c in over if c.key}, problems, plan)
    return Verdict(tuple(c.key for c in kept if c.key), _capped(problems))


def check_replacement(candidates: Sequence[Candidate], author: Author, plan: PlanShape, limits: Limits) -> Verdict:
    """A re-plan's replacement tasks: all or nothing (any problem refuses the replacement, and the task fails)."""
    if not candidates:
        return Verdict(problems=("replacement: it has no tasks",))
    if len(candidates) > limits.per_attempt:
        why = f"replacement: {len(candidates)} tasks, more than ORCH_FOLLOWUPS_PER_TASK={limits.per_attempt}"
        return Verdict(problems=(why,))
    kept, problems = _check(candidates, author, plan)
    problems += [
        f"{c.label}: depends on {quoted(author.key)}, which it replaces" for c in kept if author.key in c.after
    ]
    if problems:
        return Verdict(problems=_capped(problems))
    return Verdict(tuple(c.key for c in kept if c.key))


def _check(candidates: Sequence[Candidate], author: Author, plan: PlanShape) -> tuple[list[Candidate], list[str]]:
    """Each task of a batch on its own, then its dependencies and cycles against the plan and the batch."""
    kept: list[Candidate] = []
    problems: list[str] = []
    seen: set[str] = set()
    refused: set[str] = set()
    for candidate in candidates:
        problem = _problem(candidate, author, plan, seen)
        if candidate.key is not None:
            seen.add(candidate.key)
        if problem:
            problems.append(f"{candidate.label}: {problem}")
            if candidate.key is not None:
                refused.add(candidate.key)
        else:
            kept.append(candidate)
    kept, problems = _drop_orphans(kept, refused, problems, plan)
    keys = {c.key for c in kept}
    cycle = Dag({c.key: [d for d in c.after if d in keys] for c in kept if c.key}).find_cycle()
    if cycle:
        problems.append(f"{', '.join(map(quoted, dict.fromkeys(cycle)))}: a dependency cycle {' -> '.join(cycle)}")
        kept, problems = _drop_orphans([c for c in kept if c.key not in cycle], set(cycle), problems, plan)
    return kept, problems


def _problem(candidate: Candidate, author: Author, plan: PlanShape, seen: Collection[str]) -> str | None:
    if candidate.problem:
        return candidate.problem
    if candidate.key is None or candidate.grant is None:
        return "a task is a mapping with 'id' and 'title'"
    if candidate.key in plan.statuses or candidate.key in seen:
        return "the id is taken (ids are unique in a plan)"
    if candidate.grant.agent == PLANNER:
        return f"no task runs as the {PLANNER} agent type"
    return grant_escalation(candidate.grant, author.grant)


def grant_escalation(grant: Grant, author: Grant) -> str | None:
    """Why a task with `grant` would run with more than its author's, or None."""
    if grant.secrets - author.secrets:
        return f"agent type {quoted(grant.agent)} has secrets its author's type {quoted(author.agent)} has not"
    extra = sorted(grant.env - author.env)
    if extra:
        return f"agent type {quoted(grant.agent)} gets variables ({', '.join(extra)}) its author's type has not"
    if _NETWORK_RANK.get(grant.network, 1) > _NETWORK_RANK.get(author.network, 1):
        return f"it would run with network {grant.network}, wider than its author's ({author.network})"
    return None


def _drop_orphans(
    kept: list[Candidate], refused: set[str], problems: list[str], plan: PlanShape
) -> tuple[list[Candidate], list[str]]:
    """Tasks that depend on a refused task, an unknown one or a replaced one are refused too, until none is left."""
    problems = list(problems)
    while True:
        keys = {c.key for c in kept}
        still: list[Candidate] = []
        for candidate in kept:
            problem = _dependency_problem(candidate, keys, refused, plan)
            if problem:
                problems.append(f"{candidate.label}: {problem}")
                refused.add(candidate.key or "")
            else:
                still.append(candidate)
        if len(still) == len(kept):
            return still, problems
        kept = still


def _dependency_problem(
    candidate: Candidate, batch: Collection[str | None], refused: Collection[str], plan: PlanShape
) -> str | None:
    for dep in candidate.after:
        if dep in refused:
            return f"depends on {quoted(dep)}, which is refused"
        if dep in batch:
            continue
        status = plan.statuses.get(dep)
        if status is None:
            return f"depends on unknown task {quoted(dep)}"
        if status is TaskStatus.REPLACED:
            return f"depends on {quoted(dep)}, which was replaced"
    return None


def _capped(problems: Sequence[str]) -> tuple[str, ...]:
    if len(problems) <= MAX_PROBLEMS:
        return tuple(problems)
    return (*problems[:MAX_PROBLEMS], f"… and {len(problems) - MAX_PROBLEMS} more")
