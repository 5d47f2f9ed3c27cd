"""Scenario 5: the store goes away in the middle of a plan. A private PostgreSQL cluster is the store of two
workers and the beat; while agents run, it is stopped (`pg_ctl stop -m fast`: sessions ended, clean shutdown),
kept down for longer than a lease, and started again on the same port and data directory.

Expected: workers and beat recover without a restart; agents that finish during the outage keep their results,
which are written when the store returns (the workers retry the result write, the beat holds the reaper back
for one lease period after the store returns); nothing is committed twice; the plan succeeds."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import RecordFigures
from tests.faults.harness import (
    Cluster,
    FaultRun,
    Store,
    examine,
    submit_plan,
    wait_for_plan,
    wait_until,
)
from tests.faults.servers import PG_BIN, GraceLeaseWatch, PrivatePostgres
from tests.helpers import layered_dag

pytestmark = [pytest.mark.faults, pytest.mark.redis]

AGENTS = ["backend-development", "testing-specialist", "documentation-writer", "devops-engineer"]
HEARTBEAT, LEASE, TICK = 1.0, 2.0, 0.2
SETTINGS = {
    "ORCH_HEARTBEAT_SECONDS": str(HEARTBEAT),
    "ORCH_LEASE_SECONDS": str(LEASE),
    "ORCH_TICK_SECONDS": str(TICK),
    "ORCH_REDELIVER_SECONDS": "3",
    "ORCH_LOG_FORMAT": "json",
}
OUTAGE = 6.0  # seconds the store stays down: three leases
WIDTH, DEPTH = 8, 6  # 48 tasks
REJECTED = "result rejected"


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    if shutil.which("initdb", path=str(PG_BIN)) is None:
        pytest.skip(f"PostgreSQL's initdb is not in {PG_BIN}")
    server = PrivatePostgres()
    try:
        server.setup()
        yield server
    finally:
        server.close()


def ledger_plan(run: FaultRun) -> list[dict[str, Any]]:
    """48 tasks in 6 layers, each agent working between 1.0 and 3.0 s."""
    tasks = layered_dag(width=WIDTH, depth=DEPTH, agents=AGENTS)
    for i, task in enumerate(tasks):
        task["command"] = run.agent_command("--sleep", f"{1.0 + (i * 5 % 9) / 4:.2f}")
    return tasks


def json_log(path: Path) -> list[dict[str, Any]]:
    entries = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return entries


@pytest.mark.timeout(150)
def test_store_outage_keeps_results_finished_meanwhile_and_completes_once(
    private_postgres: PrivatePostgres,
    fault_redis_url: str,
    fault_run: FaultRun,
    make_cluster: Callable[..., Cluster],
    record_figures: RecordFigures,
) -> None:
    store_url = private_postgres.url
    cluster = make_cluster(store_url, fault_redis_url, **SETTINGS)
    queues = [fault_run.queue(agent) for agent in AGENTS]
    cluster.worker("alpha", queues, concurrency=3)
    cluster.worker("beta", queues, concurrency=3)
    cluster.beat()

    tasks = ledger_plan(fault_run)
    total = len(tasks)
    plan_id = submit_plan(fault_run, cluster.env, {"name": "store-outage", "tasks": tasks})
    started = time.monotonic()

    with Store(store_url) as store:
        # After the outage an expired lease may live one lease period (the beat's wait) plus a tick or two.
        watch = GraceLeaseWatch(store, plan_id, grace=LEASE + 1.5)

        def counts() -> dict[str, int]:
            with store.engine.connect() as conn:
                found: dict[str, int] = {}
                for task in store.tasks(conn, plan_id):
                    found[task.status] = found.get(task.status, 0) + 1
                return found

        def mid_run() -> bool:
            cluster.check_alive()
            watch.sample()
            now = counts()
            return now.get("succeeded", 0) >= total // 4 and now.get("running", 0) >= 4

        wait_until(mid_run, 60, "a quarter of the plan done with agents running", interval=0.1)
        with store.engine.connect() as conn:
            running_at_stop = {t.lease for t in store.tasks(conn, plan_id, ["running"])}

        # The outage: PostgreSQL shuts down (fast), stays down for three leases, and comes back as it was.
        private_postgres.stop_fast()
        down_wall = time.time()  # the server has exited: whatever finishes from now on waits for it
        try:
            outage_end = time.monotonic() + OUTAGE
            while time.monotonic() < outage_end:  # the deliberate outage; the cluster must survive it
                cluster.check_alive()
                time.sleep(0.2)
        finally:
            private_postgres.start()
        up_wall = time.time()
        assert private_postgres.stopped_at is not None and private_postgres.started_at is not None
        store_down = private_postgres.started_at - private_postgres.stopped_at
        store.engine.dispose()  # its pooled connections died with the server
        watch.store_back_at = datetime.fromtimestamp(up_wall, UTC)

        status = wait_for_plan(store, plan_id, 90, cluster=cluster, watch=watch)
        finished = time.monotonic()
        cluster.check_alive()

    verdict = examine(store_url, plan_id, fault_run.ledger, fault_run.marker, watch)
    attempts = {a.lease: a for a in verdict.snapshot.attempts}
    # Agents that completed their work while the store was down: their results waited in the workers.
    during = [
        line
        for line in verdict.ledger
        if line["event"] == "end" and line.get("ok") and down_wall <= line["time"] <= up_wall
    ]
    kept = [line for line in during if attempts.get(line["lease"]) and attempts[line["lease"]].status == "succeeded"]
    written_after = [
        line for line in kept if (a := attempts[line["lease"]]).finished_at and a.finished_at.timestamp() >= up_wall
    ]
    lost_results = [line for line in during if line not in kept]
    reaped = [a for a in verdict.snapshot.attempts if a.failure_class == "worker_lost"]
    first_claim_after = min(
        (a.started_at for a in verdict.snapshot.attempts if a.started_at and a.started_at.timestamp() > up_wall),
        default=None,
    )
    beat_log = json_log(cluster.log_paths["beat"])
    failed_ticks = sum(1 for e in beat_log if e.get("event") == "tick failed; retrying next tick")
    store_waits = sum(
        1
        for e in (json_log(cluster.log_paths["alpha"]) + json_log(cluster.log_paths["beta"]))
        if str(e.get("event", "")).startswith("store unreachable")
    )

    figures = {
        **verdict.figures,
        "store down": f"{store_down:.1f}s",
        "running at stop": len(running_at_stop),
        "finished during the outage": len(during),
        "results kept across outage": (len(kept), len(during)),
        "results written after the outage": (len(written_after), len(during)),
        "results rejected (worker logs)": cluster.log_count(REJECTED),
        "reaped": len(reaped),
        "store waits (worker logs)": store_waits,
        "failed ticks": failed_ticks,
        "recovery": f"{first_claim_after.timestamp() - up_wall:.1f}s" if first_claim_after else "?",
        "done after restart": f"{finished - (private_postgres.started_at or finished):.1f}s",
        "run": f"{finished - started:.1f}s",
    }
    notes = list(verdict.notes)
    for line in lost_results:
        attempt = attempts.get(line["lease"])
        notes.append(
            f"task {line['task']} attempt {line['attempt']} finished its work during the outage, "
            f"but the store recorded it {attempt.status if attempt else 'nowhere'}"
            + (f" ({attempt.failure_class}: {attempt.error})" if attempt and attempt.error else "")
        )
    if watch.expired_seen:
        notes.append(
            f"{len(watch.expired_seen)} running attempts were seen on an expired lease (longest "
            f"{watch.longest_expired:.1f}s after the store returned or the lease expired; grace {watch.grace:.1f}s)"
        )
    record_figures("5 store outage", figures, notes)

    verdict.assert_ok()
    assert status == "succeeded", cluster.logs_tail()
    assert during, "no agent finished during the outage: the scenario tested nothing"
    assert not lost_results, f"results of work finished during the outage were lost: {notes}"
    assert len(written_after) == len(during)
