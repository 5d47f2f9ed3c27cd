"""`orch check`: is this deployment able to run plans? The store answers and its schema is current, the broker
answers, and every agent-type queue holding queued tasks has a worker reading it. Each check is bounded by a
short timeout, so a server that is down is reported, not waited for."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from orch.redaction import redact_log_text
from orch.settings import Settings
from orch.states import TaskStatus
from orch.store.db import HEAD_REVISION, current_revision
from orch.store.models import TaskRow

DEFAULT_TIMEOUT = 3.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self, width: int) -> str:
        return f"{'ok' if self.ok else 'FAIL':<4}  {self.name:<{width}}  {self.detail}"


def safe_url(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return redact_log_text(url)


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return redact_log_text(f"{type(exc).__name__}: {text[0] if text else ''}".strip())


def store_engine(url: str, timeout: float) -> Engine:
    """An engine for the check alone: no pool, a connect timeout (libpq's is whole seconds, at least 2)."""
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        connect_args["connect_timeout"] = max(2, round(timeout))
    elif url.startswith("sqlite"):
        connect_args["timeout"] = timeout
    return create_engine(url, poolclass=NullPool, connect_args=connect_args)


def check_store(url: str, timeout: float) -> tuple[list[Check], dict[str, int] | None]:
    """Store reachable, migrations current; and the queued tasks per queue (None when the store cannot say)."""
    shown = safe_url(url)
    sqlite_file = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
    if sqlite_file is not None and not Path(sqlite_file).is_file():
        missing = Check("store", False, f"{shown}: no such database file (`orch db upgrade` creates it)")
        return [missing, Check("migrations", False, "not checked: the store is unreachable")], None
    engine = store_engine(url, timeout)
    try:
        try:
            revision = current_revision(engine)
        except Exception as exc:
            failed = Check("store", False, f"{shown}: unreachable: {first_line(exc)}")
            return [failed, Check("migrations", False, "not checked: the store is unreachable")], None
        reachable = Check("store", True, f"{shown}: reachable")
        if revision != HEAD_REVISION:
            found = "no schema" if revision is None else f"revision {revision}"
            detail = f"{found}; this orch needs {HEAD_REVISION} (run `orch db upgrade`)"
            return [reachable, Check("migrations", False, detail)], None
        with Session(engine) as session:
            rows = session.execute(
                select(TaskRow.queue, func.count()).where(TaskRow.status == TaskStatus.QUEUED).group_by(TaskRow.queue)
            ).all()
        queued = {str(queue): int(count) for queue, count in rows}
        return [reachable, Check("migrations", True, f"at revision {revision} (current)")], queued
    finally:
        engine.dispose()


def check_broker(url: str, timeout: float) -> Check:
    from kombu.connection import Connection

    shown = safe_url(url)
    options = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "max_retries": 0}
    try:
        with Connection(url, connect_timeout=timeout, transport_options=options) as conn:  # type: ignore[no-untyped-call]
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
            client = getattr(conn.default_channel, "client", None)
            if client is not None and hasattr(client, "ping"):  # Redis: the connection alone proves little
                client.ping()
    except Exception as exc:
        return Check("broker", False, f"{shown}: unreachable: {first_line(exc)}")
    return Check("broker", True, f"{shown}: reachable")


def queue_readers(active_queues: Mapping[str, Any] | None) -> dict[str, list[str]]:
    """Which workers read each queue, from `inspect().active_queues()`'s replies."""
    readers: dict[str, list[str]] = {}
    for worker, queues in (active_queues or {}).items():
        for queue in queues or ():
            readers.setdefault(str(queue.get("name")), []).append(str(worker))
    return readers


def check_consumers(queued: Mapping[str, int], readers: Mapping[str, list[str]]) -> list[Check]:
    """One check per queue holding queued tasks: some worker reads it, or it is named as unread."""
    if not queued:
        workers = sorted({worker for names in readers.values() for worker in names})
        return [Check("consumers", True, f"no queued tasks; {len(workers)} worker(s) answered")]
    checks = []
    for queue in sorted(queued):
        count = queued[queue]
        names = sorted(readers.get(queue, ()))
        if names:
            checks.append(Check(f"queue {queue}", True, f"{count} queued; read by {', '.join(names)}"))
        else:
            checks.append(Check(f"queue {queue}", False, f"{count} queued; no worker reads this queue"))
    return checks


def inspect_active_queues(settings: Settings, timeout: float) -> Mapping[str, Any] | None:
    from orch.celery import make_app

    app = make_app(settings)
    try:
        result: Mapping[str, Any] | None = app.control.inspect(timeout=timeout).active_queues()
        return result
    finally:
        app.close()


def run_checks(settings: Settings, timeout: float = DEFAULT_TIMEOUT) -> list[Check]:
    checks, queued = check_store(settings.resolved_database_url, timeout)
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
