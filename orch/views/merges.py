"""What `orch mq` shows: a plan's integration branches (where each started, its head, its merge lock, whether it
landed) and its merge queue, as data (JSON) and as rich tables. Strings from plans and agents pass through `inert`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from orch.durations import format_duration
from orch.records import Integration
from orch.services.git.remote import display_url
from orch.states import MergePhase
from orch.store import merges
from orch.store.models import IntegrationRow, MergeRequestRow
from orch.views.format import iso
from orch.views.terminal import inert

PHASE_STYLE = {
    MergePhase.QUEUED: "cyan",
    MergePhase.MERGING: "bold blue",
    MergePhase.MERGED: "green",
    MergePhase.CONFLICTED: "bold red",
    MergePhase.GATE_FAILED: "bold red",
    MergePhase.FAILED: "bold red",
    MergePhase.CANCELLED: "magenta",
}


@dataclass(frozen=True)
class MergeQueueView:
    plan_id: str
    integrations: list[Integration]
    lock_holders: dict[int, tuple[str | None, datetime | None]]  # integration → (lease, expires)
    landed: dict[int, tuple[str | None, str | None]]  # integration → (landed, detail)
    requests: list[tuple[MergeRequestRow, str]]

    @classmethod
    def load(cls, session: Session, plan_id: str) -> MergeQueueView:
        integrations = merges.plan_integrations(session, plan_id)
        rows = {row.pk: row for row in session.scalars(select(IntegrationRow).where(IntegrationRow.plan_id == plan_id))}
        return cls(
            plan_id,
            integrations,
            {pk: (row.lease, row.lease_expires_at) for pk, row in rows.items()},
            {pk: (row.landed, row.land_detail) for pk, row in rows.items()},
            merges.plan_requests(session, plan_id),
        )

    def as_json(self, now: datetime) -> dict[str, Any]:
        return {
            "plan": self.plan_id,
            "integrations": [self._integration_json(i, now) for i in self.integrations],
            "requests": [request_json(row, key, now) for row, key in self.requests],
        }

    def _integration_json(self, integration: Integration, now: datetime) -> dict[str, Any]:
        lease, expires = self.lock_holders.get(integration.pk, (None, None))
        landed, detail = self.landed.get(integration.pk, (None, None))
        return {
            "repository": integration.repository,
            "url": display_url(integration.url),
            "branch": integration.branch,
            "base": integration.base,
            "base_commit": integration.base_commit,
            "head": integration.head,
            "land": integration.land,
            "landed": landed,
            "land_detail": detail,
            "merge_lock": None if lease is None or expires is None or expires < now else {"until": iso(expires)},
        }

    def integration_lines(self, now: datetime) -> list[str]:
        lines = []
        for integration in self.integrations:
            item = self._integration_json(integration, now)
            lock = "merging now" if item["merge_lock"] else "idle"
            landed = f"; {item['land_detail']}" if item["land_detail"] else ""
            lines.append(
                f"{integration.branch} in {item['url']}: from {integration.base} at {integration.base_commit[:12]}, "
                f"head {integration.head[:12]}, {lock}{landed}"
            )
        return lines

    def table(self, now: datetime) -> Table:
        table = Table(title=f"merge queue of {self.plan_id}")
        for column in ("#", "task", "attempt", "phase", "waited", "commit", "detail"):
            table.add_column(column, overflow="fold")
        for row, key in self.requests:
            table.add_row(
                str(row.pk),
                inert(key),
                str(row.attempt),
                f"[{PHASE_STYLE.get(MergePhase(row.phase), '')}]{row.phase}[/]",
                format_duration(waited_seconds(row, now)),
                (row.merged_commit or row.head_commit)[:12],
                inert(row.detail or ""),
            )
        return table


def waited_seconds(row: MergeRequestRow, now: datetime) -> float:
    """How long the request waited in the queue: until a merger took it up, or until now."""
    until = row.started_at or (row.finished_at if row.phase != MergePhase.QUEUED else None) or now
    return max(0.0, (until - row.enqueued_at).total_seconds())


def request_json(row: MergeRequestRow, key: str, now: datetime) -> dict[str, Any]:
    return {
        "id": row.pk,
        "task": key,
        "attempt": row.attempt,
        "phase": row.phase,
        "base_commit": row.base_commit,
        "head_commit": row.head_commit,
        "merged_commit": row.merged_commit,
        "enqueued_at": iso(row.enqueued_at),
        "started_at": iso(row.started_at),
        "finished_at": iso(row.finished_at),
        "waited_s": round(waited_seconds(row, now), 3),
        "tries": row.tries,
        "conflicts": row.conflicts or [],
        "detail": row.detail,
        "resolved_by": row.resolved_by,
    }
