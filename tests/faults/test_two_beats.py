"""Scenario 6: two `celery -A orch beat` processes tick at once against one PostgreSQL store while a 2,000-task
DAG runs (noop tasks: orch's own dispatch path, no agents): the store's beat, and one limited to the plan the way
`orch run`'s is (ORCH_BEAT_PLANS; a second beat for the whole store is refused, tests/e2e/test_beat_guard.py).
Dispatchers serialise on a PostgreSQL advisory lock and claim by compare-and-set, so every task is enqueued
exactly once: one `queued` event and one attempt per task, and each message id received once by Celery."""

from __future__ import annotations

import time
from collections import Counter

import pytest

from orch.states import PLAN_FINAL
from tests.faults.cluster_faults import merge_figures, received_ids, submit_plans
from tests.faults.conftest import MakeCluster, RecordFigures
from tests.faults.harness import FaultRun, LeaseWatch, Store, examine, wait_until
from tests.helpers import layered_dag

pytestmark = [pytest.mark.faults, pytest.mark.redis, pytest.mark.postgres]

AGENTS = [
    "devops-engineer",
    "security-specialist",
    "backend-development",
    "frontend-development",
    "testing-specialist",
    "documentation-writer",
    "application-performance",
    "database-architect",
]
# One 2,000-task layered DAG. Two beats (the store's, and one limited to the plan) tick every 0.2 s and race each
# other and the four worker processes' fast paths, all dispatching under the one PostgreSQL advisory lock.
PLANS = 1
WIDTH, DEPTH = 200, 10
CONCURRENCY = 2
FINAL = {s.value for s in PLAN_FINAL}
BEATS = ["beat-a", "beat-b"]
WORKERS = ["noop-1", "noop-2"]
# No re-sending: a re-sent message carries the same id, and this scenario counts every receipt of an id.
CLOCKS = {"ORCH_TICK_SECONDS": "0.2", "ORCH_REDELIVER_SECONDS": "600"}


@pytest.mark.timeout(300)
def test_two_beats_enqueue_every_task_exactly_once(
    fault_run: FaultRun,
    pg_redis_cluster: MakeCluster,
    record_figures: RecordFigures,
) -> None:
    tasks = [{**task, "executor": "noop"} for task in layered_dag(WIDTH, DEPTH, agents=AGENTS)]
    cluster = pg_redis_cluster(**CLOCKS)
    # Celery logs every message it receives at INFO.
    cluster.start(WORKERS, fault_run.queues(AGENTS), CONCURRENCY, loglevel="INFO", beats=BEATS[:1])
    started = time.monotonic()  # the beats race from the first plan's arrival on
    documents = [{"name": f"twobeats-{i}", "tasks": tasks} for i in range(PLANS)]
    plan_ids = submit_plans(fault_run, cluster.env, documents)
    cluster.beat(BEATS[1], ORCH_BEAT_PLANS=",".join(plan_ids))
    with Store(cluster.database_url) as store:
        watches = [LeaseWatch(store, plan_id) for plan_id in plan_ids]

        def all_final() -> bool:
            cluster.check_alive()
            for watch in watches:
                watch.sample()
            return all(store.plan_status(plan_id) in FINAL for plan_id in plan_ids)

        wait_until(all_final, 240, f"{PLANS} plans to finish", interval=0.5)
        elapsed = time.monotonic() - started
    verdicts = [
        examine(cluster.database_url, p, None, fault_run.marker, w) for p, w in zip(plan_ids, watches, strict=True)
    ]
    cluster.stop_all()  # the workers flush their logs: every message they took is in them

    queued: Counter[tuple[str, int | None]] = Counter()
    attempts: Counter[tuple[str, int | None]] = Counter()
    expected_ids: set[str] = set()
    all_tasks: list[tuple[str, int | None]] = []
    for plan_id, verdict in zip(plan_ids, verdicts, strict=True):
        snapshot = verdict.snapshot
        queued.update((plan_id, e.task_pk) for e in snapshot.events if e.kind == "task" and e.new == "queued")
        attempts.update((plan_id, a.task_pk) for a in snapshot.attempts)
        expected_ids |= {f"{plan_id}.{t.key}.1" for t in snapshot.tasks}
        all_tasks += [(plan_id, t.pk) for t in snapshot.tasks]
    received = Counter(i for i in received_ids(cluster, WORKERS) if i.split(".", 1)[0] in plan_ids)
    # the beats' JSON "tick" lines (ORCH_LOG_FORMAT's default), one per tick that dispatched or re-sent
    ticks = {name: [int(e["dispatched"]) for e in cluster.json_log(name) if e.get("event") == "tick"] for name in BEATS}
    by_beats = sum(sum(found) for found in ticks.values())
    figures = {
        **merge_figures(v.figures for v in verdicts),
        "plans": PLANS,
        "enqueued twice": sum(1 for t in all_tasks if queued[t] > 1),
        "attempts twice": sum(1 for t in all_tasks if attempts[t] > 1),
        "received twice": sum(1 for n in received.values() if n > 1),
        "received": (len(received), len(all_tasks)),
        "dispatch ticks by beat A / B": " / ".join(str(sum(1 for n in ticks[name] if n)) for name in BEATS),
        "tasks dispatched by beat A / B / workers' fast path": " / ".join(
            [*(str(sum(ticks[name])) for name in BEATS), str(sum(queued.values()) - by_beats)]
        ),
        "seconds from first submit to last plan final": f"{elapsed:.1f}s",
    }
    record_figures("6 two beats", figures, [note for v in verdicts for note in v.notes][:1])

    for verdict in verdicts:
        verdict.assert_ok()
    assert all(v.snapshot.plan_status == "succeeded" for v in verdicts)
    assert len(all_tasks) == PLANS * WIDTH * DEPTH == 2000
    assert [t for t in all_tasks if queued[t] != 1] == [], "tasks not enqueued exactly once"
    assert [t for t in all_tasks if attempts[t] != 1] == [], "tasks with other than one attempt"
    assert set(received) == expected_ids, (len(set(received)), len(expected_ids))
    assert [i for i, n in received.items() if n > 1] == [], "message ids received more than once"
    # The workers' fast path dispatches most tasks; the beats race it and each other for the rest.
    assert by_beats > 0, f"no beat ever dispatched: {ticks}"
