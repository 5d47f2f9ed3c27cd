"""The beat's reconcile-and-dispatch tick: reap attempts whose lease expired, release retries whose backoff has
passed, doom what can never run, finish plans, dispatch whatever the workers' fast path missed, and re-send lost
messages."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from orch.celery import app
from orch.decisions.retry import Backoff
from orch.dispatch.merge_queue import send_mergers
from orch.dispatch.reaper import reap_expired
from orch.dispatch.reconcile import publish, reconcile_plans, replan_route
from orch.intake.agents import load_agents
from orch.log import attempt_context, get_logger
from orch.settings import get_settings
from orch.store import dispatching, merges, plans, services
from orch.store.db import db_now, write_session

log = get_logger(__name__)


@dataclass(frozen=True)
class TickReport:
    plans: int
    dispatched: int
    resent: int
    reaped: int = 0


@dataclass(frozen=True)
class BeatProcess:
    """The beat that ticks, as the store records it (orch.store.services): `orch check`, `status` and `submit` read
    its last tick."""

    host: str
    pid: int
    started_at: datetime


def run_tick(now: datetime | None = None, reap: bool = True, beat: BeatProcess | None = None) -> TickReport:
    """One tick. `reap=False` spares expired leases this time: the beat passes it for one lease period after
    it (re)gains the store, so workers that kept their agents running through an outage can renew first. `beat`:
    the beat ticking, whose tick is recorded in the same transaction."""
    settings = get_settings()
    registry = load_agents(settings.config_dir)
    only = settings.beat_plan_ids
    backoff = Backoff(settings.retry_backoff_base, settings.retry_backoff_max)
    with write_session(settings.resolved_database_url) as session:
        now = now or db_now(session)
        if beat is not None:
            services.record_beat_tick(session, beat.host, beat.pid, only, beat.started_at, now)
        reaped = reap_expired(session, now, backoff, only or None) if reap else []
        plan_ids = plans.active_plan_ids(session)
        if only:
            plan_ids = [p for p in plan_ids if p in only]
        cutoff = now - timedelta(seconds=settings.redeliver_seconds)
        resend = dispatching.stale_dispatches(
            session, cutoff, now, plan_ids if only else None, replan=replan_route(registry)
        )
        for plan_id in plan_ids:
            merges.settle_abandoned_conflicts(session, plan_id, now)
        dispatches = reconcile_plans(session, plan_ids, registry, now)
        mergers = _mergers_to_send(session, now, plan_ids if only else None)
    for lost in reaped:
        with attempt_context(lost.plan_id, lost.key, lost.attempt):
            log.warning("attempt lost: lease expired", worker=lost.worker)
    for lost_message in resend:
        with attempt_context(lost_message.plan_id, lost_message.key, lost_message.attempt):
            log.info("re-sending a queued task's message: it has not started", queue=lost_message.queue)
    publish(app, resend + dispatches, settings.kill_grace_seconds)
    send_mergers(app, mergers)
    if dispatches or resend:
        log.info("tick", plans=len(plan_ids), dispatched=len(dispatches), resent=len(resend))
    return TickReport(len(plan_ids), len(dispatches), len(resend), len(reaped))


MERGER_RESEND_SECONDS = 15.0  # how often the beat sends a merger to an integration nobody merges
_merger_sent: dict[int, float] = {}


def _mergers_to_send(session: Session, now: datetime, plan_ids: list[str] | None) -> list[tuple[int, str]]:
    """Integrations with queued merge requests and no merger holding their lock (its message lost, or it died and
    its lock expired): a merger for each, at most every MERGER_RESEND_SECONDS."""
    clock = time.monotonic()
    waiting = merges.integrations_waiting(session, now, plan_ids) + merges.integrations_to_land(session, plan_ids)
    due = [pk for pk in waiting if clock - _merger_sent.get(pk, -MERGER_RESEND_SECONDS) >= MERGER_RESEND_SECONDS]
    for pk in due:
        _merger_sent[pk] = clock
    for gone in set(_merger_sent) - set(waiting):
        del _merger_sent[gone]
    return [(pk, merges.merge_queue_of(session, pk)) for pk in due]
