"""The worker's liveness file, for a probe that reads its age (a `stat` in Kubernetes' exec probe): no Python start
and no broker round trip, unlike `celery inspect ping`.

The worker's own timer touches ORCH_LIVENESS_FILE every ORCH_LIVENESS_SECONDS. With the prefork and threads pools
that timer runs in the main process's event loop, which tasks never block, so a worker whose loop hangs stops
touching it. (The solo pool runs tasks in that loop: a long task there would look like a hang.)

While the worker has no broker connection (starting, or reconnecting after losing it) the loop does not run; a
thread touches the file meanwhile. It reads "no connection" as `consumer.connection is None`: Celery sets it so
until it connects, and, from 5.7 on (pyproject's lower bound), again as soon as it loses the broker. A worker
waiting for its broker is not hung, restarting it would not bring the broker back, and Celery gives up by itself
after `broker_connection_max_retries`."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from celery import bootsteps

from orch.services.liveness import touch
from orch.settings import get_settings


class LivenessFile(bootsteps.StartStopStep):  # type: ignore[misc]
    """A worker bootstep (`app.steps["worker"]`); included only when ORCH_LIVENESS_FILE is set."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        settings = get_settings()
        self.path = settings.liveness_file
        self.interval = settings.liveness_seconds
        self.entry: Any = None
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None

    def include_if(self, worker: Any) -> bool:
        return self.path is not None

    def start(self, worker: Any) -> None:
        assert self.path is not None  # include_if
        touch(self.path)
        self.entry = worker.timer.call_repeatedly(self.interval, touch, (self.path,), priority=10)
        self.stopped.clear()
        self.thread = threading.Thread(
            target=self._while_disconnected, args=(worker, self.path), name="orch-liveness", daemon=True
        )
        self.thread.start()

    def _while_disconnected(self, worker: Any, path: Path) -> None:
        while not self.stopped.wait(self.interval):
            consumer = getattr(worker, "consumer", None)
            if consumer is None or consumer.connection is None:
                touch(path)

    def stop(self, worker: Any) -> None:
        self.stopped.set()
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        if self.entry is not None:
            self.entry.cancel()
            self.entry = None
        if self.path is not None:
            self.path.unlink(missing_ok=True)

    terminate = stop
