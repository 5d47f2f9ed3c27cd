"""Process supervision: agents run in their own process groups; whatever ends an attempt ends its group."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time

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


def install_termination_handler() -> None:
    """In a worker pool process: on SIGTERM (cold shutdown, pool terminate), take the agents down too."""

    def _on_term(signum: int, _frame: object) -> None:
        kill_all_groups()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, _on_term)
