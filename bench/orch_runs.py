"""Part 2: orch itself, `noop` executor — real `celery -A orch worker` and `celery -A orch beat` processes, plans
submitted to the store, every figure read back from the store's timestamps (the database's clock: microseconds on
PostgreSQL, milliseconds on SQLite).

- deep: a chain plan, run `repeats` times; a hop is the parent attempt's finished_at → the child attempt's
  started_at (record the result, readiness, commit, publish, broker, claim);
- fan-out/fan-in: 1 → N → 1;
- wide: N independent tasks (the agent type's cap is raised above N, so the beat dispatches them at once);
  throughput from the first attempt's start to the last one's finish;
- idle: the worker's process tree and the beat, CPU over a while of doing nothing (after a warm-up plan);
- memory: the worker's process tree's memory (PSS) before, during and after the wide plan.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bench.infra import AGENT, PYTHON, RUN_ID, BenchError, Child, Fleet, idle_cpu, pss_mib, rss_mib, summary
from bench.raw import worker_args
from bench.sizes import Size
from orch.intake.agents import AgentRegistry
from orch.intake.plan_validation import validate_plan
from orch.states import AttemptStatus, PlanStatus, TaskStatus
from orch.store import plans, reads
from orch.store.db import db_now, ensure_schema, read_session, write_session
from orch.store.models import AttemptRow, TaskRow

DEFAULTS = {"agent": AGENT, "executor": "noop"}


def queue_of(registry: AgentRegistry) -> str:
    return registry.get(AGENT).queue


# --- plans ---------------------------------------------------------------------------------------------------


def deep_plan(length: int) -> list[dict[str, Any]]:
    return [{"id": f"d{i}", "title": f"link {i}", **({"after": [f"d{i - 1}"]} if i else {})} for i in range(length)]


def fan_plan(width: int) -> list[dict[str, Any]]:
    middle = [f"m{i}" for i in range(width)]
    return [
        {"id": "root", "title": "root"},
        *({"id": key, "title": key, "after": ["root"]} for key in middle),
        {"id": "sink", "title": "sink", "after": middle},
    ]


def wide_plan(count: int, prefix: str = "w") -> list[dict[str, Any]]:
    return [{"id": f"{prefix}{i}", "title": f"{prefix}{i}"} for i in range(count)]


# --- one plan, submitted and followed to its end ---------------------------------------------------------------


def submit(name: str, tasks: list[dict[str, Any]], registry: AgentRegistry, workdir: Path) -> str:
    document = {"name": f"bench-{name}", "defaults": DEFAULTS, "tasks": tasks}
    plan = validate_plan(document, registry, source=f"bench:{name}", base_dir=workdir)
    with write_session() as session:
        return plans.submit_plan(session, plan, db_now(session))


def follow(
    plan_id: str,
    children: list[Child],
    timeout: float,
    sample: Callable[[], None] | None = None,
    every: float = 1.0,
) -> float:
    """Wait until the plan is final (polling the store every 0.2 s); returns the seconds it took."""
    started = time.monotonic()
    next_sample = started
    while True:
        for child in children:
            child.check_alive()
        if sample is not None and time.monotonic() >= next_sample:
            sample()
            next_sample += every
        with read_session() as session:
            plan = plans.get_plan(session, plan_id)
            status = plan.status if plan else None
        if status is not PlanStatus.RUNNING:
            break
        if time.monotonic() - started > timeout:
            with read_session() as session:
                counts = {str(k): v for k, v in reads.count_by_status(session, plan_id).items()}
            raise BenchError(f"plan {plan_id} not final after {timeout:.0f}s: {counts}")
        time.sleep(0.2)
    elapsed = time.monotonic() - started
    if status is not PlanStatus.SUCCEEDED:
        with read_session() as session:
            counts = {str(k): v for k, v in reads.count_by_status(session, plan_id).items()}
        raise BenchError(f"plan {plan_id} ended {status}: {counts}")
    return elapsed


class Timings:
    """One finished plan's attempts, from the store: per task, its succeeded attempt's queued, started and finished
    times (seconds since the epoch), and its parents."""

    def __init__(self, plan_id: str) -> None:
        with read_session() as session:
            rows = session.execute(
                select(
                    TaskRow.pk,
                    TaskRow.key,
                    AttemptRow.status,
                    AttemptRow.queued_at,
                    AttemptRow.started_at,
                    AttemptRow.finished_at,
                )
                .join(AttemptRow, AttemptRow.task_pk == TaskRow.pk)
                .where(TaskRow.plan_id == plan_id)
            ).all()
            edges = plans.plan_dependencies(session, plan_id)
        self.attempts = len(rows)
        self.key: dict[int, str] = {}
        self.queued: dict[int, float] = {}
        self.started: dict[int, float] = {}
        self.finished: dict[int, float] = {}
        for pk, key, status, queued_at, started_at, finished_at in rows:
            if status is not AttemptStatus.SUCCEEDED or finished_at is None:
                continue
            self.key[pk] = key
            self.queued[pk] = queued_at.timestamp() if queued_at else started_at.timestamp()
            self.started[pk] = started_at.timestamp()
            self.finished[pk] = finished_at.timestamp()
        self.parents: dict[int, list[int]] = {}
        for child, parent in edges:
            self.parents.setdefault(child, []).append(parent)
        self.pk_of = {key: pk for pk, key in self.key.items()}

    def hop_ms(self, pk: int) -> float:
        """The latest parent's finish → this task's start."""
        return 1000 * (self.started[pk] - max(self.finished[p] for p in self.parents[pk]))

    def hops_ms(self, pks: list[int] | None = None) -> list[float]:
        pks = list(self.parents) if pks is None else pks
        return [self.hop_ms(pk) for pk in pks]

    def span(self, pks: list[int] | None = None) -> float:
        pks = list(self.started) if pks is None else pks
        return max(self.finished[pk] for pk in pks) - min(self.started[pk] for pk in pks)

    def basics(self) -> dict[str, Any]:
        span = self.span()
        return {
            "tasks": len(self.started),
            "attempts": self.attempts,
            "makespan_s": span,
            "tasks_per_s": len(self.started) / span if span > 0 else None,
            "queued_to_started_ms": summary([1000 * (self.started[pk] - self.queued[pk]) for pk in self.started]),
        }


# --- the part ------------------------------------------------------------------------------------------------


def run_orch(
    fleet: Fleet,
    env: dict[str, str],
    database_url: str,
    registry: AgentRegistry,
    size: Size,
    concurrency: int,
    folder: Path,
) -> dict[str, Any]:
    ensure_schema(database_url)  # before the processes start, so they do not race to migrate
    queue = queue_of(registry)
    started = time.monotonic()
    worker = fleet.start(
        "orch-worker",
        worker_args("orch", queue, f"orch-{RUN_ID}", concurrency),
        env,
        folder / "orch-worker.log",
        folder,
    )
    beat = fleet.start(
        "orch-beat",
        [PYTHON, "-m", "celery", "-A", "orch", "beat", "-s", str(folder / "beat-schedule")],
        env,
        folder / "orch-beat.log",
        folder,
    )
    children = [worker, beat]
    result: dict[str, Any] = {"concurrency": concurrency, "queue": queue}
    try:
        warm = submit("warmup", wide_plan(concurrency * 2, "warm"), registry, folder)
        follow(warm, children, 180)
        result["cluster_start_s"] = time.monotonic() - started
        time.sleep(min(2.0, size.idle_seconds / 2))  # let the warm-up's last messages and ticks settle
        result["idle_cpu_percent"] = idle_cpu({"worker": worker, "beat": beat}, size.idle_seconds)

        result["deep"] = _deep(registry, folder, children, size)
        result["fan"] = _fan(submit("fan", fan_plan(size.fan), registry, folder), children, size)

        before = _memory(worker)
        plan_id = submit("wide", wide_plan(size.wide), registry, folder)
        samples: list[tuple[float, int, float]] = [(0.0, 0, round(before["pss_mib"], 2))]  # s, succeeded, PSS MiB
        t0 = time.monotonic()

        def sample() -> None:
            samples.append((round(time.monotonic() - t0, 2), _succeeded(plan_id), round(pss_mib(worker.tree()), 2)))

        wall = follow(plan_id, children, size.plan_timeout, sample)
        time.sleep(1.0)  # the pool processes finish their last acknowledgements
        after = _memory(worker)
        samples.append((round(time.monotonic() - t0, 2), size.wide, round(after["pss_mib"], 2)))
        timings = Timings(plan_id)
        result["wide"] = {
            **timings.basics(),
            "submit_to_final_s": wall,
            "dispatch_to_last_finish_tasks_per_s": len(timings.started)
            / (max(timings.finished.values()) - min(timings.queued.values())),
        }
        result["memory"] = {
            "measure": "PSS of the worker's main and pool processes (smaps_rollup); RSS alongside",
            "before_mib": before["pss_mib"],
            "after_mib": after["pss_mib"],
            "peak_mib": max([before["pss_mib"], *(m for _, _, m in samples)]),
            "growth_percent": 100 * (after["pss_mib"] - before["pss_mib"]) / before["pss_mib"],
            "growth_kib_per_1000_tasks_after_first_10_percent": _slope(samples, size.wide // 10),
            "rss_before_mib": before["rss_mib"],
            "rss_after_mib": after["rss_mib"],
            "processes_before": before["processes"],
            "processes_after": after["processes"],
            "samples": samples,
        }
    finally:
        fleet.stop(beat)
        fleet.stop(worker)
    return result


def _succeeded(plan_id: str) -> int:
    with read_session() as session:
        return reads.count_by_status(session, plan_id).get(TaskStatus.SUCCEEDED, 0)


def _slope(samples: list[tuple[float, int, float]], after_tasks: int) -> float | None:
    """KiB of PSS per 1,000 tasks, from the first sample with `after_tasks` done to the last: the growth once the
    worker has warmed up. A plan so short that no sample fell in between (the smoke test's) is measured from the
    start."""
    end = samples[-1]
    start = next((s for s in samples if after_tasks <= s[1] < end[1]), samples[0])
    if end[1] <= start[1]:
        return None
    return (end[2] - start[2]) * 1024 / ((end[1] - start[1]) / 1000)


def _memory(worker: Child) -> dict[str, Any]:
    pids = worker.tree()
    return {
        "pss_mib": pss_mib(pids),
        "rss_mib": rss_mib(pids),
        "processes": {str(pid): {"pss_mib": pss_mib([pid]), "rss_mib": rss_mib([pid])} for pid in pids},
    }


def _deep(registry: AgentRegistry, folder: Path, children: list[Child], size: Size) -> dict[str, Any]:
    """`repeats` chain plans one after another, their hops pooled (as the raw Celery chains' are)."""
    runs = []
    for n in range(size.repeats):
        plan_id = submit(f"deep{n}", deep_plan(size.deep), registry, folder)
        wall = follow(plan_id, children, size.plan_timeout)
        timings = Timings(plan_id)
        if len(timings.started) != size.deep:
            raise BenchError(f"deep plan: {len(timings.started)} of {size.deep} tasks succeeded")
        runs.append((timings, wall))
    hops = [hop for timings, _ in runs for hop in timings.hops_ms()]
    return {
        **runs[-1][0].basics(),
        "runs": size.repeats,
        "submit_to_final_s": [wall for _, wall in runs],
        "hop_ms": summary(hops),
        "hop_p50_per_run_ms": [summary(timings.hops_ms())["p50"] for timings, _ in runs],
        "ms_per_task": sum(1000 * timings.span() / (size.deep - 1) for timings, _ in runs) / size.repeats,
    }


def _fan(plan_id: str, children: list[Child], size: Size) -> dict[str, Any]:
    wall = follow(plan_id, children, size.plan_timeout)
    timings = Timings(plan_id)
    middle = [timings.pk_of[f"m{i}"] for i in range(size.fan)]
    out = timings.hops_ms(middle)
    return {
        **timings.basics(),
        "submit_to_final_s": wall,
        "fan_out_first_ms": min(out),
        "fan_out_last_ms": max(out),
        "fan_out_ms": summary(out),
        "fan_in_ms": timings.hop_ms(timings.pk_of["sink"]),
        "middle_tasks_per_s": size.fan / timings.span(middle),
    }
