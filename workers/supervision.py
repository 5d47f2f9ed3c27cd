"""Process supervision: agents run in their own process groups; whatever ends an attempt ends its group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time

import billiard.process

from orch.failures import FailureClass
from orch.log import get_logger
from workers import control

log = get_logger(__name__)

_running_groups: set[int] = set()
_groups_lock = threading.Lock()


def register_group(pgid: int) -> None:
    with _groups_lock:
        _running_groups.add(pgid)


def unregister_group(pgid: int) -> None:
    with _groups_lock:
        _running_groups.discard(pgid)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(pgid: int, grace: float, leader: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM the whole group, wait up to `grace` seconds, then SIGKILL what is left."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if leader is not None:
            leader.poll()  # reap the leader so the group can empty
        if not group_alive(pgid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def kill_all_groups(grace: float = 2.0) -> None:
    """Kill every agent process group this process started (on a pool process's termination)."""
    with _groups_lock:
        groups = list(_running_groups)
    for pgid in groups:
        kill_group(pgid, grace)


INTERRUPT_SIGNAL = signal.SIGUSR2  # worker main process → its pool processes: interrupt your attempts now


def install_pool_process_handlers() -> None:
    """In a worker pool process: on SIGTERM (cold shutdown, pool terminate) take the agents down too; on
    INTERRUPT_SIGNAL (the shutdown grace is over) stop the running attempts, which re-queues them."""

    def _on_term(signum: int, _frame: object) -> None:
        kill_all_groups()
        os._exit(128 + signum)

    def _on_interrupt(_signum: int, _frame: object) -> None:
        control.stop_all(FailureClass.INTERRUPTED, SHUTDOWN_MESSAGE)

    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(INTERRUPT_SIGNAL, _on_interrupt)


SHUTDOWN_MESSAGE = "interrupted: the worker shut down"


def interrupt_after_grace(grace: float) -> threading.Timer:
    """In the worker main process, at a warm shutdown: after `grace` seconds, interrupt every attempt still
    running, in this process (threads/solo pool) and in its pool processes (prefork)."""

    def interrupt() -> None:
        stopped = control.stop_all(FailureClass.INTERRUPTED, SHUTDOWN_MESSAGE)
        children = billiard.process.active_children()
        for child in children:
            if child.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, INTERRUPT_SIGNAL)
        log.warning("shutdown grace over: interrupting running attempts", in_process=stopped, pool=len(children))

    timer = threading.Timer(grace, interrupt)
    timer.daemon = True
    timer.start()
    return timer
