"""The raw Celery baseline's app: orch's own Celery settings (`orch.celery.celery_config`: late acks, prefetch 1,
reject on worker lost, events, JSON, no result backend), one queue of its own, and no-op tasks.

`celery -A bench.celery_raw:raw_app worker` runs it; the broker comes from ORCH_BROKER_URL, as orch's does."""

from __future__ import annotations

import json
import time
from typing import Any

from celery import Celery
from kombu import Exchange, Queue  # type: ignore[attr-defined]

from bench.infra import RUN_ID
from orch.celery import EXCHANGE, celery_config
from orch.intake.agents import load_agents
from orch.settings import get_settings

RAW_QUEUE = f"bench.{RUN_ID}.raw"
NOOP = "bench.noop"
STAMP = "bench.stamp"
HOP = "bench.hop"


def raw_config(broker_url: str | None = None) -> dict[str, Any]:
    """orch's Celery configuration, with the raw queue in place of the agent types' queues."""
    settings = get_settings()
    if broker_url is not None:
        settings = settings.model_copy(update={"broker_url": broker_url})
    config = celery_config(settings, load_agents(settings.config_dir))
    config.update(
        task_queues=[Queue(RAW_QUEUE, Exchange(EXCHANGE, type="direct"), routing_key=RAW_QUEUE)],
        task_default_queue=RAW_QUEUE,
        task_default_routing_key=RAW_QUEUE,
    )
    for beat_only in ("beat_scheduler", "beat_max_loop_interval"):
        config.pop(beat_only, None)
    return config


_redis: dict[str, Any] = {}


def _client(app: Celery) -> Any:
    from bench.infra import redis_client

    url = str(app.conf.broker_url)
    if url not in _redis:
        _redis[url] = redis_client(url)
    return _redis[url]


def make_raw_app(broker_url: str | None = None) -> Celery:
    app = Celery("bench_raw", set_as_current=False)
    app.conf.update(raw_config(broker_url))

    @app.task(name=NOOP, acks_late=True, ignore_result=True, shared=False)
    def noop() -> None:
        return None

    @app.task(name=STAMP, acks_late=True, ignore_result=True, shared=False)
    def stamp(key: str) -> None:
        """When this task's body started: for apply_async → start latency."""
        started = time.time()
        _client(app).rpush(key, repr(started))

    @app.task(name=HOP, acks_late=True, ignore_result=True, shared=False)
    def hop(stamps: list[list[float]], length: int, key: str) -> list[list[float]]:
        """One link of a chain: the start and end of each body so far ride along with the chain (whose message
        carries the remaining links anyway); the last link stores them."""
        started = time.time()
        stamps = [*stamps, [started]]
        if len(stamps) == length:
            stamps[-1].append(time.time())
            _client(app).rpush(key, json.dumps(stamps))
            return stamps
        stamps[-1].append(time.time())
        return stamps

    return app


raw_app = make_raw_app()
