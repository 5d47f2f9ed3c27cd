"""Helpers for the scenarios that hurt the cluster's own processes (worker SIGKILL, SIGSTOP, SIGTERM, two beats):
find a worker's process tree in /proc, signal it, and read what the harness's snapshot leaves out (which worker ran
an attempt, when an event happened, which messages a worker received)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from tests.faults.harness import Cluster, FaultRun, Figures, Store, marked_processes, submit_plan

# --- the agents' command lines ---------------------------------------------------------------------------


def per_attempt_command(run: FaultRun, first: Iterable[str], later: Iterable[str]) -> str:
    """A ledger-agent task that runs with `first` flags on attempt 1 and with `later` flags on every retry."""
    return run.marked_shell(
        f'if [ "$ORCH_ATTEMPT" -le 1 ]; then {run.agent_exec(*first)}; else {run.agent_exec(*later)}; fi'
    )


# --- processes in /proc ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    state: str


def read_proc(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:  # closed: a file left to the collector is a ResourceWarning
            text = stat.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return Proc(pid, int(fields[1]), int(fields[2]), fields[0])


def all_procs() -> list[Proc]:
    procs = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            proc = read_proc(int(entry))
            if proc is not None:
                procs.append(proc)
    return procs


def descendants(pid: int) -> list[Proc]:
    """Every live descendant of `pid` (children, grandchildren...), zombies excluded."""
    procs = all_procs()
    children: dict[int, list[Proc]] = {}
    for proc in procs:
        children.setdefault(proc.ppid, []).append(proc)
    found: list[Proc] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child.state != "Z":
                found.append(child)
                todo.append(child.pid)
    return found


def alive(pid: int) -> bool:
    proc = read_proc(pid)
    return proc is not None and proc.state != "Z"


@dataclass(frozen=True)
class WorkerTree:
    """A Celery worker's processes: its main process, its pool processes (same process group), and the agents
    they run (each in a process group of its own). An agent in a sandbox is several processes (bubblewrap, its
    init, the command): `agents` holds them all, `agent_roots` the one a pool process started per agent."""

    main: int
    pool: tuple[int, ...]
    agents: tuple[int, ...]
    agent_roots: tuple[int, ...] = ()

    @property
    def worker_pids(self) -> tuple[int, ...]:
        return (self.main, *self.pool)

    @property
    def all_pids(self) -> tuple[int, ...]:
        return (*self.worker_pids, *self.agents)


def worker_tree(process: subprocess.Popen[bytes]) -> WorkerTree:
    below = descendants(process.pid)
    pool = tuple(p.pid for p in below if p.pgid == process.pid)
    agents = tuple(p.pid for p in below if p.pgid != process.pid)
    roots = tuple(p.pid for p in below if p.pgid != process.pid and p.ppid in (process.pid, *pool))
    return WorkerTree(process.pid, pool, agents, roots)


def signal_pids(pids: Iterable[int], sig: int) -> int:
    sent = 0
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            sent += 1
    return sent


def marked_pids(run: FaultRun) -> set[int]:
    return {int(entry.split(":", 1)[0]) for entry in marked_processes(run.marker)}


# --- the store, beyond the harness's snapshot ------------------------------------------------------------


@dataclass(frozen=True)
class AttemptRecord:
    key: str
    number: int
    status: str
    worker: str
    failure_class: str | None
    error: str | None
    started_at: datetime | None
    finished_at: datetime | None


def attempt_records(store: Store, plan_id: str) -> list[AttemptRecord]:
    tasks, attempts = store.table("tasks"), store.table("attempts")
    query = (
        sa.select(
            tasks.c.key,
            attempts.c.number,
            attempts.c.status,
            attempts.c.worker,
            attempts.c.failure_class,
            attempts.c.error,
            attempts.c.started_at,
            attempts.c.finished_at,
        )
        .join(tasks, tasks.c.pk == attempts.c.task_pk)
        .where(tasks.c.plan_id == plan_id)
        .order_by(tasks.c.key, attempts.c.number)
    )
    with store.engine.connect() as conn:
        return [
            AttemptRecord(
                key=row.key,
                number=row.number,
                status=str(row.status),
                worker=row.worker or "",
                failure_class=row.failure_class,
                error=row.error,
                started_at=row.started_at,
                finished_at=row.finished_at,
            )
            for row in conn.execute(query)
        ]


@dataclass(frozen=True)
class EventRecord:
    key: str
    attempt: int | None
    old: str | None
    new: str | None
    at: datetime
    detail: str | None


def task_events(store: Store, plan_id: str) -> list[EventRecord]:
    tasks, events = store.table("tasks"), store.table("events")
    query = (
        sa.select(tasks.c.key, events.c.attempt, events.c.old, events.c.new, events.c.at, events.c.detail)
        .join(tasks, tasks.c.pk == events.c.task_pk)
        .where(events.c.plan_id == plan_id, events.c.kind == "task")
        .order_by(events.c.pk)
    )
    with store.engine.connect() as conn:
        return [EventRecord(*row) for row in conn.execute(query)]


def running_on(store: Store, plan_id: str, worker: str) -> list[AttemptRecord]:
    """Attempts of the plan running on the worker named `worker` (its `-n` name)."""
    return [a for a in attempt_records(store, plan_id) if a.status == "running" and a.worker.startswith(f"{worker}@")]


# --- logs ------------------------------------------------------------------------------------------------


RECEIVED = re.compile(r"Task orch\.run_task\[([^\]]+)\] received")


def received_ids(cluster: Cluster, names: Iterable[str]) -> list[str]:
    """The message ids Celery logged as received (needs the worker's log level at INFO)."""
    return [found for name in names for found in RECEIVED.findall(cluster.log_text(name))]


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait up to `timeout` for every pid to end; returns those still alive."""
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        left = [pid for pid in pids if alive(pid)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def kill_tree(pids: Iterable[int]) -> None:
    """SIGKILL (after SIGCONT, for a stopped tree) every pid: a scenario's last-resort cleanup."""
    pids = list(pids)
    signal_pids(pids, signal.SIGKILL)
    signal_pids(pids, signal.SIGCONT)


def drop_unacked(broker_url: str, run: FaultRun) -> int:
    """Remove the run's messages from Redis's `unacked` hash (and its index): a SIGKILLed worker leaves the
    messages it held there until the visibility timeout, which `clean_broker` does not clear."""
    if not broker_url.startswith("redis"):
        return 0
    import redis

    client = redis.Redis.from_url(broker_url)
    prefix = run.queue_prefix.encode()
    tags = [tag for tag, value in client.hgetall("unacked").items() if prefix in value]
    if tags:
        client.hdel("unacked", *tags)
        client.zrem("unacked_index", *tags)
    return len(tags)


def submit_plans(run: FaultRun, env: Mapping[str, str], documents: Sequence[Mapping[str, Any]]) -> list[str]:
    """Store several plans with the real `orch submit`, run side by side; their ids, in order."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = [
            pool.submit(submit_plan, run, env, document, f"plan-{i}.yaml") for i, document in enumerate(documents)
        ]
        return [future.result() for future in futures]


def merge_figures(all_figures: Iterable[Figures]) -> Figures:
    """The oracle's figures of several plans as one: counts and `n/total` pairs add up; other values must agree."""
    merged: Figures = {}
    for figures in all_figures:
        for name, value in figures.items():
            before = merged.get(name)
            if before is None:
                merged[name] = value
            elif isinstance(value, tuple) and isinstance(before, tuple):
                merged[name] = (before[0] + value[0], before[1] + value[1])
            elif isinstance(value, int) and isinstance(before, int):
                merged[name] = before + value
            elif before != value:
                merged[name] = f"{before}; {value}"
    return merged
