"""Part 3b: a worker's own orch code path per task, in this process, no Celery — `workers.runner.run_attempt`
exactly as a pool process runs it (claim, attempt context, noop executor, heartbeat thread, record the result,
readiness, publish the dispatched children to the run's broker), one task after another, each timed.

- deep: a chain plan, so every task dispatches one child: orch's share of a hop, without the broker and Celery;
- wide: a wide plan with every task queued at once (as the beat leaves it): the cost per task that bounds the
  wide plan's throughput.

Children published here stay in the broker's queue (nobody reads it); the broker is flushed or stopped after the
store's parts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.infra import BenchError, Stores, environ, next_queued, ranked_statements, summary, timed_statements
from bench.orch_runs import deep_plan, submit, wide_plan
from bench.sizes import Size
from orch.intake.agents import AgentRegistry
from orch.store.db import db_now, ensure_schema, read_session, write_session


def run_worker_path(
    stores: Stores,
    broker_url: str,
    registry: AgentRegistry,
    size: Size,
    folder: Path,
    profile: Callable[[str, Callable[[], Any]], str] | None = None,
) -> dict[str, Any]:
    from orch.celery import use_broker

    result: dict[str, Any] = {}
    url = stores.new("worker_path")
    with environ(ORCH_DATABASE_URL=url, ORCH_BROKER_URL=broker_url):
        use_broker(broker_url)
        engine = ensure_schema(url)
        deep = submit("path-deep", deep_plan(size.deep), registry, folder)
        _dispatch(deep, registry)
        with timed_statements(engine) as times:
            took = _run(deep, size.deep)
        result["deep"] = {"tasks": size.deep, "ms": summary(took), **_statements(times, size.deep)}

        wide = submit("path-wide", wide_plan(size.wide), registry, folder)
        queued = _dispatch(wide, registry)
        _run(wide, size.warmup)
        with timed_statements(engine) as times:
            took = _run(wide, size.completions)
        result["wide"] = {
            "tasks": size.wide,
            "queued": queued,
            "ms": summary(took),
            **_statements(times, size.completions),
        }
        if profile is not None:
            result["wide"]["profile"] = profile("worker-wide", lambda: _run(wide, 20))
            deep_again = submit("path-deep-profiled", deep_plan(min(size.deep, 100)), registry, folder)
            _dispatch(deep_again, registry)
            result["deep"]["profile"] = profile("worker-deep", lambda: _run(deep_again, min(size.deep, 100)))
    stores.close()
    return result


def _statements(times: dict[str, list[float]], tasks: int) -> dict[str, Any]:
    """SQL statements per task and their execution time, without the harness's own pick of the next task."""
    times = {sql: ms for sql, ms in times.items() if not sql.startswith(_PICK)}
    return {
        "statements_per_task": sum(len(ms) for ms in times.values()) / tasks,
        "statement_ms_per_task": sum(sum(ms) for ms in times.values()) / tasks,
        "statements": ranked_statements(times, tasks, top=8),
    }


_PICK = "SELECT tasks.pk, tasks.attempt FROM tasks"


def _dispatch(plan_id: str, registry: AgentRegistry) -> int:
    """What the beat's tick does for a new plan (without publishing: the messages would only sit in the queue)."""
    from orch.dispatch.reconcile import reconcile_plans

    with write_session() as session:
        return len(reconcile_plans(session, [plan_id], registry, db_now(session)))


def _run(plan_id: str, count: int) -> list[float]:
    """Run `count` queued tasks of the plan one after another, as a worker would; ms each."""
    from workers.runner import run_attempt

    times = []
    for _ in range(count):
        with read_session() as session:
            row = next_queued(session, plan_id)
        if row is None:
            raise BenchError(f"plan {plan_id}: no queued task left to run")
        began = time.perf_counter()
        outcome = run_attempt(row[0], row[1], worker="bench-in-process")
        times.append(1000 * (time.perf_counter() - began))
        if outcome != "succeeded":
            raise BenchError(f"plan {plan_id}: an in-process attempt ended {outcome}")
    return times
