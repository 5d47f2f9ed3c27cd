"""What the views share: how statuses are styled, and times, token counts, costs and counts written the same way
in `orch status`, `orch watch`, `orch run`, `orch report` and `orch graph`."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from rich.text import Text

from orch.intake.prices import Usage
from orch.states import PlanStatus, TaskStatus
from orch.views.terminal import inert

STATUS_STYLE = {
    TaskStatus.PENDING: "dim",
    TaskStatus.QUEUED: "cyan",
    TaskStatus.RUNNING: "bold blue",
    TaskStatus.SUCCEEDED: "green",
    TaskStatus.FAILED: "bold red",
    TaskStatus.RETRY_WAIT: "yellow",
    TaskStatus.UPSTREAM_FAILED: "red",
    TaskStatus.CANCELLED: "magenta",
}
PLAN_STYLE = {
    PlanStatus.RUNNING: "bold blue",
    PlanStatus.PAUSED: "yellow",
    PlanStatus.BUDGET_EXHAUSTED: "bold yellow",
    PlanStatus.SUCCEEDED: "bold green",
    PlanStatus.FAILED: "bold red",
    PlanStatus.CANCELLED: "magenta",
}


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def usage_json(usage: Usage) -> dict[str, int]:
    return {
        "input": usage.input_tokens,
        "output": usage.output_tokens,
        "cache_creation": usage.cache_creation_tokens,
        "cache_read": usage.cache_read_tokens,
        "total": usage.total,
    }


def format_tokens(usage: Usage, blank: str = "") -> str:
    return f"{usage.total:,}" if usage.total else blank


def format_cost(cost: float | None, blank: str = "") -> str:
    return blank if cost is None else f"${cost:,.4f}"


def sum_costs(costs: Iterable[float | None]) -> float | None:
    """The known costs added up; None when none is known (no attempt had a price)."""
    known = [c for c in costs if c is not None]
    return sum(known) if known else None


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """`n` and a noun, plural unless n is 1: "1 task", "2,000 tasks", "3 dependencies" (an irregular `plural`)."""
    return f"{n:,} " + (noun if n == 1 else plural or f"{noun}s")


def line(text: str) -> Text:
    """A string from a plan, an agent or the store as one line of plain text: no markup, no control or bidi
    character (orch.views.terminal), whatever terminal or pipe it goes to."""
    return Text(inert(text))
