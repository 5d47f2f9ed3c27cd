"""The fault suite's shared machinery: a cluster of real `celery -A orch worker`s and a `celery -A orch beat`,
the fake agent's command line, and the oracle that judges a finished scenario from the store, the agents' own
execution ledger and /proc.

The oracle (`examine` / `check_invariants`) holds every scenario to the same invariants:

  (a) every task is in exactly one final state and the plan is final;
  (b) at most one success was committed per task, and it is backed by the ledger: the succeeded attempt's lease
      appears in exactly one completed run of the agent; no attempt number ran twice; no agent ran unclaimed;
  (c) the event log replays from `pending` through legal transitions only (orch.states.LEGAL_TRANSITIONS) and
      ends in each task's stored status;
  (d) no process carrying the scenario's marker is left;
  (e) no task is `running` without a live lease (a lease token, and `lease_expires_at` in the future by the
      database's clock once that column exists), in every sample taken while the plan ran.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from orch.services.processes import die_with_parent, stop_process
from orch.settings import normalise_database_url
from orch.states import LEGAL_TRANSITIONS, PLAN_FINAL, TERMINAL, TaskStatus
from tests.conftest import SANDBOX_READ
from tests.helpers import layered_dag, wait_for

FAULTS = Path(__file__).resolve().parent
REPO = FAULTS.parents[1]
LEDGER_AGENT = FAULTS / "ledger_agent.py"
PYTHON = sys.executable  # the venv's interpreter: workers and agents need not find it on PATH
CELERY = [PYTHON, "-m", "celery", "-A", "orch"]
ORCH = str(Path(PYTHON).parent / "orch")

# Short clocks so that every scenario runs in seconds. Variables orch does not know (yet) are ignored by it.
FAST_SETTINGS: dict[str, str] = {
    "ORCH_TICK_SECONDS": "0.2",
    "ORCH_REDELIVER_SECONDS": "5",
    "ORCH_HEARTBEAT_SECONDS": "1",
    "ORCH_LEASE_SECONDS": "6",
    "ORCH_KILL_GRACE_SECONDS": "1",
    "ORCH_RETRY_BACKOFF_BASE": "0.1",
    "ORCH_RETRY_BACKOFF_MAX": "1",
    "ORCH_SHUTDOWN_GRACE": "2",
    "ORCH_LOG_MAX_BYTES": str(1024 * 1024),
    "ORCH_OUTPUT_TAIL_BYTES": "8192",
}

Figure = int | float | str | tuple[int, int]
Figures = dict[str, Figure]


def format_figures(figures: Mapping[str, Figure]) -> str:
    """`tasks lost: 0/300  committed twice: 0/300 ...`"""
    parts = []
    for name, value in figures.items():
        if isinstance(value, tuple):
            shown = f"{value[0]}/{value[1]}"
        elif isinstance(value, float):
            shown = f"{value:.2f}"
        else:
            shown = str(value)
        parts.append(f"{name}: {shown}")
    return "  ".join(parts)


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """tests.helpers.wait_for, polling every `interval` (0.1 s by default): the condition's truthy value."""
    return wait_for(condition, timeout, what, interval=interval)


# --- a scenario's run: its folder, marker and ledger -----------------------------------------------------


