"""The liveness file a Kubernetes probe reads (deploy/k8s): a real `celery worker` and a real `celery beat` keep
touching it from their main process; a frozen one stops; a worker whose broker is away is not called hung, and
its main loop touches the file again once the broker is back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from orch.services.embedded import EmbeddedRedis
from tests.e2e.conftest import Processes, orch_env
from tests.helpers import wait_for

CELERY = [sys.executable, "-m", "celery", "-A", "orch"]
INTERVAL = 0.5


def age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")


def keeps_being_touched(path: Path, times: int = 3) -> None:
    for _ in range(times):
        before = path.stat().st_mtime

        def touched(before: float = before) -> bool:
            return path.exists() and path.stat().st_mtime > before

        wait_for(touched, 10, f"{path} to be touched")


@contextmanager
def frozen(process: subprocess.Popen[bytes]) -> Iterator[None]:
    os.kill(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(process.pid, signal.SIGCONT)


def start(
    role: list[str], broker_url: str, tmp_path: Path, processes: Processes
) -> tuple[subprocess.Popen[bytes], Path]:
    alive = tmp_path / "run" / "alive"
    env = orch_env(
        tmp_path, ORCH_BROKER_URL=broker_url, ORCH_LIVENESS_FILE=str(alive), ORCH_LIVENESS_SECONDS=str(INTERVAL)
    )
    log = tmp_path / f"{role[0]}.log"
    process = processes.start([*CELERY, *role], tmp_path, env, log)
    wait_for(alive.exists, 60, f"the liveness file of {role[0]}; its log:\n{log.read_text() if log.exists() else ''}")
    return process, alive


def test_worker_touches_the_liveness_file_until_its_loop_is_frozen(tmp_path: Path, processes: Processes) -> None:
    broker = EmbeddedRedis(log_path=tmp_path / "redis.log")
    broker_url = broker.start()
    try:
        worker, alive = start(
            ["worker", "-Q", "agent.general-purpose", "-c", "1", "-l", "INFO"], broker_url, tmp_path, processes
        )
        keeps_being_touched(alive)

        with frozen(worker):  # a hung main process
            wait_for(lambda: age(alive) > 6 * INTERVAL, 20, "the frozen worker's liveness file to grow old")
            frozen_at = alive.stat().st_mtime
        wait_for(lambda: alive.stat().st_mtime > frozen_at, 10, "the liveness file to be touched after SIGCONT")

        log = tmp_path / "worker.log"
        connected = log.read_text().count("Connected to ")
        broker.stop()  # a worker retrying its broker is waiting, not hung: a restart would not help
        wait_for(lambda: "Trying again" in log.read_text(), 30, "the worker to retry its broker")
        keeps_being_touched(alive)

        broker.folder.mkdir(parents=True, exist_ok=True)
        broker.start()  # the same socket, so the worker's broker URL again
        wait_for(lambda: log.read_text().count("Connected to ") > connected, 60, "the worker to reconnect")
        # Connected, the thread no longer touches the file: the main loop's timer does, as before the outage.
        keeps_being_touched(alive)
    finally:
        broker.stop()

    worker.send_signal(signal.SIGTERM)
    wait_for(lambda: worker.poll() is not None, 30, "the worker to stop on SIGTERM")
    assert not alive.exists(), "a worker that stopped cleanly removes its liveness file"


def test_beat_touches_the_liveness_file_until_frozen(
    embedded_redis_url: str, tmp_path: Path, processes: Processes
) -> None:
    beat, alive = start(["beat"], embedded_redis_url, tmp_path, processes)
    keeps_being_touched(alive)

    with frozen(beat):
        wait_for(lambda: age(alive) > 6 * INTERVAL, 20, "the frozen beat's liveness file to grow old")
        frozen_at = alive.stat().st_mtime
    wait_for(lambda: alive.stat().st_mtime > frozen_at, 10, "the liveness file to be touched after SIGCONT")
