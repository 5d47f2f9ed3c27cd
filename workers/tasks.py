"""Celery tasks: thin adapters that hand ids to workers.runner; and the worker's process signals."""

from __future__ import annotations

import sys
from typing import Any

from celery.signals import (
    celeryd_after_setup,
    celeryd_init,
    task_postrun,
    worker_init,
    worker_process_init,
    worker_shutting_down,
)

from orch.celery import RUN_TASK, app, check_visibility_timeout
from orch.errors import ConfigInvalid
from orch.hardening import harden_process
from orch.isolation import IsolationUnavailable
from orch.log import forget_attempt
from orch.settings import get_settings
from orch.store.db import dispose_engines
from workers.liveness import LivenessFile
from workers.runner import run_attempt
from workers.sandbox import announce_isolation
from workers.supervision import install_pool_process_handlers, interrupt_after_grace

app.steps["worker"].add(LivenessFile)


@app.task(name=RUN_TASK, bind=True, acks_late=True, ignore_result=True)
def run_task(self: Any, task_pk: int, attempt: int) -> str:
    return run_attempt(task_pk, attempt, worker=self.request.hostname)


@task_postrun.connect
def _forget_attempt(**_kwargs: Any) -> None:
    # The attempt's ids stay bound until here, so Celery's own line about the task's end carries them too.
    forget_attempt()


@celeryd_init.connect
def _on_worker_program_start(**_kwargs: Any) -> None:
    # `celery worker` only (not a worker embedded in another program, such as a test's): before any pool process
    # forks, so they inherit it.
    harden_process()


@worker_init.connect
def _on_worker_start(**_kwargs: Any) -> None:
    try:
        check_visibility_timeout(get_settings(), app.conf.broker_url)
    except ConfigInvalid as exc:  # refuse to start (Celery would only log an exception raised here)
        print(f"orch: {exc}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None


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


@worker_shutting_down.connect
def _on_shutdown(sig: str = "", how: str = "", **_kwargs: Any) -> None:
    # Warm shutdown (SIGTERM, as Kubernetes sends it): Celery stops taking messages and waits for running
    # tasks. Their agents get ORCH_SHUTDOWN_GRACE seconds; then they are interrupted and re-queued.
    if how == "Warm":
        interrupt_after_grace(get_settings().shutdown_grace)
