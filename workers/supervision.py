"""Process supervision: agents run in their own process groups; whatever ends an attempt ends its group."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator

import billiard.process

from orch.failures import FailureClass
from orch.log import get_logger
from workers import control

log = get_logger(__name__)

_running_groups: set[int] = set()
_sandboxes: set[int] = set()  # groups whose leader is bubblewrap, holding the agent in a pid namespace of its own
_groups_lock = threading.Lock()


def register_group(pgid: int, sandboxed: bool = False) -> None:
    with _groups_lock:
        _running_groups.add(pgid)
        if sandboxed:
            _sandboxes.add(pgid)


def unregister_group(pgid: int) -> None:
    with _groups_lock:
        _running_groups.discard(pgid)
        _sandboxes.discard(pgid)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_group(pgid: int, grace: float, leader: subprocess.Popen[bytes] | None = None) -> None:
    """SIGTERM the whole group, wait up to `grace` seconds, then SIGKILL what is left.

    A sandboxed agent's group is bubblewrap alone (the agent runs in new sessions inside its pid namespace), and
    bubblewrap dies of SIGTERM at once, taking the namespace down with SIGKILL. So there SIGTERM goes to what runs
    inside (bubblewrap's init ignores it), the sandbox ends when the agent's command does, and after the grace
    SIGKILL to bubblewrap ends all that is left."""
    with _groups_lock:
        sandboxed = pgid in _sandboxes
    try:
        if sandboxed:
            os.kill(pgid, 0)
            for pid in _descendants(pgid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGTERM)
        else:
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


_PR_SET_CHILD_SUBREAPER = 36
_subreaper = False


def become_subreaper() -> bool:
    """Make this process the reaper of its descendants' orphans (Linux), so an agent's daemon that left the
    process group with setsid becomes our child, and `kill_escaped` can end it. Only for a process whose
    children are agents alone (a prefork pool process)."""
    global _subreaper
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        _subreaper = libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        _subreaper = False
    return _subreaper


def _parents() -> dict[int, int]:
    """pid → parent pid of every process, from /proc (the host's pids, whatever namespace a process runs in)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
    return parents


def _children() -> list[int]:
    me = os.getpid()
    return [pid for pid, parent in _parents().items() if parent == me]


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for child, parent in _parents().items():
        children.setdefault(parent, []).append(child)
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_escaped() -> list[int]:
    """Kill (and reap) every child of this subreaper that is not a running agent's group leader: the
    processes that escaped a finished attempt's process group. Returns their pids."""
    if not _subreaper:
        return []
    killed: list[int] = []
    for _round in range(10):  # an escaped daemon's own orphans are re-parented to us as it dies
        with _groups_lock:
            running = set(_running_groups)
        strays = [pid for pid in _children() if pid not in running and pid not in killed]
        if not strays:
            break
        for pid in strays:
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill(pid, signal.SIGKILL)
            killed.append(pid)
        for pid in strays:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
    return killed


def end_agent(pgid: int, grace: float, leader: subprocess.Popen[bytes]) -> None:
    """End an attempt's agent: its process group (SIGTERM, grace, SIGKILL), its leader reaped, and whatever
    escaped the group."""
    kill_group(pgid, grace, leader=leader)
    leader.wait()
    unregister_group(pgid)
    escaped = kill_escaped()
    if escaped:
        log.warning("killed processes that escaped the agent's process group", pids=escaped)


def kill_all_groups(grace: float = 2.0) -> None:
    """Kill every agent process group this process started (on a pool process's termination)."""
    with _groups_lock:
        groups = list(_running_groups)
    for pgid in groups:
        kill_group(pgid, grace)


INTERRUPT_SIGNAL = signal.SIGUSR2  # worker main process → its pool processes: interrupt your attempts now


_spawning = 0  # agents being started in this process's main thread right now
_term_pending: int | None = None  # a SIGTERM that came while one was being started


@contextlib.contextmanager
def spawning() -> Iterator[None]:
    """Around starting an agent and registering its process group: a SIGTERM meanwhile (its handler runs between
    two bytecodes of this very thread, perhaps after the fork and before the registration) waits until the group
    is registered, so the handler's clean-up ends that agent too instead of leaving it behind."""
    global _spawning
    _spawning += 1
    try:
        yield
    finally:
        _spawning -= 1
        if _spawning == 0 and _term_pending is not None:
            _terminate(_term_pending)


def _terminate(signum: int) -> None:
    kill_all_groups()
    kill_escaped()
    os._exit(128 + signum)


def install_pool_process_handlers() -> None:
    """In a worker pool process: on SIGTERM (cold shutdown, pool terminate) take the agents down too; on
    INTERRUPT_SIGNAL (the shutdown grace is over) stop the running attempts, which re-queues them."""

    def _on_term(signum: int, _frame: object) -> None:
        global _term_pending
        if _spawning:
            _term_pending = signum
            return
        _terminate(signum)

    def _on_interrupt(_signum: int, _frame: object) -> None:
        stopped = control.stop_all(FailureClass.INTERRUPTED, SHUTDOWN_MESSAGE)
        if not stopped and _task_running:
            # A task with no agent running yet: it is waiting for its store (a claim retried while the store is
            # unreachable, for up to ORCH_STORE_RETRY_SECONDS). The worker is shutting down: stop waiting.
            raise ShutdownInterrupt(SHUTDOWN_MESSAGE)

    become_subreaper()
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(INTERRUPT_SIGNAL, _on_interrupt)


SHUTDOWN_MESSAGE = "interrupted: the worker shut down"


class ShutdownInterrupt(Exception):
    """Raised in a pool process's task that has no agent to stop when the shutdown grace is over (its store retries
    are in progress): the task gives its message back instead of waiting for the store."""


_task_running = False


@contextlib.contextmanager
def running_task() -> Iterator[None]:
    """Around a task in a pool process: the interrupt at the end of the shutdown grace may then end the task
    itself when it has no agent to stop."""
    global _task_running
    _task_running = True
    try:
        yield
    finally:
        _task_running = False


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
        log.info("shutdown grace over: running attempts interrupted", in_process=stopped, pool_processes=len(children))

    timer = threading.Timer(grace, interrupt)
    timer.daemon = True
    timer.start()
    return timer