@dataclass
class FaultRun:
    """One scenario's scratch folder, the unique marker every agent it starts carries, and the ledger file.

    The run also has its own copy of config/ in which every agent type's queue is named after the marker, so
    scenarios on a shared broker (concurrent test runs, another developer's workers) never see each other's
    messages."""

    folder: Path
    marker: str = field(default_factory=lambda: f"orchfault-{uuid.uuid4().hex[:12]}")

    @property
    def ledger(self) -> Path:
        return self.folder / "ledger.jsonl"

    @property
    def logs(self) -> Path:
        path = self.folder / "logs"
        path.mkdir(exist_ok=True)
        return path

    @property
    def config_dir(self) -> Path:
        path = self.folder / "config"
        if not path.exists():
            import yaml

            shutil.copytree(REPO / "config", path)
            agents_file = path / "agents.yaml"
            document = yaml.safe_load(agents_file.read_text(encoding="utf-8"))
            for spec in document["agent_types"]:
                spec["queue"] = self.queue(spec["name"])
            agents_file.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        return path

    @property
    def queue_prefix(self) -> str:
        """Names the run's queues; unlike the marker, it is on the workers' command lines (not an agent's)."""
        return self.marker.replace("orchfault-", "orchq-")

    def queue(self, agent: str) -> str:
        return f"{self.queue_prefix}.{agent}"

    def queues(self, agents: Iterable[str]) -> list[str]:
        return [self.queue(agent) for agent in agents]

    def agent_exec(self, *flags: str) -> str:
        """`exec` of the ledger agent with `flags`, writing to this run's ledger (not yet marked: see below)."""
        args = [PYTHON, str(LEDGER_AGENT), "--ledger", str(self.ledger), *flags]
        return "exec " + " ".join(shlex.quote(a) for a in args)

    def agent_command(self, *flags: str) -> str:
        """The shell command of a ledger-agent task. The marker is in its environment (inherited by anything it
        starts) and on its command line, so a leftover process of this run is found in /proc."""
        return self.marked_shell(self.agent_exec(*flags))

    def marked_shell(self, script: str) -> str:
        """A shell command whose processes (and their children) all carry the marker."""
        return f"FAULT_MARKER={self.marker}; export FAULT_MARKER; {script}"

    def ledger_lines(self) -> list[dict[str, Any]]:
        return read_ledger(self.ledger)

    def leftovers(self) -> list[str]:
        return marked_processes(self.marker)

    def kill_leftovers(self) -> list[str]:
        return kill_marked(self.marker)


