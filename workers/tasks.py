"""Celery tasks: thin adapters that hand ids to workers.runner."""

from __future__ import annotations

from typing import Any

from celery.signals import worker_process_init

from orch.celery import RUN_TASK, app
from orch.store.db import dispose_engines
from workers.runner import run_attempt
from workers.supervision import install_termination_handler


@app.task(name=RUN_TASK, bind=True, acks_late=True, ignore_result=True)
def run_task(self: Any, task_pk: int, attempt: int) -> str:
    return run_attempt(task_pk, attempt, worker=self.request.hostname)


@worker_process_init.connect
def _on_pool_process_start(**_kwargs: Any) -> None:
    dispose_engines()  # never reuse a database connection across fork
    install_termination_handler()
