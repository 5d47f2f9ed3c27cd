"""Scenario 5: the store goes away in the middle of a plan. A private PostgreSQL cluster is the store of two
workers and the beat; while agents run, it is stopped (`pg_ctl stop -m fast`: sessions ended, clean shutdown),
kept down for longer than a lease, and started again on the same port and data directory.

Expected: workers and beat recover without a restart; agents that finish during the outage keep their results,
which are written when the store returns (the workers retry the result write, the beat holds the reaper back
for one lease period after the store returns); nothing is committed twice; the plan succeeds."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.faults.conftest import RecordFigures
from tests.faults.harness import Cluster, FaultRun, LeaseWatch, Store, sleeping_dag, submit_plan, wait_for_plan
from tests.faults.servers import PG_BIN, PrivatePostgres, failed_ticks, first_claim_after, outage, wait_mid_run

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
WORKERS = ["alpha", "beta"]
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
    return sleeping_dag(run, WIDTH, DEPTH, AGENTS, lambda i: f"{1.0 + (i * 5 % 9) / 4:.2f}")


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
    cluster.start(WORKERS, fault_run.queues(AGENTS), concurrency=3)

    tasks = ledger_plan(fault_run)
    total = len(tasks)
    plan_id = submit_plan(fault_run, cluster.env, {"name": "store-outage", "tasks": tasks})
    started = time.monotonic()

    with Store(store_url) as store:
        # After the outage an expired lease may live one lease period (the beat's wait) plus a tick or two.
        watch = LeaseWatch(store, plan_id, grace=LEASE + 1.5, count_unreachable=True)
        wait_mid_run(cluster, store, plan_id, watch, total // 4, 4, "a quarter of the plan done with agents running")
        with store.engine.connect() as conn:
            running_at_stop = {t.lease for t in store.tasks(conn, plan_id, ["running"])}

        # The outage: PostgreSQL shuts down (fast), stays down for three leases, and comes back as it was. No lease
        # samples meanwhile: the store is away.
        away = outage(private_postgres, private_postgres.stop_fast, OUTAGE, cluster)
        down_wall, up_wall = away.down, away.up  # from `down` on, whatever finishes waits for the server
        store_down = away.seconds
        store.engine.dispose()  # its pooled connections died with the server
        watch.store_back_at = datetime.fromtimestamp(up_wall, UTC)

        status = wait_for_plan(store, plan_id, 90, cluster=cluster, watch=watch)
        finished = time.monotonic()
        cluster.check_alive()

    verdict = cluster.examine(plan_id, watch)
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
    first_claim = first_claim_after(verdict.snapshot.attempts, up_wall)
    failed = failed_ticks(cluster.json_log("beat"))
    worker_log = [entry for name in WORKERS for entry in cluster.json_log(name)]
    store_waits = sum(1 for e in worker_log if str(e.get("event", "")).startswith("store unreachable"))

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
        "failed ticks": failed,
        "recovery": f"{first_claim.timestamp() - up_wall:.1f}s" if first_claim else "?",
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
