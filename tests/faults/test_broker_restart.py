"""Scenario 4: the broker restarts in the middle of a plan and forgets everything it held. A private
`redis-server` without persistence carries the messages of two workers and the beat; while the plan runs it is
shut down (`SHUTDOWN NOSAVE`), kept down for a few seconds and started again, empty, on the same port.

Expected: workers and beat reconnect by themselves; the messages the broker lost are re-sent by the beat
(ORCH_REDELIVER_SECONDS); attempts whose worker cancelled them on the connection loss are reaped when their
lease expires, and retried; the plan succeeds with every task committed exactly once."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.faults.conftest import RecordFigures
from tests.faults.harness import (
    Cluster,
    FaultRun,
    LeaseWatch,
    Store,
    redis_backlog,
    sleeping_dag,
    submit_plan,
    wait_for_plan,
)
from tests.faults.servers import PrivateRedis, failed_ticks, first_claim_after, outage, wait_mid_run

pytestmark = [pytest.mark.faults, pytest.mark.postgres]

AGENTS = ["backend-development", "testing-specialist", "documentation-writer", "devops-engineer"]
SETTINGS = {
    "ORCH_HEARTBEAT_SECONDS": "1",
    "ORCH_LEASE_SECONDS": "3",
    "ORCH_REDELIVER_SECONDS": "3",
    "ORCH_LOG_FORMAT": "json",
}
TICK = 0.2  # harness FAST_SETTINGS
OUTAGE = 4.0  # seconds the broker stays down
WIDTH, DEPTH = 25, 6  # 150 tasks
WORKERS = ["alpha", "beta"]
CANCELLED_ON_LOSS = "cannot be acknowledged after a connection loss"


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    server = PrivateRedis()
    try:
        server.start()
        yield server
    finally:
        server.close()


def ledger_plan(run: FaultRun) -> list[dict[str, Any]]:
    """150 tasks in 6 layers, each agent sleeping between 0.2 and 1.0 s."""
    return sleeping_dag(run, WIDTH, DEPTH, AGENTS, lambda i: f"{0.2 + (i * 7 % 9) / 10:.1f}")


def workers_bound(server: PrivateRedis, names: list[str]) -> bool:
    """Whether every worker has declared its remote-control (pidbox) queue on this broker again: only a worker's
    consumer does, once it has reconnected."""
    import redis

    client = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2)
    members = " ".join(str(member) for member in client.smembers("_kombu.binding.celery.pidbox"))
    return all(f"{name}@" in members for name in names)


def logged_at(entry: dict[str, Any]) -> float:
    return datetime.fromisoformat(str(entry["timestamp"]).replace("Z", "+00:00")).timestamp()


@pytest.mark.timeout(150)
def test_broker_restart_loses_messages_and_the_plan_still_completes_once(
    postgres_url: str,
    private_redis: PrivateRedis,
    fault_run: FaultRun,
    make_cluster: Callable[..., Cluster],
    record_figures: RecordFigures,
) -> None:
    cluster = make_cluster(postgres_url, private_redis.url, **SETTINGS)
    cluster.start(WORKERS, fault_run.queues(AGENTS), concurrency=3)

    tasks = ledger_plan(fault_run)
    total = len(tasks)
    plan_id = submit_plan(fault_run, cluster.env, {"name": "broker-restart", "tasks": tasks})
    started = time.monotonic()

    with Store(postgres_url) as store:
        # An expired lease lives until the beat's next tick reaps it: a tick, plus the time a tick spends retrying
        # its publishing while the broker is away (about a second).
        watch = LeaseWatch(store, plan_id, grace=TICK + 2.8, count_unreachable=True)
        wait_mid_run(cluster, store, plan_id, watch, total // 3, 3, "a third of the plan done with attempts running")
        at_stop = store.status_counts(plan_id)
        backlog = redis_backlog(private_redis.url, fault_run)

        # The outage: the broker goes away with every message it held, and comes back empty.
        away = outage(private_redis, private_redis.stop_nosave, OUTAGE, cluster, watch)
        down_wall, up_wall = away.stopping, away.up
        broker_down = away.seconds

        rebound: list[float] = []  # when both workers were consuming from the new broker

        def reconnected() -> None:
            if not rebound and workers_bound(private_redis, WORKERS):
                rebound.append(time.monotonic())

        status = wait_for_plan(store, plan_id, 90, cluster=cluster, watch=watch, during=reconnected)
        finished = time.monotonic()
        cluster.check_alive()

    verdict = cluster.examine(plan_id, watch)
    attempts = verdict.snapshot.attempts
    reaped = [a for a in attempts if a.failure_class == "worker_lost"]
    first_claim = first_claim_after(attempts, up_wall)
    # Recovery: from the broker's return to the first attempt claimed (workers reconnected, messages re-sent).
    recovery = (first_claim.timestamp() - up_wall) if first_claim else float("nan")
    beat_log = cluster.json_log("beat")
    resent_after = sum(
        int(e.get("resent", 0)) for e in beat_log if e.get("event") == "tick" and logged_at(e) > down_wall
    )
    resent_total = sum(int(e.get("resent", 0)) for e in beat_log if e.get("event") == "tick")
    cancelled = cluster.log_count(CANCELLED_ON_LOSS)
    done_after = datetime.fromtimestamp(up_wall, UTC)
    succeeded_after = sum(
        1 for a in attempts if a.status == "succeeded" and a.finished_at and a.finished_at > done_after
    )

    figures = {
        **verdict.figures,
        "broker down": f"{broker_down:.1f}s",
        "in flight at stop (queued/running)": f"{at_stop.get('queued', 0)}/{at_stop.get('running', 0)}",
        "messages lost with the broker": backlog,
        "resent": f"{resent_after} after the stop ({resent_total} in all)",
        "cancelled on connection loss": cancelled,
        "reaped": len(reaped),
        "failed ticks": failed_ticks(beat_log),
        "workers back": f"{rebound[0] - (private_redis.started_at or 0.0):.1f}s" if rebound else "?",
        "recovery": f"{recovery:.1f}s",
        "done after restart": f"{finished - (private_redis.started_at or finished):.1f}s ({succeeded_after} tasks)",
        "run": f"{finished - started:.1f}s",
    }
    notes = list(verdict.notes)
    if watch.expired_seen:
        notes.append(
            f"{len(watch.expired_seen)} running attempts were seen on an expired lease before the reaper took them "
            f"(longest {watch.longest_expired:.1f}s over, grace {watch.grace:.1f}s)"
        )
    record_figures("4 broker restart", figures, notes)

    verdict.assert_ok()
    assert status == "succeeded", cluster.logs_tail()
    assert all(t.status == "succeeded" for t in verdict.snapshot.tasks)
    assert backlog > 0, "no message was waiting in the broker when it stopped: the scenario lost nothing"
    assert resent_after > 0, "the beat re-sent nothing after the broker came back"
    assert succeeded_after > 0
    assert reaped or not cancelled, "attempts were cancelled on the connection loss, but none was reaped"
