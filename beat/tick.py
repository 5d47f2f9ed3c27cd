"""The beat's reconcile-and-dispatch tick: release retries whose backoff has passed, doom what can never
run, finish plans, dispatch whatever the workers' fast path missed, and re-send lost messages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from orch.agents import load_agents
from orch.dispatch import publish, reconcile_plans
from orch.log import get_logger
from orch.settings import get_settings
from orch.store import repo
from orch.store.db import write_session

log = get_logger(__name__)


@dataclass(frozen=True)
class TickReport:
    plans: int
    dispatched: int
    resent: int


def run_tick(now: datetime | None = None) -> TickReport:
    settings = get_settings()
    now = now or datetime.now(UTC)
    registry = load_agents(settings.config_dir)
    only = settings.beat_plan_ids
    with write_session() as session:
        plan_ids = repo.active_plan_ids(session)
        if only:
            plan_ids = [p for p in plan_ids if p in only]
        cutoff = now - timedelta(seconds=settings.redeliver_seconds)
        resend = repo.stale_dispatches(session, cutoff, now, plan_ids if only else None)
        dispatches = reconcile_plans(session, plan_ids, registry, now)
    publish(resend + dispatches)
    if dispatches or resend:
        log.info("tick", plans=len(plan_ids), dispatched=len(dispatches), resent=len(resend))
    return TickReport(len(plan_ids), len(dispatches), len(resend))