def read_ledger(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- processes ----------------------------------------------------------------------------------------


def _proc_text(pid: str, name: str) -> str:
    try:
        return Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def marked_processes(marker: str) -> list[str]:
    """Live processes (not zombies) whose command line or environment carries `marker`: `pid: cmdline`."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        cmdline = _proc_text(pid, "cmdline")
        if not cmdline:  # a zombie or a kernel thread: nothing left running
            continue
        if marker in cmdline or marker in _proc_text(pid, "environ"):
            found.append(f"{pid}: {cmdline.strip()[:200]}")
    return found


def kill_marked(marker: str) -> list[str]:
    """SIGKILL every process carrying `marker`; returns what it found."""
    found = marked_processes(marker)
    for entry in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(int(entry.split(":", 1)[0]), signal.SIGKILL)
    return found


def cluster_env(run: FaultRun, database_url: str, broker_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(
        {
            "ORCH_HOME": str(run.folder / ".orch"),
            "ORCH_CONFIG_DIR": str(run.config_dir),
            "ORCH_DATABASE_URL": database_url,
            "ORCH_BROKER_URL": broker_url,
            **SANDBOX_READ,
            **FAST_SETTINGS,
        }
    )
    env.update(extra)
    return env


def spawn(
    args: Sequence[str],
    log: Path,
    cwd: Path,
    env: Mapping[str, str] | None,
    death_signal: int = signal.SIGKILL,
    account: tuple[int, int] | None = None,
) -> subprocess.Popen[bytes]:
    """A child process in a session of its own, its output appended to `log`, that gets `death_signal` if the test
    process dies (PR_SET_PDEATHSIG); run as `account` (uid, gid) if given, else as the test process."""
    with log.open("ab") as out:
        return subprocess.Popen(
            list(args),
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(death_signal),
            user=account[0] if account else None,
            group=account[1] if account else None,
            extra_groups=[] if account else None,
        )


def end_session(process: subprocess.Popen[bytes], sig: int, timeout: float) -> None:
    """Send `sig` to a process started by `spawn` and wait for it (SIGKILL after `timeout`), then SIGKILL whatever
    it left in its process group."""
    stop_process(process, sig, timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


class Cluster:
    """Real `celery -A orch worker`s and `celery -A orch beat`s as child processes, each in its own session and
    killed if the test process dies, each logging to `<name>.log` in the run's logs folder. `stop()` ends them and
    every process carrying the run's marker."""

    def __init__(self, run: FaultRun, database_url: str, broker_url: str, **extra_env: str) -> None:
        self.run = run
        self.env = cluster_env(run, database_url, broker_url, **extra_env)
        self.database_url = database_url
        self.broker_url = broker_url
        self._processes: dict[str, subprocess.Popen[bytes]] = {}  # those running on purpose: see `forget`
        self._logs: dict[str, Path] = {}  # every process's log, forgotten or not

    def _spawn(self, name: str, args: list[str], **extra_env: str) -> subprocess.Popen[bytes]:
        log = self.run.logs / f"{name}.log"
        process = spawn(args, log, self.run.folder, {**self.env, **extra_env})
        self._processes[name] = process
        self._logs[name] = log
        return process

    def worker(
        self, name: str, queues: Iterable[str], concurrency: int = 4, loglevel: str | None = None
    ) -> subprocess.Popen[bytes]:
        """A worker named `name@%h` reading `queues`; with `loglevel` INFO, Celery logs every message it receives."""
        args = [*CELERY, "worker", "-Q", ",".join(sorted(set(queues))), "-n", f"{name}@%h", "-c", str(concurrency)]
        if loglevel:
            args += ["-l", loglevel]
        return self._spawn(name, [*args, "--without-mingle", "--without-gossip"])

    def beat(self, name: str = "beat", schedule: Path | None = None, **extra_env: str) -> subprocess.Popen[bytes]:
        """A beat named `name`, with a schedule file of its own (by default `<name>-schedule` in the run's folder),
        so that several may run at once (one for the whole store, others limited to plans by ORCH_BEAT_PLANS)."""
        schedule = schedule or self.run.folder / f"{name}-schedule"
        return self._spawn(name, [*CELERY, "beat", "-s", str(schedule)], **extra_env)

    def start(
        self,
        workers: Sequence[str],
        queues: Sequence[str],
        concurrency: int,
        loglevel: str | None = None,
        beats: Sequence[str] = ("beat",),
    ) -> list[subprocess.Popen[bytes]]:
        """The usual cluster: `workers` on `queues`, then `beats`. Returns the workers' processes, in order."""
        processes = [self.worker(name, queues, concurrency, loglevel) for name in workers]
        for name in beats:
            self.beat(name)
        return processes

    def forget(self, name: str) -> subprocess.Popen[bytes]:
        """Take a process the scenario ended on purpose out of the cluster (its log stays readable), so that
        `check_alive` does not count it as a crash; reaps it."""
        process = self._processes.pop(name)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        return process

    def check_alive(self) -> None:
        """Fail at once, with its log, if a process of the cluster exited."""
        for name, process in self._processes.items():
            if process.poll() is not None:
                raise AssertionError(
                    f"{name} exited with {process.returncode}; its log ends with:\n{self.log_tail(name)}"
                )

    def log_text(self, name: str) -> str:
        path = self._logs.get(name)
        return path.read_text(errors="replace") if path and path.exists() else ""

    def log_tail(self, name: str, chars: int = 3000) -> str:
        return self.log_text(name)[-chars:]

    def logs_tail(self) -> str:
        return "\n".join(f"--- {name}\n{self.log_tail(name)}" for name in self._processes)

    def log_count(self, text: str) -> int:
        return sum(self.log_text(name).count(text) for name in self._logs)

    def json_log(self, name: str) -> list[dict[str, Any]]:
        """The structured (JSON) lines of a process's log (ORCH_LOG_FORMAT=json); Celery's own lines are skipped."""
        entries = []
        for line in self.log_text(name).splitlines():
            if line.startswith("{"):
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return entries

    def examine(self, plan_id: str, watch: LeaseWatch | None = None) -> Verdict:
        """The oracle's verdict on a plan this cluster ran, its agents writing to the run's ledger."""
        return examine(self.database_url, plan_id, self.run.ledger, self.run.marker, watch)

    def stop_all(self, timeout: float = 20) -> None:
        """Stop every process of the cluster at once (SIGTERM, then SIGKILL after `timeout`), rather than one after
        the other as `stop` does: an idle Celery worker alone takes seconds to shut down. Their logs are complete
        once it returns."""
        processes = list(self._processes.values())
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # what is left of it, or of its group
            process.poll()
        self._processes.clear()

    def stop(self) -> None:
        for process in reversed(list(self._processes.values())):
            end_session(process, signal.SIGTERM, 15)
        self.run.kill_leftovers()  # agents run in their own process groups

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def run_orch(
    args: list[str], cwd: Path, env: Mapping[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The real `orch` command line."""
    return subprocess.run(
        [ORCH, *args],
        cwd=cwd,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


# --- reading the store ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskState:
    pk: int
    key: str
    status: str
    attempt: int
    lease: str | None
    lease_expires_at: datetime | None
    queue: str
    command: str | None


@dataclass(frozen=True)
class AttemptState:
    task_pk: int
    number: int
    lease: str
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    failure_class: str | None
    error: str | None
    log_path: str | None
    output_tail: str


@dataclass(frozen=True)
class EventState:
    pk: int
    task_pk: int | None
    attempt: int | None
    kind: str
    old: str | None
    new: str | None
    detail: str | None


@dataclass
class StoreSnapshot:
    plan_status: str | None
    tasks: list[TaskState]
    attempts: list[AttemptState]
    events: list[EventState]
    has_lease_expiry: bool
    db_now: datetime

    def task(self, key: str) -> TaskState:
        return next(t for t in self.tasks if t.key == key)

    def attempts_of(self, key: str) -> list[AttemptState]:
        pk = self.task(key).pk
        return sorted((a for a in self.attempts if a.task_pk == pk), key=lambda a: a.number)

    def transitions_of(self, key: str) -> list[str]:
        pk = self.task(key).pk
        return [e.new or "" for e in self.events if e.kind == "task" and e.task_pk == pk]


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Store:
    """Read-only view of an orch store by reflection, so it follows the schema as migrations change it."""

    def __init__(self, database_url: str) -> None:
        self.engine = sa.create_engine(normalise_database_url(database_url))
        self._tables: dict[str, sa.Table] = {}

    def table(self, name: str) -> sa.Table:
        if name not in self._tables:
            self._tables[name] = sa.Table(name, sa.MetaData(), autoload_with=self.engine)
        return self._tables[name]

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def db_now(self, conn: sa.Connection) -> datetime:
        if self.engine.dialect.name == "postgresql":
            value = conn.execute(sa.text("SELECT now()")).scalar_one()
        elif self.engine.dialect.name == "sqlite":
            raw = conn.execute(sa.text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')")).scalar_one()
            value = datetime.fromisoformat(str(raw))
        else:
            value = datetime.now(UTC)
        result = _aware(value)
        assert result is not None
        return result

    def plan_count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(self.table("plans"))).scalar_one())

    def plan_status(self, plan_id: str) -> str | None:
        plans = self.table("plans")
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(plans.c.status).where(plans.c.id == plan_id)).scalar_one_or_none()
        return None if value is None else str(value)

    def status_counts(self, plan_id: str) -> dict[str, int]:
        """How many of the plan's tasks are in each status."""
        with self.engine.connect() as conn:
            return dict(Counter(task.status for task in self.tasks(conn, plan_id)))

    def tasks(self, conn: sa.Connection, plan_id: str, statuses: Iterable[str] | None = None) -> list[TaskState]:
        tasks = self.table("tasks")
        has_expiry = "lease_expires_at" in tasks.c
        query = sa.select(tasks).where(tasks.c.plan_id == plan_id)
        if statuses is not None:
            query = query.where(tasks.c.status.in_(list(statuses)))
        return [
            TaskState(
                pk=row.pk,
                key=row.key,
                status=str(row.status),
                attempt=row.attempt,
                lease=row.lease,
                lease_expires_at=_aware(row.lease_expires_at) if has_expiry else None,
                queue=row.queue,
                command=row.command,
            )
            for row in conn.execute(query.order_by(tasks.c.pk))
        ]

    def snapshot(self, plan_id: str) -> StoreSnapshot:
        tasks_t, attempts_t, events_t = self.table("tasks"), self.table("attempts"), self.table("events")
        with self.engine.connect() as conn:
            plan_status = conn.execute(
                sa.select(self.table("plans").c.status).where(self.table("plans").c.id == plan_id)
            ).scalar_one_or_none()
            tasks = self.tasks(conn, plan_id)
            pks = sa.select(tasks_t.c.pk).where(tasks_t.c.plan_id == plan_id)
            attempts = [
                AttemptState(
                    task_pk=row.task_pk,
                    number=row.number,
                    lease=row.lease,
                    status=str(row.status),
                    started_at=_aware(row.started_at),
                    finished_at=_aware(row.finished_at),
                    failure_class=row.failure_class,
                    error=row.error,
                    log_path=row.log_path,
                    output_tail=row.output_tail or "",
                )
                for row in conn.execute(sa.select(attempts_t).where(attempts_t.c.task_pk.in_(pks)))
            ]
            events = [
                EventState(row.pk, row.task_pk, row.attempt, row.kind, row.old, row.new, row.detail)
                for row in conn.execute(
                    sa.select(events_t).where(events_t.c.plan_id == plan_id).order_by(events_t.c.pk)
                )
            ]
            now = self.db_now(conn)
        return StoreSnapshot(
            plan_status=None if plan_status is None else str(plan_status),
            tasks=tasks,
            attempts=attempts,
            events=events,
            has_lease_expiry="lease_expires_at" in tasks_t.c,
            db_now=now,
        )


class LeaseWatch:
    """Samples, while a plan runs, that every `running` task holds a live lease (invariant e).

    A running task must always hold a lease token. With no `grace`, an expired lease is a violation at once. With
    a `grace` (seconds, by the database's clock), for scenarios that kill or freeze a worker or take a service
    away, a lease may stay expired that long: the time the design gives the reaper to notice (a tick), or after an
    outage the workers to renew (the beat waits one lease period before it reaps); an expired lease older than
    that is a task nobody is taking care of. A lease that expired while the store was away is judged from the
    store's return (`store_back_at`, a database-clock time the scenario sets): nobody could renew or reap it
    meanwhile. `expired_seen` keeps, for each (task, lease), the longest expiry seen.

    With `count_unreachable`, samples that fail because the store is away are counted in `unreachable`, not
    raised."""

    def __init__(self, store: Store, plan_id: str, grace: float = 0.0, count_unreachable: bool = False) -> None:
        self.store = store
        self.plan_id = plan_id
        self.grace = grace
        self.count_unreachable = count_unreachable
        self.store_back_at: datetime | None = None
        self.observations = 0
        self.violations: dict[tuple[str, str | None], str] = {}
        self.expired_seen: dict[tuple[str, str | None], float] = {}  # (task, lease) → longest expiry seen
        self.unreachable = 0

    def sample(self) -> None:
        try:
            with self.store.engine.connect() as conn:
                now = self.store.db_now(conn)
                running = self.store.tasks(conn, self.plan_id, [TaskStatus.RUNNING.value])
        except sa.exc.OperationalError:
            if not self.count_unreachable:
                raise
            self.unreachable += 1
            return
        for task in running:
            self.observations += 1
            problem = self.problem(task, now)
            if problem:
                self.violations.setdefault((task.key, task.lease), problem)

    def problem(self, task: TaskState, now: datetime) -> str | None:
        if not task.lease or task.lease_expires_at is None or task.lease_expires_at > now:
            return running_lease_problem(task, now)  # no token: a violation; a live lease: none
        since = task.lease_expires_at
        if self.store_back_at is not None and self.store_back_at > since:
            since = self.store_back_at
        overdue = (now - since).total_seconds()
        key = (task.key, task.lease)
        self.expired_seen[key] = max(overdue, self.expired_seen.get(key, 0.0))
        if not self.grace:
            return running_lease_problem(task, now)
        if overdue > self.grace:
            return (
                f"task {task.key!r} is running on a lease expired {overdue:.1f}s ago (grace {self.grace:.1f}s; "
                f"expired {task.lease_expires_at.isoformat()}, judged from {since.isoformat()})"
            )
        return None

    @property
    def longest_expired(self) -> float:
        """The longest a running task was seen on an expired lease (from `store_back_at`, if later), in seconds."""
        return max(self.expired_seen.values(), default=0.0)


def running_lease_problem(task: TaskState, now: datetime) -> str | None:
    if not task.lease:
        return f"task {task.key!r} is running without a lease"
    if task.lease_expires_at is not None and task.lease_expires_at <= now:
        return f"task {task.key!r} is running on an expired lease (expired {task.lease_expires_at.isoformat()})"
    return None


def wait_for_plan(
    store: Store,
    plan_id: str,
    timeout: float,
    cluster: Cluster | None = None,
    watch: LeaseWatch | None = None,
    during: Callable[[], None] | None = None,
    interval: float = 0.2,
) -> str:
    """Wait until the plan is final, sampling leases and running `during` on every poll; its final status."""

    def final() -> str | None:
        if cluster is not None:
            cluster.check_alive()
        if watch is not None:
            watch.sample()
        if during is not None:
            during()
        status = store.plan_status(plan_id)
        return status if status in {s.value for s in PLAN_FINAL} else None

    try:
        return str(wait_until(final, timeout, f"plan {plan_id} to finish", interval=interval))
    except AssertionError as exc:
        if cluster is not None:
            raise AssertionError(f"{exc}; process logs:\n{cluster.logs_tail()}") from None
        raise


# --- the oracle ---------------------------------------------------------------------------------------


@dataclass
class Verdict:
    figures: Figures
    problems: list[str]
    notes: list[str]
    snapshot: StoreSnapshot
    ledger: list[dict[str, Any]]

    def assert_ok(self) -> None:
        if self.problems:
            shown = "\n  ".join(self.problems[:40])
            more = f"\n  ... and {len(self.problems) - 40} more" if len(self.problems) > 40 else ""
            raise AssertionError(f"fault-suite invariants violated ({format_figures(self.figures)}):\n  {shown}{more}")


def replay_transitions(snapshot: StoreSnapshot) -> tuple[int, list[str], int]:
    """Replay every task's events from `pending`: (transitions, problems, events that did not name their old
    state). An event's stated old state must be the replayed one; each step must be legal; the replay must end
    in the task's stored status."""
    state = {t.pk: TaskStatus.PENDING for t in snapshot.tasks}
    key_of = {t.pk: t.key for t in snapshot.tasks}
    problems: list[str] = []
    transitions = unnamed = 0
    for event in snapshot.events:
        if event.kind != "task" or event.task_pk is None:
            continue
        if event.task_pk not in state:
            problems.append(f"event {event.pk} names task pk {event.task_pk}, not of this plan")
            continue
        key = key_of[event.task_pk]
        current = state[event.task_pk]
        transitions += 1
        try:
            new = TaskStatus(str(event.new))
        except ValueError:
            problems.append(f"task {key!r}: event {event.pk} has unknown new status {event.new!r}")
            continue
        if event.old is None:
            unnamed += 1
        elif event.old != current.value:
            problems.append(
                f"task {key!r}: event {event.pk} says {event.old} -> {new.value}, but the log had it {current.value}"
            )
        if (current, new) not in LEGAL_TRANSITIONS:
            problems.append(f"task {key!r}: illegal transition {current.value} -> {new.value} (event {event.pk})")
        state[event.task_pk] = new
    for task in snapshot.tasks:
        if state[task.pk].value != task.status:
            problems.append(
                f"task {task.key!r}: the event log ends in {state[task.pk].value}, the store says {task.status}"
            )
    return transitions, problems, unnamed


def examine(
    database_url: str,
    plan_id: str,
    ledger_path: Path | None = None,
    marker: str | None = None,
    watch: LeaseWatch | None = None,
) -> Verdict:
    """Judge a finished scenario. Tasks whose `command` names the ledger file are held to the ledger checks.
    Leftover processes are those carrying `marker` (by default the ledger's path, on every agent's command line)."""
    marker = marker or (str(ledger_path) if ledger_path else None)
    with Store(database_url) as store:
        snapshot = store.snapshot(plan_id)
    ledger = [line for line in read_ledger(ledger_path) if line.get("plan") == plan_id] if ledger_path else []
    problems: list[str] = []
    notes: list[str] = []
    tasks = snapshot.tasks
    total = len(tasks)
    by_pk = {t.pk: t for t in tasks}

    # (a) every task final, exactly one state each (a row has one status; it must be a final one), plan final.
    if snapshot.plan_status is None:
        problems.append(f"plan {plan_id} is not in the store")
    elif snapshot.plan_status not in {s.value for s in PLAN_FINAL}:
        problems.append(f"plan {plan_id} is {snapshot.plan_status}, not final")
    terminal = {s.value for s in TERMINAL}
    lost = [t for t in tasks if t.status not in terminal]
    problems.extend(f"task {t.key!r} ended {t.status}, not a final state" for t in lost)

    # (b) at most one committed success per task, backed by exactly one completed run of that attempt.
    succeeded_attempts: dict[int, list[AttemptState]] = defaultdict(list)
    claimed: dict[tuple[int, int], AttemptState] = {}
    for attempt in snapshot.attempts:
        claimed[(attempt.task_pk, attempt.number)] = attempt
        if attempt.status == "succeeded":
            succeeded_attempts[attempt.task_pk].append(attempt)
    twice = [pk for pk, rows in succeeded_attempts.items() if len(rows) > 1]
    problems.extend(f"task {by_pk[pk].key!r}: {len(succeeded_attempts[pk])} succeeded attempts" for pk in twice)
    for task in tasks:
        if task.status == TaskStatus.SUCCEEDED.value and not succeeded_attempts.get(task.pk):
            # `orch skip` may succeed a task without an attempt; no scenario here skips.
            problems.append(f"task {task.key!r} is succeeded without a succeeded attempt")

    ledger_keys = {t.key for t in tasks if ledger_path is not None and t.command and str(ledger_path) in t.command}
    pk_of = {t.key: t.pk for t in tasks}
    starts = Counter((line["task"], line["attempt"]) for line in ledger if line["event"] == "start")
    ok_ends = Counter((line["task"], line["lease"]) for line in ledger if line["event"] == "end" and line.get("ok"))
    run_twice = sum(n - 1 for n in starts.values() if n > 1)
    problems.extend(f"task {k!r}: attempt {a} ran {n} times" for (k, a), n in starts.items() if n > 1)
    unclaimed = 0
    for line in ledger:
        if line["event"] != "start":
            continue
        row = claimed.get((pk_of.get(line["task"], -1), line["attempt"]))
        if row is None or row.lease != line["lease"]:
            unclaimed += 1
            problems.append(
                f"task {line['task']!r}: an agent ran attempt {line['attempt']} under lease {line['lease']!r}, "
                "which no attempt in the store holds"
            )
    for key in sorted(ledger_keys):
        for attempt in succeeded_attempts.get(pk_of[key], []):
            completed = ok_ends[(key, attempt.lease)]
            if completed != 1:
                problems.append(
                    f"task {key!r}: its committed success (attempt {attempt.number}) is backed by {completed} "
                    "completed runs in the ledger, not 1"
                )

    # (c) legal transitions only.
    transitions, transition_problems, unnamed = replay_transitions(snapshot)
    problems.extend(transition_problems)
    illegal = sum(1 for p in transition_problems if "illegal transition" in p)
    if unnamed:
        notes.append("orch's queued and cancel events do not record the old state; the oracle replays it")

    # (d) no agent process left.
    leftovers = marked_processes(marker) if marker else []
    problems.extend(f"process left behind: {entry}" for entry in leftovers)

    # (e) no running task without a live lease: now, and in every sample taken while the plan ran.
    observations = watch.observations if watch else 0
    lease_violations = dict(watch.violations) if watch else {}
    for task in tasks:
        if task.status == TaskStatus.RUNNING.value:
            observations += 1
            problem = running_lease_problem(task, snapshot.db_now)
            if problem:
                lease_violations.setdefault((task.key, task.lease), problem)
    problems.extend(lease_violations.values())
    if not snapshot.has_lease_expiry:
        notes.append("tasks.lease_expires_at does not exist in this store: lease expiry not checked, only its token")

    figures: Figures = {
        "tasks": total,
        "tasks lost": (len(lost), total),
        "committed twice": (len(twice), total),
        "attempts run twice": (run_twice, len(snapshot.attempts)),
        "unclaimed runs": unclaimed,
        "illegal transitions": (illegal, transitions),
        "leftover processes": len(leftovers),
        "running without live lease": (len(lease_violations), observations),
    }
    return Verdict(figures, problems, notes, snapshot, ledger)


def check_invariants(database_url: str, plan_id: str, ledger_path: Path | None, marker: str | None = None) -> Figures:
    """The oracle in one call: judge the scenario, fail listing every violation, else return its figures."""
    verdict = examine(database_url, plan_id, ledger_path, marker)
    verdict.assert_ok()
    return verdict.figures


@contextlib.contextmanager
def cleanup(run: FaultRun) -> Iterator[FaultRun]:
    """Whatever happens in the block, no process carrying the run's marker survives it."""
    try:
        yield run
    finally:
        run.kill_leftovers()


def sleeping_dag(
    run: FaultRun, width: int, depth: int, agents: list[str], sleep: Callable[[int], str], **fields: Any
) -> list[dict[str, Any]]:
    """`layered_dag(width, depth)` on `agents` whose i-th task is a ledger agent sleeping `sleep(i)` seconds, with
    `fields` added to every task."""
    return [
        {**task, "command": run.agent_command("--sleep", sleep(i)), **fields}
        for i, task in enumerate(layered_dag(width, depth, agents=agents))
    ]


def submit_plan(run: FaultRun, env: Mapping[str, str], document: Mapping[str, Any], name: str = "plan.yaml") -> str:
    """Store a plan with the real `orch submit`; its id."""
    import yaml

    plan_file = run.folder / name
    plan_file.write_text(yaml.safe_dump(dict(document), sort_keys=False))
    result = run_orch(["submit", str(plan_file)], run.folder, env)
    assert result.returncode == 0, f"orch submit failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result.stdout.strip().splitlines()[-1]


# --- the broker ---------------------------------------------------------------------------------------


def publisher_app(run: FaultRun, broker_url: str) -> Any:
    """A Celery app of this process that knows the run's queues, pointed at `broker_url` (to send messages)."""
    from orch.celery import make_app
    from orch.settings import Settings

    return make_app(Settings(config_dir=run.config_dir, broker_url=broker_url))


def redis_backlog(broker_url: str, run: FaultRun) -> int:
    """The run's messages still in its Redis queues (priority sub-queues too) or delivered and not yet acked."""
    import redis

    client = redis.Redis.from_url(broker_url)
    waiting = sum(int(client.llen(key)) for key in client.scan_iter(match=f"{run.queue_prefix}.*"))
    unacked = sum(1 for value in client.hvals("unacked") if run.queue_prefix.encode() in value)
    return waiting + unacked


def clean_broker(broker_url: str, run: FaultRun) -> None:
    """Remove the run's queues (and, on Redis, their bindings) from a shared broker."""
    if broker_url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(broker_url)
        for key in client.scan_iter(match=f"{run.queue_prefix}.*"):
            client.delete(key)
        for key in client.scan_iter(match="_kombu.binding*"):
            if client.type(key) != b"set":
                continue
            stale = [m for m in client.smembers(key) if run.queue_prefix.encode() in m]
            if stale:
                client.srem(key, *stale)
    elif broker_url.startswith("amqp"):
        from kombu.connection import Connection

        from orch.intake.agents import load_agents_file

        with Connection(broker_url) as conn:
            for queue in load_agents_file(run.config_dir / "agents.yaml").queues:
                with contextlib.suppress(Exception):
                    channel = conn.channel()
                    try:
                        channel.queue_delete(queue)
                    finally:
                        with contextlib.suppress(Exception):
                            channel.close()
