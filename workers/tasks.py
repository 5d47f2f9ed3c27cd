"""Celery tasks: thin adapters that hand ids to workers.runner; and the worker's process signals."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

from celery.exceptions import Reject
from celery.signals import (
    celeryd_after_setup,
    celeryd_init,
    task_postrun,
    worker_init,
    worker_process_init,
    worker_shutting_down,
)

from orch.celery import app, check_visibility_timeout
from orch.dispatch.merge_queue import work_merge_queue
from orch.dispatch.worktrees import sweep
from orch.errors import OrchError, StoreUnusable
from orch.hardening import harden_process
from orch.intake.agents import load_agents
from orch.log import forget_attempt, get_logger
from orch.records import MERGE_TASK, RUN_TASK
from orch.services.check import require_store
from orch.services.isolation import IsolationUnavailable
from orch.services.processes import die_with_worker_main, remember_worker_main, stop_this_worker
from orch.settings import Settings, get_settings
from orch.store.db import dispose_engines
from workers.liveness import LivenessFile
from workers.merging import run_gate
from workers.runner import run_attempt
from workers.sandbox.launch import announce_isolation
from workers.supervision import (
    SHUTDOWN_MESSAGE,
    ShutdownInterrupt,
    install_pool_process_handlers,
    interrupt_after_grace,
    running_task,
)

app.steps["worker"].add(LivenessFile)
log = get_logger(__name__)

STORE_UNUSABLE = "store unusable"


@app.task(name=RUN_TASK, bind=True, acks_late=True, ignore_result=True)
def run_task(self: Any, task_pk: int, attempt: int) -> str:
    try:
        with running_task():
            return run_attempt(task_pk, attempt, worker=self.request.hostname)
    except ShutdownInterrupt:
        # The worker shut down while this task waited for its store (nothing was claimed or run): its message goes
        # back to the queue for another worker, rather than holding the shutdown for ORCH_STORE_RETRY_SECONDS.
        log.warning("worker shutting down while its store is unreachable: message given back", task_pk=task_pk)
        raise Reject(SHUTDOWN_MESSAGE, requeue=True) from None
    except StoreUnusable as exc:
        # Full, read-only or corrupt: no attempt here can record anything until someone mends the store, so the
        # worker stops taking tasks rather than run agents whose work is lost. Its running attempts' leases expire
        # and the beat retries them once the store can be written.
        stop_worker_for(exc)
        return STORE_UNUSABLE


@app.task(name=MERGE_TASK, acks_late=True, ignore_result=True)
def merge(integration_pk: int) -> str:
    """Work an integration's merge queue (its id only): orch.dispatch.merge_queue, with this worker's gates."""
    settings = get_settings()

    def gate(command: str, folder: Path, timeout: float, log_path: Path) -> tuple[bool, str]:
        return run_gate(settings, command, folder, timeout, log_path)

    return work_merge_queue(integration_pk, settings, load_agents(settings.config_dir), gate, app)


def stop_worker_for(problem: StoreUnusable) -> None:
    log.error(f"{problem}; this worker stops taking tasks")
    stop_this_worker(str(problem))


@task_postrun.connect
def _forget_attempt(**_kwargs: Any) -> None:
    # The attempt's ids stay bound until here, so Celery's own line about the task's end carries them too.
    forget_attempt()


@celeryd_init.connect
def _on_worker_program_start(**_kwargs: Any) -> None:
    # `celery worker` only (not a worker embedded in another program, such as a test's): before any pool process
    # forks, so they inherit it.
    harden_process()


STORE_START_TIMEOUT = 5.0  # seconds a worker's store may take to answer at start


@worker_init.connect
def _on_worker_start(**_kwargs: Any) -> None:
    remember_worker_main()
    settings = get_settings()
    try:
        check_visibility_timeout(settings, app.conf.broker_url)
        # Before the worker joins any queue: a worker on a wrong store (a database that does not exist, a server it
        # cannot reach, a schema of another orch) would take the deployment's messages and hold them while it
        # retried its store. It refuses to start instead, in one line.
        require_store(settings.resolved_database_url, STORE_START_TIMEOUT)
        sweep_worktrees(settings)
        dispose_engines()  # no store connection crosses the fork of the pool and `-B` beat processes (SQLite's locks)
    except OrchError as exc:  # refuse to start (Celery would only log an exception raised here)
        print(f"orch: worker not started: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


def sweep_worktrees(settings: Settings) -> None:
    """At start: the worktrees this host's worker left when it was killed (its attempts lost since, or over) are
    committed, pushed and removed; none leaks from one run of the worker to the next."""
    if not settings.resolved_worktree_root.is_dir():
        return
    try:
        swept = sweep(settings)
    except Exception as exc:  # a sweep that fails must not keep the worker from starting
        log.warning("could not sweep old worktrees", error=str(exc)[:300])
        return
    for tree, what in swept:
        if not what.startswith("kept"):
            log.info("old worktree swept", path=str(tree.path), what=what)


@celeryd_after_setup.connect
def _on_worker_set_up(**_kwargs: Any) -> None:
    # Logging is set up by now, and nothing is consumed yet: a worker that cannot isolate agents as asked runs
    # none; one that runs them unsandboxed says so.
    try:
        announce_isolation(get_settings())
    except IsolationUnavailable as exc:
        print(f"orch: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


@worker_process_init.connect
def _on_pool_process_start(**_kwargs: Any) -> None:
    harden_process()
    dispose_engines()  # never reuse a database connection across fork
    install_pool_process_handlers()
    # The worker `orch run` embeds only: SIGTERM, whose handler (above) takes the agents' process groups down too.
    die_with_worker_main(signal.SIGTERM)


@worker_shutting_down.connect
def _on_shutdown(sig: str = "", how: str = "", **_kwargs: Any) -> None:
    # Warm shutdown (SIGTERM, as Kubernetes sends it): Celery stops taking messages and waits for running
    # tasks. Their agents get ORCH_SHUTDOWN_GRACE seconds; then they are interrupted and re-queued.
    if how == "Warm":
        interrupt_after_grace(get_settings().shutdown_grace)
