"""What the views share: how statuses are styled, and times, token counts, costs and counts written the same way
in `orch status`, `orch watch`, `orch run`, `orch report` and `orch graph`."""

from __future__ import annotations

import io
from collections.abc import Iterable
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table
from rich.text import Text

from orch.intake.prices import Usage
from orch.states import PlanStatus, TaskStatus
from orch.views.terminal import inert

STATUS_STYLE = {
    TaskStatus.PENDING: "dim",
    TaskStatus.QUEUED: "cyan",
    TaskStatus.RUNNING: "bold blue",
    TaskStatus.MERGING: "blue",
    TaskStatus.SUCCEEDED: "green",
    TaskStatus.FAILED: "bold red",
    TaskStatus.RETRY_WAIT: "yellow",
    TaskStatus.UPSTREAM_FAILED: "red",
    TaskStatus.CANCELLED: "magenta",
    TaskStatus.REPLACED: "green",
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


PLAIN_WIDTH = 1_000_000  # the width a piped table is laid out in: no table of orch's is wider, so none folds


def show_table(console: Console, table: Table) -> None:
    """`table` on `console`. On a terminal, as rich draws it (boxed, fitted to the window). Elsewhere (a pipe, a
    file, a log) plain: its title on a line, a header line, then one line per row, columns aligned by spaces and
    never folded, cut or padded at the end, whatever the width, so `grep`, `cut` and `awk` see a row whole (`--json`
    is for programs). A table is shown once: laid out plain, it is changed in place."""
    if console.is_terminal:
        console.print(table)
        return
    title, table.title = table.title, None
    table.box, table.show_edge, table.pad_edge = None, False, False
    for column in table.columns:
        column.no_wrap, column.overflow = True, "ignore"
    plain = Console(file=io.StringIO(), width=PLAIN_WIDTH, color_system=None, highlight=False, emoji=False)
    plain.print(table)
    rows = [row.rstrip() for row in plain.file.getvalue().splitlines()]  # type: ignore[attr-defined]
    if title is not None:
        rows.insert(0, title.plain if isinstance(title, Text) else Text.from_markup(title).plain)
    console.print(Text("\n".join(rows)), soft_wrap=True, highlight=False)
