"""How big each part of the benchmark is: `full` (the issue's figures) and `tiny` (the smoke test's)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Size:
    name: str
    raw_drain: int  # no-op messages one raw Celery worker drains
    raw_chain: int  # length of the raw Celery chain
    repeats: int  # raw chains and orch deep plans run this many times, their hops pooled
    latency_samples: int  # raw apply_async → task start, one at a time
    wide: int  # orch: independent tasks
    deep: int  # orch: length of the chain plan
    fan: int  # orch: 1 → fan → 1
    scale_big: int  # in-process: validate + submit, readiness and tick on a plan this large
    scale_small: int  # ... and readiness on a plan this large, to compare
    scale_width: int  # the scale plans are layers of this many tasks, each after two of the layer before
    completions: int  # timed completions per readiness measurement (after `warmup`)
    warmup: int
    ticks: int  # timed beat ticks
    idle_seconds: float  # worker and beat left idle this long
    plan_timeout: float  # longest wait for one orch plan
    worktree_files: int  # worktree part: files in the repository
    worktree_tasks: int  # ... and timed tasks in their own worktrees (in pairs: a fast-forward and a 3-way merge)
    tasklist_tasks: int  # task lists: tasks in the spec-kit tasks.md imported and followed
    tasklist_runs: int  # ... timed imports
    tasklist_edits: int  # ... timed saves adding a task to the followed list
    tasklist_debounce: float  # ... the follower's debounce (seconds): the edit's target is this + 1 s

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Size(
    name="full",
    raw_drain=10_000,
    raw_chain=200,
    repeats=3,
    latency_samples=200,
    wide=10_000,
    deep=200,
    fan=1_000,
    scale_big=100_000,
    scale_small=1_000,
    scale_width=10,
    completions=200,
    warmup=20,
    ticks=5,
    idle_seconds=10.0,
    plan_timeout=1200.0,
    worktree_files=1_000,
    worktree_tasks=30,
    tasklist_tasks=1_000,
    tasklist_runs=10,
    tasklist_edits=6,
    tasklist_debounce=2.0,  # orch sync's and orch run --watch's default
)

TINY = Size(
    name="tiny",
    raw_drain=200,
    raw_chain=20,
    repeats=1,
    latency_samples=20,
    wide=100,
    deep=20,
    fan=30,
    scale_big=2_000,
    scale_small=200,
    scale_width=10,
    completions=10,
    warmup=2,
    ticks=3,
    idle_seconds=1.0,
    plan_timeout=120.0,
    worktree_files=200,
    worktree_tasks=2,
    tasklist_tasks=100,
    tasklist_runs=3,
    tasklist_edits=2,
    tasklist_debounce=0.5,
)

SIZES = {s.name: s for s in (FULL, TINY)}
