"""What `orch submit`, `status` and `watch` say about who serves a plan: the beat that ticks its store, the workers
that read its queues (asked of the broker, bounded). The store and the broker are loaded when these run."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from orch.settings import get_settings
from orch.states import TaskStatus

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from orch.decisions.serving import Serving
    from orch.store.models import PlanRow

BROKER_TIMEOUT = 1.0  # seconds per step of asking the broker which queues have readers


def plan_notes(session: Session, plan: PlanRow) -> list[str]:
    """Why `plan` cannot move, if it cannot: no beat serves it, a queue of its queued tasks has no reader."""
    # lazy (start-up cost): the store and the broker's client
    from orch.cli.common import planner_queue
    from orch.services.check import read_queue_readers
    from orch.store import reads, services
    from orch.store.db import db_now
    from orch.views.serving import serving_notes

    counts = reads.count_by_status(session, plan.id)
    pending = counts.get(TaskStatus.PENDING, 0) + counts.get(TaskStatus.RETRY_WAIT, 0)
    now = db_now(session)
    served = beat_serving(session, plan.id, now)
    since = services.queued_since(session, plan.id, planner_queue())
    readers = read_queue_readers(get_settings(), BROKER_TIMEOUT) if since else {}
    return serving_notes(plan.status, plan.created_at, pending, served, since, readers, now)


def beat_serving(session: Session, plan_id: str, now: datetime) -> Serving:
    # lazy (start-up cost): the store
    from orch.decisions.serving import serving, silence_bound
    from orch.store import services

    return serving(services.beats(session), plan_id, now, silence_bound(get_settings().tick_seconds))


def submitted_notes(session: Session, plan_id: str) -> list[str]:
    """`orch submit`'s word after the plan id: the store it went to, whether a beat serves it, unread queues."""
    # lazy (start-up cost): the store and the broker's client
    from orch.cli.common import planner_queue
    from orch.decisions.serving import TROUBLESHOOTING
    from orch.services.check import read_queue_readers
    from orch.store import services
    from orch.store.db import db_now, store_name
    from orch.views.serving import unread_queues

    settings = get_settings()
    served = beat_serving(session, plan_id, db_now(session))
    where = f"stored in the {store_name(settings.resolved_database_url)}"
    if served.alive:
        notes = [f"{where}; {served.describe()}"]
    else:
        notes = [f"{where}; {served.describe()}: it will not run until one does; start one: {TROUBLESHOOTING}"]
    open_queues = services.open_tasks_by_queue(session, plan_id, planner_queue())
    return notes + unread_queues(open_queues, read_queue_readers(settings, BROKER_TIMEOUT))
