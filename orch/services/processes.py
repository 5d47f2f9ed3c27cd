"""Process helpers: telling a process apart from a later one with its pid, children that die with their parent,
and the worker `orch run` embeds (its pool and beat processes die with its main process, which can tell `orch run`
why it stops). Executors, the sandbox, the worker, the beat, the tests and the bench use them; none of this needs the
embedded Redis (orch.services.embedded).

A SIGKILLed `orch run` leaves nothing running: the worker's main process gets SIGKILL when `orch run` exits
(PR_SET_PDEATHSIG); when it exits, its `-B` beat process gets SIGKILL and its pool processes SIGTERM, on which they
kill their agents' process groups and exit (`die_with_worker_main`, under RUNNER_ENV, which `orch run` sets on the
worker it embeds only).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from orch.records import ProcessIdentity

_PR_SET_PDEATHSIG = 1

# Set by `orch run` on the worker it embeds (the value: its pid): that worker's processes die with it.
RUNNER_ENV = "ORCH_RUN_PID"
# The write end of a pipe `orch run` reads: why its worker stops, when the worker's log may not be writable.
NOTICE_FD_ENV = "ORCH_RUN_NOTICE_FD"

_worker_main_pid: int | None = None
_notice_pipe: tuple[int, tuple[int, int]] | None = None  # its fd, and the (device, inode) it had at worker start


def this_process() -> ProcessIdentity | None:
    """This process as a later command can recognise it; None where there is no /proc to read its start from."""
    ticks = process_start_ticks(os.getpid())
    return None if ticks is None else ProcessIdentity(socket.gethostname(), os.getpid(), ticks)


def process_start_ticks(pid: int) -> int | None:
    """When the running (not zombie) process `pid` started, in clock ticks since boot; None if there is none."""
    try:
        line = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    fields = line.rsplit(b")", 1)[1].split()  # the command name, in parentheses, may hold spaces
    if fields[0] in (b"Z", b"X"):  # killed, not yet reaped by its parent
        return None
    return int(fields[19])


def process_alive(identity: ProcessIdentity) -> bool | None:
    """Whether `identity` still runs; None when this host cannot tell (another host, no /proc)."""
    if identity.host != socket.gethostname() or process_start_ticks(os.getpid()) is None:
        return None
    return process_start_ticks(identity.pid) == identity.start_ticks


def set_parent_death_signal(sig: int, parent_pid: int) -> None:
    """This process gets `sig` when the thread that started it exits (Linux); at once if `parent_pid`, the
    process that started it, is already gone."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, sig)
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


def die_with_parent(sig: int) -> Callable[[], None]:
    """A preexec_fn: the child gets `sig` when the process that started it exits (Linux)."""
    parent_pid = os.getpid()

    def _preexec() -> None:
        set_parent_death_signal(sig, parent_pid)

    return _preexec


def remember_worker_main() -> None:
    """In a worker's main process, before its pool and beat processes fork: they inherit whose children they are,
    and which pipe `orch run` reads (a process that closed its copy may have the number for another file)."""
    global _worker_main_pid, _notice_pipe
    _worker_main_pid = os.getpid()
    fd = os.environ.get(NOTICE_FD_ENV, "")
    with contextlib.suppress(OSError):
        if fd.isdigit() and stat.S_ISFIFO((info := os.fstat(int(fd))).st_mode):
            _notice_pipe = (int(fd), (info.st_dev, info.st_ino))


def in_embedded_worker() -> bool:
    return bool(os.environ.get(RUNNER_ENV))


def die_with_worker_main(sig: int) -> None:
    """In a pool process or the beat process of the worker `orch run` embeds: `sig` when the worker's main process
    exits (which itself gets SIGKILL when `orch run` does). Pools fork from the main thread (Celery's event loop
    starts no threads), whose exit is the process's. Nothing for a deployed worker."""
    if in_embedded_worker() and _worker_main_pid is not None and _worker_main_pid != os.getpid():
        set_parent_death_signal(sig, _worker_main_pid)


def stop_this_worker(reason: str) -> bool:
    """Ask this worker's main process for a warm shutdown (it takes no more tasks), and tell `orch run`, if it
    embeds this worker, why. False where no worker main process is known (a test's in-process worker)."""
    tell_runner(reason)
    if _worker_main_pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(_worker_main_pid, signal.SIGTERM)
    return True


def tell_runner(reason: str) -> None:
    """One line to the `orch run` that embeds this worker, through a pipe: its log may be on a full disk."""
    if _notice_pipe is None:
        return
    fd, identity = _notice_pipe
    # At most PIPE_BUF bytes: written whole, never interleaved with another process's line.
    line = " ".join(reason.split()).encode("utf-8", errors="replace")[:4000].decode("utf-8", errors="ignore")
    with contextlib.suppress(OSError):
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != identity:  # closed here (Celery's beat closes inherited fds), then reused
            return
        os.set_blocking(fd, False)  # a full pipe drops the line rather than block the worker
        os.write(fd, (line + "\n").encode("utf-8"))


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def stop_process(process: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    """Send `sig`, wait up to `timeout`, then SIGKILL."""
    if process.poll() is not None:
        return
    try:
        process.send_signal(sig)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    except ProcessLookupError:
        pass
