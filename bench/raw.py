"""Part 1: raw Celery on the same broker with orch's settings — the floor orch's overhead is measured against.

- enqueue → start: `apply_async` of one task at a time, until its body starts (it pushes its start time);
- drain: N no-op messages published to one running worker; from the first publish until the queue is empty and
  nothing is left unacknowledged (polled every few ms: no timing code in the task itself);
- chain: a `chain` of no-op links, run `repeats` times; each body's start and end ride along with the chain, so
  a hop is a parent's body end → its child's body start;
- idle: the worker's CPU over a while of doing nothing.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from celery import chain

from bench.celery_raw import HOP, NOOP, RAW_QUEUE, STAMP, make_raw_app
from bench.infra import PYTHON, RUN_ID, BenchError, Child, Fleet, idle_cpu, pss_mib, redis_client, summary, wait_until
from bench.sizes import Size

# kombu's Redis transport keeps delivered, unacknowledged messages in this hash, each as [message, exchange,
# routing key]; it is shared by every queue of the database, so only this run's queue's entries are counted.
UNACKED = "unacked"


def worker_args(app: str, queue: str, name: str, concurrency: int) -> list[str]:
    """A worker command line; orch's and the raw baseline's differ only in the app, queue and name."""
    return [
        PYTHON, "-m", "celery", "-A", app, "worker",
        "-Q", queue,
        "-n", f"{name}@%h",
        "-c", str(concurrency),
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip


def run_raw(
    fleet: Fleet, env: dict[str, str], broker_url: str, size: Size, concurrency: int, folder: Path
) -> dict[str, Any]:
    app = make_raw_app(broker_url)
    client = redis_client(broker_url)
    client.delete(RAW_QUEUE)
    worker = fleet.start(
        "raw-worker", worker_args("bench.celery_raw:raw_app", RAW_QUEUE, f"raw-{RUN_ID}", concurrency), env,
        folder / "raw-worker.log", folder,
    )  # fmt: skip
    result: dict[str, Any] = {"concurrency": concurrency}
    try:
        started = time.monotonic()
        # Ready once it has run two stamp tasks per pool process.
        key = f"bench:{RUN_ID}:warm:{uuid.uuid4().hex}"
        for _ in range(concurrency * 2):
            app.send_task(STAMP, args=(key,), queue=RAW_QUEUE)
        wait_until(lambda: _alive_and(worker, lambda: client.llen(key) >= concurrency * 2), 120, "the raw worker")
        result["worker_start_s"] = time.monotonic() - started
        client.delete(key)

        result["enqueue_to_start_ms"] = summary(_enqueue_latency(app, client, worker, size.latency_samples))
        time.sleep(min(1.0, size.idle_seconds))
        result["idle_cpu_percent"] = idle_cpu({"worker": worker}, size.idle_seconds)["worker"]
        result["chain"] = _chains(app, client, worker, size.raw_chain, size.repeats)
        before = pss_mib(worker.tree())
        result["drain"] = _drain(app, client, worker, size.raw_drain)
        time.sleep(1.0)
        after = pss_mib(worker.tree())
        result["memory"] = {
            "measure": "PSS of the worker's main and pool processes, before and after the drain",
            "before_mib": before,
            "after_mib": after,
            "growth_kib_per_1000_tasks": (after - before) * 1024 / (size.raw_drain / 1000),
        }
    finally:
        fleet.stop(worker)
    return result


def _alive_and(worker: Child, condition: Any) -> bool:
    worker.check_alive()
    return bool(condition())


def _enqueue_latency(app: Any, client: Any, worker: Child, samples: int) -> list[float]:
    key = f"bench:{RUN_ID}:latency:{uuid.uuid4().hex}"
    latencies = []
    with app.producer_or_acquire() as producer:
        for _ in range(samples):
            sent = time.time()
            app.send_task(STAMP, args=(key,), queue=RAW_QUEUE, producer=producer)
            popped = client.blpop([key], timeout=30)
            if popped is None:
                worker.check_alive()
                raise BenchError("a raw stamp task did not run within 30s")
            latencies.append((float(popped[1]) - sent) * 1000)
    return latencies


def _chains(app: Any, client: Any, worker: Child, length: int, repeats: int) -> dict[str, Any]:
    """`repeats` chains one after another, their hops pooled (a single 200-link chain lasts about a second, so
    one run is at the mercy of whatever else the machine does in that second)."""
    runs = [_chain(app, client, worker, length) for _ in range(repeats)]
    hops = [hop for run in runs for hop in run["hops"]]
    quarter = max(1, (length - 1) // 4)
    by_quarter = [
        summary([hop for run in runs for hop in run["hops"][i : i + quarter]])["p50"]
        for i in range(0, quarter * 4, quarter)
    ]
    return {
        "length": length,
        "runs": repeats,
        "hop_ms": summary(hops),
        "hop_p50_per_run_ms": [summary(run["hops"])["p50"] for run in runs],
        # The first message carries the whole rest of the chain, and each hop one link less: hops get cheaper.
        "hop_ms_p50_by_quarter": by_quarter,
        "ms_per_task": sum(1000 * run["total_s"] / (length - 1) for run in runs) / repeats,
        "first_start_after_send_ms": [run["first_start_after_send_ms"] for run in runs],
    }


def _chain(app: Any, client: Any, worker: Child, length: int) -> dict[str, Any]:
    key = f"bench:{RUN_ID}:chain:{uuid.uuid4().hex}"
    links = [app.signature(HOP, args=([], length, key))]
    links += [app.signature(HOP, args=(length, key)) for _ in range(length - 1)]
    sent = time.time()
    chain(*links).apply_async()
    popped = client.blpop([key], timeout=max(60, length))
    if popped is None:
        worker.check_alive()
        raise BenchError(f"the raw chain of {length} did not finish")
    stamps = json.loads(popped[1])
    if len(stamps) != length:
        raise BenchError(f"the raw chain recorded {len(stamps)} links of {length}")
    return {
        "hops": [(stamps[i + 1][0] - stamps[i][1]) * 1000 for i in range(length - 1)],
        "total_s": stamps[-1][1] - stamps[0][0],
        "first_start_after_send_ms": (stamps[0][0] - sent) * 1000,
    }


def _drain(app: Any, client: Any, worker: Child, count: int) -> dict[str, Any]:
    """`count` no-op messages published while the worker runs; done when the queue is empty and nothing is
    unacknowledged, twice in a row 20 ms apart (a message between BRPOP and its unacked entry is in neither)."""

    def left() -> int:
        queued, unacked = client.pipeline().llen(RAW_QUEUE).hvals(UNACKED).execute()
        return int(queued) + sum(1 for entry in unacked if json.loads(entry)[2] == RAW_QUEUE)

    wait_until(lambda: left() == 0, 30, "the raw queue to be empty before the drain")  # the chain's last ack
    started = time.time()
    with app.producer_or_acquire() as producer:
        for _ in range(count):
            app.send_task(NOOP, queue=RAW_QUEUE, producer=producer)
    published = time.time()

    deadline = time.monotonic() + max(120.0, count / 50)
    while True:
        remaining = left()
        if not remaining:
            finished = time.time()
            time.sleep(0.02)
            if not left():
                break
        if time.monotonic() > deadline:
            raise BenchError(f"the raw worker did not drain {count} messages in time")
        worker.check_alive()
        # Poll lightly while much is left, every 2 ms near the end: the harness shares the cores.
        time.sleep(0.05 if remaining > 200 else 0.002)
    elapsed = finished - started
    return {
        "tasks": count,
        "publish_s": published - started,
        "elapsed_s": elapsed,
        "tasks_per_s": count / elapsed,
        "method": "first publish → queue empty and nothing unacknowledged (polled every 2 ms near the end)",
    }
