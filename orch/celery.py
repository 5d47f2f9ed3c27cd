"""The Celery app, so `celery -A orch worker|beat|flower` works: importing this module builds it (reading
config/agents.yaml) and guards Flower. The dispatcher does not import it: the worker and the beat, which publish,
hand their app to `orch.dispatch.reconcile.publish`. Task modules are named as strings: orch never imports workers/
or beat/."""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import setup_logging
from kombu import Exchange, Queue  # type: ignore[attr-defined]

from orch.durations import MAX_TIMEOUT_SECONDS, TIME_LIMIT_MARGIN
from orch.errors import ConfigInvalid
from orch.intake.agents import AgentRegistry, load_agents
from orch.log import configure_logging
from orch.services.flower import guard_flower_command
from orch.settings import Settings, get_settings

EXCHANGE = "orch"


def celery_config(settings: Settings, registry: AgentRegistry) -> dict[str, object]:
    return {
        "broker_url": settings.resolved_broker_url,
        "broker_connection_retry_on_startup": True,
        # Every agent type's queue is declared; no queue is created on the fly, so a task can never land on
        # a queue no worker was told to read.
        "task_queues": [Queue(name, Exchange(EXCHANGE, type="direct"), routing_key=name) for name in registry.queues],
        "task_default_queue": registry.get(registry.fallback).queue,
        "task_default_exchange": EXCHANGE,
        "task_default_exchange_type": "direct",
        "task_default_routing_key": registry.get(registry.fallback).queue,
        "task_create_missing_queues": False,
        # An agent run lasts minutes and costs money: ack after it, take one message at a time, give a
        # message back when the pool process dies, stop on broker loss instead of running a copy twice.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout},
        # Results live in orch's store, not in a Celery result backend.
        "task_ignore_result": True,
        "result_backend": None,
        "task_serializer": "json",
        "accept_content": ["json"],
        "enable_utc": True,
        "timezone": "UTC",
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        "worker_hijack_root_logger": False,
        # The beat does not send a periodic message: its scheduler runs the reconcile-and-dispatch tick itself,
        # so there is exactly one dispatcher loop and no broker round trip per tick.
        "beat_scheduler": "beat.scheduler:OrchScheduler",
        "beat_max_loop_interval": max(1.0, settings.tick_seconds),
    }


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    registry = load_agents(settings.config_dir)
    celery_app = Celery("orch", include=["workers.tasks", "workers.queues"])
    celery_app.conf.update(celery_config(settings, registry))
    return celery_app


app = make_app()
guard_flower_command()


@setup_logging.connect
def _celery_logging(loglevel: int | str | None = None, logfile: str | None = None, **_kwargs: Any) -> None:
    """Workers and beat log through orch's handler (JSON or console, redacted); Celery's --loglevel applies to
    Celery's and the libraries' lines, ORCH_LOG_LEVEL to orch's."""
    configure_logging(root_level=loglevel or "WARNING", logfile=logfile)


def use_broker(broker_url: str) -> None:
    """Point this process's app at another broker, dropping pooled connections to the old one."""
    app.conf.broker_url = broker_url
    app._after_fork()


def check_visibility_timeout(settings: Settings, broker_url: str) -> None:
    """On Redis, a message unacknowledged for longer than the visibility timeout is delivered again, so a task
    could outlive it and run twice: the timeout must exceed the longest hard time limit any task can get."""
    if not broker_url.startswith(("redis", "rediss")):
        return
    registry = load_agents(settings.config_dir)
    longest = max([MAX_TIMEOUT_SECONDS, *(agent.timeout for agent in registry)])
    needed = longest + settings.kill_grace_seconds + TIME_LIMIT_MARGIN
    if settings.visibility_timeout <= needed:
        raise ConfigInvalid(
            f"ORCH_VISIBILITY_TIMEOUT={settings.visibility_timeout} is too short: a task may run {longest:.0f}s "
            f"(+{settings.kill_grace_seconds + TIME_LIMIT_MARGIN:.0f}s to stop it), and Redis would deliver it "
            f"again meanwhile; set it above {needed:.0f}"
        )
