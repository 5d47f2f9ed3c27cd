"""Part 3: orch at scale, in this process, no workers — each on a fresh, empty store.

- validate + submit: a plan file of N tasks (layers of `scale_width` tasks, each after two tasks of the layer
  before) read, validated and stored, timed in three steps;
- readiness per completion: what a worker's `finish` does after an attempt, replayed (on PostgreSQL after the
  vacuum that autovacuum would run after the insert): one queued task is claimed (`attempts.claim`), then in
  one transaction its success is recorded (`attempts.record_result`) and
  `orch.dispatch.reconcile.dispatch_after_result` finds and claims its newly ready dependants — that call is the
  readiness cost (the transaction's total is reported too). Tasks complete in plan order, so each finished task has
  the same number of dependants whatever the plan's size; the same is timed on a small and a large plan;
- full reconcile pass: `beat.tick.run_tick()` (reap, re-send, reconcile) on the large plan mid-run, with nothing
  left to dispatch (the workers' fast path has dispatched it): the beat's steady-state cost per tick.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from bench.infra import BenchError, Stores, environ, next_queued, ranked_statements, summary, timed_statements
from bench.orch_runs import DEFAULTS
from bench.sizes import Size
from orch.decisions.retry import Backoff, decide_outcome
from orch.intake.agents import AgentRegistry
from orch.records import AttemptResult
from orch.store import attempts, plans
from orch.store.db import db_now, ensure_schema, write_session

LEASE_SECONDS = 45.0


def layered(count: int, width: int) -> list[dict[str, Any]]:
    tasks: list[dict[str, Any]] = []
    for n in range(count):
        layer, i = divmod(n, width)
        task: dict[str, Any] = {"id": f"t{n}", "title": f"step {layer}.{i}"}
        if layer:
            base = (layer - 1) * width
            task["after"] = sorted({f"t{base + i}", f"t{base + (i + 1) % width}"})
        tasks.append(task)
    return tasks


def run_scale(
    stores: Stores,
    broker_url: str,
    registry: AgentRegistry,
    size: Size,
    folder: Path,
    profile: Callable[[str, Callable[[], Any]], str] | None = None,
) -> dict[str, Any]:
    """Each plan size on a fresh store. Then, untimed, the same steps again with every SQL statement's execution
    timed (what the time goes to), and with `profile` pyinstrument profiles of the large plan's submit, readiness
    and tick."""
    from orch.celery import use_broker

    result: dict[str, Any] = {"width": size.scale_width, "big": size.scale_big, "small": size.scale_small}
    for label, count in (("big", size.scale_big), ("small", size.scale_small)):
        url = stores.new(f"scale_{label}")
        with environ(ORCH_DATABASE_URL=url, ORCH_BROKER_URL=broker_url):
            use_broker(broker_url)  # a tick publishes what it dispatches (nothing, here) to the run's broker
            engine = ensure_schema(url)
            submitted, plan_id = _submit(folder, count, size.scale_width, registry, engine)
            _settle(engine)
            readiness = _completions(plan_id, registry, size.warmup, size.completions)
            ticks = _ticks(size.ticks)
            one_completion = partial(_completions, plan_id, registry, 0, 1, first=False)
            statements = {
                "completion": _statements(engine, size.completions, one_completion),
                "tick": _statements(engine, size.ticks, partial(_ticks, 1, warmup=False)),
            }
            if profile is not None and label == "big":
                completions = partial(_completions, plan_id, registry, 0, 20, first=False)
                readiness["profile"] = profile("readiness", completions)
                ticks["profile"] = profile("tick", partial(_ticks, 5))
                submitted["profile"] = profile(
                    "submit", partial(_submit, folder, count, size.scale_width, registry, engine)
                )
        result[label] = {
            "tasks": count,
            "submit": submitted,
            "readiness": readiness,
            "tick": ticks,
            "statements": statements,
        }
        stores.close()  # the big store's database is dropped before the small one is measured
    return result


def _settle(engine: Engine) -> None:
    """Untimed, on PostgreSQL: the vacuum autovacuum would start on its own after a bulk insert, so it does not
    run in the background (on the same two cores) while completions are timed."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM (ANALYZE) tasks, dependencies, attempts, events, plans")


