"""`orch check`: is this deployment able to run plans? The store answers and its schema is current, a beat has
ticked it recently, the broker answers, some worker answers, and every agent-type queue holding queued tasks has a
worker reading it. Each check is bounded by a short timeout, so a server that is down is reported, not waited
for."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from orch.decisions.serving import TROUBLESHOOTING, BeatSeen, serving, silence_bound
from orch.errors import ServiceUnavailable, StoreUnusable
from orch.intake.agents import AgentRegistry, agent_network, load_agents
from orch.redaction import error_line, safe_url
from orch.services.broker_probe import connected, probe_connection
from orch.services.isolation import resolve_isolation
from orch.settings import Settings
from orch.store import services
from orch.store.db import current_revision, db_now, head_revision
from orch.store.exporter_reads import missing_sqlite_file, queued_tasks_by_queue, reader_engine
from orch.views.format import counted

DEFAULT_TIMEOUT = 3.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False  # ok, but said aloud (WARN): e.g. agents run without a sandbox, as configured

    def line(self, width: int) -> str:
        word = "FAIL" if not self.ok else "WARN" if self.warning else "ok"
        return f"{word:<4}  {self.name:<{width}}  {self.detail}"


def check_isolation(settings: Settings, registry: AgentRegistry) -> Check:
    """The isolation a worker on this host would give its agents (user, sandbox, network), probed as a worker
    does. Agents without a sandbox are a warning when ORCH_SANDBOX asked for none or auto found none, a failure
    when it cannot be had as asked (a worker would refuse to start)."""
    isolation = resolve_isolation(settings)
    if isolation.problem is not None:
        return Check("isolation", False, isolation.problem)
    networks = {agent.name: agent_network(agent.network, agent.executor) for agent in registry}
    hosted = sorted(name for name, network in networks.items() if network == "host")
    network = (
        f"network: host for {len(hosted)} of {len(networks)} agent types' default executor"
        f" ({', '.join(hosted) if hosted else 'none'}), none for shell and python tasks unless a type says host"
    )
    if isolation.sandbox == "none":
        warning = isolation.warning or "agents run without a sandbox"
        return Check("isolation", True, f"{isolation.describe()}; {warning}; network: not enforced", warning=True)
    return Check("isolation", True, f"{isolation.describe()}; {network}")


@dataclass(frozen=True)
class StoreState:
    """What the store says about serving it: the queued tasks per queue, the beats that ticked it, its clock."""

    queued: dict[str, int]
    beats: list[BeatSeen]
    now: datetime


def check_store(url: str, timeout: float) -> tuple[list[Check], dict[str, int] | None]:
    """Store reachable, migrations current; and the queued tasks per queue (None when the store cannot say).
    Nothing is created: an SQLite file that does not exist is reported, not made."""
    checks, state = read_store(url, timeout)
    return checks, None if state is None else state.queued


def read_store(url: str, timeout: float) -> tuple[list[Check], StoreState | None]:
    """check_store's checks, and what the store says about serving it (None when it cannot say)."""
    shown = safe_url(url)
    not_checked = Check("migrations", False, "not checked: the store is unreachable")
    if (file := missing_sqlite_file(url)) is not None:
        detail = (
            f"{shown}: no such database file (`orch db upgrade` creates it)"
            if file.parent.is_dir()
            else f"{shown}: folder {file.parent} does not exist (orch creates a SQLite store's file, never its folders)"
        )
        return [Check("store", False, detail), not_checked], None
    try:
        engine = reader_engine(url, timeout)
        revision = current_revision(engine)
    except Exception as exc:
        return [Check("store", False, f"{shown}: unreachable: {error_line(exc)}"), not_checked], None
    reachable = Check("store", True, f"{shown}: reachable")
    if revision != head_revision():
        found = "no schema" if revision is None else f"revision {revision}"
        detail = f"{found}; this orch needs {head_revision()} (run `orch db upgrade`)"
        return [reachable, Check("migrations", False, detail)], None
    with Session(engine) as session:
        state = StoreState(queued_tasks_by_queue(session), services.beats(session), db_now(session))
    return [reachable, Check("migrations", True, f"at revision {revision} (current)")], state


def check_beat(state: StoreState | None, tick_seconds: float) -> Check:
    """A beat that serves every plan has ticked the store within the bound; else when one last did."""
    if state is None:
        return Check("beat", False, "not checked: the store cannot say")
    bound = silence_bound(tick_seconds)
    found = serving(state.beats, None, state.now, bound)
    if found.alive:
        return Check("beat", True, found.describe())
    return Check("beat", False, f"{found.describe()}{_limited_beats(state, bound)}; start one: {TROUBLESHOOTING}")


def _limited_beats(state: StoreState, bound: float) -> str:
    limited = [beat for beat in state.beats if beat.plans and (state.now - beat.last_tick_at).total_seconds() <= bound]
    if not limited:
        return ""
    return f" (only the beat of an orch run ticks it: {limited[0].describe()})"


