"""Scenario 4: the broker restarts in the middle of a plan and forgets everything it held. A private
`redis-server` without persistence carries the messages of two workers and the beat; while the plan runs it is
shut down (`SHUTDOWN NOSAVE`), kept down for a few seconds and started again, empty, on the same port.

Expected: workers and beat reconnect by themselves; the messages the broker lost are re-sent by the beat
(ORCH_REDELIVER_SECONDS); attempts whose worker cancelled them on the connection loss are reaped when their
lease expires, and retried; the plan succeeds with every task committed exactly once."""

from __future__ import annotations

import json
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
    redis_backlog,
    submit_plan,
    wait_for_plan,
    wait_until,
)
from tests.faults.servers import GraceLeaseWatch, PrivateRedis
from tests.helpers import layered_dag

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
    tasks = layered_dag(width=WIDTH, depth=DEPTH, agents=AGENTS)
    for i, task in enumerate(tasks):
        task["command"] = run.agent_command("--sleep", f"{0.2 + (i * 7 % 9) / 10:.1f}")
    return tasks


def json_log(path: Path) -> list[dict[str, Any]]:
    """The structured (JSON) lines of a process's log; Celery's own lines are skipped."""
    entries = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return entries


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
    queues = [fault_run.queue(agent) for agent in AGENTS]
    for name in WORKERS:
        cluster.worker(name, queues, concurrency=3)
    cluster.beat()

    tasks = ledger_plan(fault_run)
    total = len(tasks)
    plan_id = submit_plan(fault_run, cluster.env, {"name": "broker-restart", "tasks": tasks})
    started = time.monotonic()

    with Store(postgres_url) as store:
        # An expired lease lives until the beat's next tick reaps it: a tick, plus the time a tick spends retrying
        # its publishing while the broker is away (about a second).
        watch = GraceLeaseWatch(store, plan_id, grace=TICK + 2.8)

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
            return now.get("succeeded", 0) >= total // 3 and now.get("running", 0) >= 3

        wait_until(mid_run, 60, "a third of the plan done with attempts running", interval=0.1)
        at_stop = counts()
        backlog = redis_backlog(private_redis.url, fault_run)

        # The outage: the broker goes away with every message it held, and comes back empty.
        down_wall = time.time()
        private_redis.stop_nosave()
        try:
            outage_end = time.monotonic() + OUTAGE
            while time.monotonic() < outage_end:  # the deliberate outage; the cluster must survive it
                cluster.check_alive()
                watch.sample()
                time.sleep(0.2)
        finally:
            private_redis.start()
        up_wall = time.time()
        assert private_redis.stopped_at is not None and private_redis.started_at is not None
        broker_down = private_redis.started_at - private_redis.stopped_at

        rebound: list[float] = []  # when both workers were consuming from the new broker

        def reconnected() -> None:
            if not rebound and workers_bound(private_redis, WORKERS):
                rebound.append(time.monotonic())

        status = wait_for_plan(store, plan_id, 90, cluster=cluster, watch=watch, during=reconnected)
        finished = time.monotonic()
        cluster.check_alive()

    verdict = examine(postgres_url, plan_id, fault_run.ledger, fault_run.marker, watch)
    attempts = verdict.snapshot.attempts
    reaped = [a for a in attempts if a.failure_class == "worker_lost"]
    first_claim_after = min(
        (a.started_at for a in attempts if a.started_at and a.started_at.timestamp() > up_wall), default=None
    )
    # Recovery: from the broker's return to the first attempt claimed (workers reconnected, messages re-sent).
    recovery = (first_claim_after.timestamp() - up_wall) if first_claim_after else float("nan")
    beat_log = json_log(cluster.log_paths["beat"])
    resent_after = sum(
        int(e.get("resent", 0)) for e in beat_log if e.get("event") == "tick" and logged_at(e) > down_wall
    )
    resent_total = sum(int(e.get("resent", 0)) for e in beat_log if e.get("event") == "tick")
    failed_ticks = sum(1 for e in beat_log if e.get("event") == "tick failed; retrying next tick")
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
        "failed ticks": failed_ticks,
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