def _statements(engine: Engine, repeat: int, step: Callable[[], Any], top: int = 6) -> list[dict[str, Any]]:
    """The statements `step` runs, the costliest first: ms and calls per step (execution only, not fetching)."""
    with timed_statements(engine) as times:
        for _ in range(repeat):
            step()
    return ranked_statements(times, repeat, top)


def _submit(
    folder: Path, count: int, width: int, registry: AgentRegistry, engine: Engine
) -> tuple[dict[str, Any], str]:
    """Read, validate and store a plan file, each step timed; the store's statements are timed too (a few
    hundred bulk statements: their timing costs nothing measurable)."""
    from orch.intake.plan_document import read_plan_document
    from orch.intake.plan_validation import validate_plan

    path = folder / f"scale-{count}.json"
    path.write_text(json.dumps({"name": f"bench-scale-{count}", "defaults": DEFAULTS, "tasks": layered(count, width)}))
    started = time.perf_counter()
    document = read_plan_document(path)
    parsed = time.perf_counter()
    plan = validate_plan(document, registry, source=str(path), base_dir=folder)
    validated = time.perf_counter()
    with timed_statements(engine) as times, write_session() as session:
        plan_id = plans.submit_plan(session, plan, db_now(session))
    stored = time.perf_counter()
    file_mib = path.stat().st_size / (1024 * 1024)
    path.unlink()
    return {
        "file_mib": file_mib,
        "parse_s": parsed - started,
        "validate_s": validated - parsed,
        "submit_s": stored - validated,
        "total_s": stored - started,
        "edges": sum(len(t.after) for t in plan.tasks),
        "statements": ranked_statements(times, 1),
    }, plan_id


def _completions(
    plan_id: str, registry: AgentRegistry, warmup: int, completions: int, first: bool = True
) -> dict[str, Any]:
    from orch.dispatch.reconcile import dispatch_after_result, reconcile_plans

    if first:  # dispatch the first layer
        with write_session() as session:
            reconcile_plans(session, [plan_id], registry, db_now(session))
    readiness: list[float] = []
    transaction: list[float] = []
    dispatched: list[int] = []
    backoff = Backoff(0.0, 0.0)
    for n in range(warmup + completions):
        with write_session() as session:
            row = next_queued(session, plan_id)
            if row is None:
                raise BenchError("no queued task left to complete")
            now = db_now(session)
            claimed = attempts.claim(session, row[0], row[1], "bench", os.getpid(), LEASE_SECONDS, now=now)
        if claimed is None:
            raise BenchError("the claim of a queued task failed")
        claim, _ = claimed
        began = time.perf_counter()
        with write_session() as session:
            now = db_now(session)
            outcome = decide_outcome(True, None, None, 0, claim.retries, now, 0.5, backoff)
            recorded = attempts.record_result(session, claim, AttemptResult(True, exit_code=0), outcome, now)
            if recorded is None:
                raise BenchError("the result of a claimed attempt was rejected")
            ready_began = time.perf_counter()
            dispatches = dispatch_after_result(session, plan_id, recorded, registry, now)
            ready_ended = time.perf_counter()
        ended = time.perf_counter()  # committed
        if n >= warmup:
            readiness.append(1000 * (ready_ended - ready_began))
            transaction.append(1000 * (ended - began))
            dispatched.append(len(dispatches))
    return {
        "readiness_ms": summary(readiness),
        "transaction_ms": summary(transaction),
        "dispatched_per_completion": sum(dispatched) / len(dispatched) if dispatched else None,
    }


def _ticks(count: int, warmup: bool = True) -> dict[str, Any]:
    from beat.tick import run_tick

    if warmup:
        run_tick()
    times = []
    dispatched = 0
    for _ in range(count):
        began = time.perf_counter()
        report = run_tick()
        times.append(1000 * (time.perf_counter() - began))
        dispatched += report.dispatched + report.resent + report.reaped
    return {"tick_ms": summary(times), "work_done": dispatched}