def require_store(url: str, timeout: float) -> None:
    """A worker's store, at its start, before it consumes anything: it answers within `timeout` (a database that
    does not exist, a server down or unreachable), and its schema is this orch's (migrated if behind, as ever; a
    SQLite file made if missing, as the first task did before). A ServiceUnavailable naming the store (password
    masked) and the cause in one line otherwise."""
    # lazy: the store's migrations, only once the store answered
    from orch.store.db import ensure_schema

    shown = safe_url(url)
    revision = None
    if missing_sqlite_file(url) is None:
        try:
            revision = current_revision(reader_engine(url, timeout))  # bounded: a server that hangs costs `timeout`
        except Exception as exc:
            raise ServiceUnavailable(f"store {shown} cannot be opened: {error_line(exc)}") from None
    if revision == head_revision():
        return
    try:
        ensure_schema(url)
    except StoreUnusable:  # full, read-only, corrupt: its own message says which and what to do
        raise
    except Exception as exc:
        found = "no schema" if revision is None else f"revision {revision}"
        raise ServiceUnavailable(
            f"store {shown} ({found}) cannot be brought to this orch's revision {head_revision()}: {error_line(exc)}"
        ) from None


def check_broker(url: str, timeout: float) -> Check:
    shown = safe_url(url)
    try:
        with connected(url, timeout):
            pass
    except Exception as exc:
        return Check("broker", False, f"{shown}: unreachable: {error_line(exc)}")
    return Check("broker", True, f"{shown}: reachable")


def queue_readers(active_queues: Mapping[str, Any] | None) -> dict[str, list[str]]:
    """Which workers read each queue, from `inspect().active_queues()`'s replies."""
    readers: dict[str, list[str]] = {}
    for worker, queues in (active_queues or {}).items():
        for queue in queues or ():
            readers.setdefault(str(queue.get("name")), []).append(str(worker))
    return readers


def check_consumers(queued: Mapping[str, int], readers: Mapping[str, list[str]]) -> list[Check]:
    """Some worker answered; and one check per queue holding queued tasks: some worker reads it, or it is named as
    unread."""
    workers = sorted({worker for names in readers.values() for worker in names})
    checks = []
    if not workers:
        detail = "no worker answered: nothing reads any queue, so no task can run"
        checks.append(Check("consumers", False, f"{detail}; start one: {TROUBLESHOOTING}"))
    elif not queued:
        answered = f"{counted(len(workers), 'worker')} answered: {', '.join(workers)}"
        return [Check("consumers", True, f"no queued tasks; {answered}")]
    for queue in sorted(queued):
        count = queued[queue]
        names = sorted(readers.get(queue, ()))
        if names:
            checks.append(Check(f"queue {queue}", True, f"{count} queued; read by {', '.join(names)}"))
        else:
            checks.append(Check(f"queue {queue}", False, f"{count} queued; no worker reads this queue"))
    return checks


def inspect_active_queues(settings: Settings, timeout: float) -> Mapping[str, Any] | None:
    """The workers' replies to `active_queues`, over a connection whose every step gives up after `timeout`."""
    from orch.celery import make_app

    app = make_app(settings)
    try:
        with probe_connection(settings.resolved_broker_url, timeout) as connection:
            inspect = app.control.inspect(timeout=timeout, connection=connection)
            result: Mapping[str, Any] | None = inspect.active_queues()
        return result
    finally:
        app.close()


def read_queue_readers(settings: Settings, timeout: float = 1.0) -> dict[str, list[str]] | None:
    """Which workers read each queue, asked of the broker within about twice `timeout` seconds; None when the broker
    does not answer (it is never waited for)."""
    try:
        with connected(settings.resolved_broker_url, timeout):
            pass
        return queue_readers(inspect_active_queues(settings, timeout))
    except Exception:
        return None


def check_git(settings: Settings) -> Check:
    """git on this host, which a worker needs for plans with `repo:` (their worktrees and merges), and the disk
    left where it makes worktrees. Its absence is a warning: plans without a repository need no git."""
    from orch.services.git.command import GitFailed, git_executable, git_version  # lazy: git runs only here

    try:
        version = git_version()
        where = git_executable()
    except GitFailed as exc:
        return Check("git", True, f"{exc}: plans with repo: fail on this host's workers", warning=True)
    root = settings.resolved_worktree_root
    probe = next((folder for folder in (root, *root.parents) if folder.exists()), root)
    free = shutil.disk_usage(probe).free / 1e9
    return Check("git", True, f"{version} at {where}; worktrees in {root} ({free:.1f} GB free)")


def run_checks(settings: Settings, timeout: float = DEFAULT_TIMEOUT) -> list[Check]:
    checks, state = read_store(settings.resolved_database_url, timeout)
    queued = None if state is None else state.queued
    checks.append(check_beat(state, settings.tick_seconds))
    checks.append(check_isolation(settings, load_agents(settings.config_dir)))
    checks.append(check_git(settings))
    broker = check_broker(settings.resolved_broker_url, timeout)
    checks.append(broker)
    if queued is None:
        checks.append(Check("consumers", False, "not checked: the store cannot say which tasks are queued"))
    elif not broker.ok:
        checks.append(Check("consumers", False, "not checked: the broker is unreachable"))
    else:
        checks.extend(check_consumers(queued, queue_readers(inspect_active_queues(settings, min(timeout, 1.5)))))
    return checks


def render(checks: list[Check]) -> list[str]:
    width = max(len(check.name) for check in checks)
    return [check.line(width) for check in checks]
