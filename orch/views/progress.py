"""`orch watch` (and `orch run`'s live view): a plan's progress polled from the store, read-only, until the plan
is over. Each refresh is a few aggregate queries (orch.views.status.Progress), so a 100,000-task plan costs no more."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console
from rich.live import Live
from rich.text import Text

from orch.states import PlanStatus
from orch.store import plans
from orch.store.db import read_session
from orch.views.status import Progress, line, progress_view, summary_line

INTERRUPTED = 130  # the shell's code for Ctrl-C


def load_progress(plan_id: str) -> Progress:
    with read_session() as session:
        return Progress.load(session, plan_id)


def watch_live(
    plan_id: str, console: Console, interval: float, check: Callable[[], None] | None = None, transient: bool = False
) -> Progress:
    """A live view on a terminal, redrawn every `interval` seconds until the plan is over (`check` runs before
    each wait and may raise to stop). Returns the last progress read."""
    current = load_progress(plan_id)
    with Live(progress_view(current), console=console, auto_refresh=False, transient=transient) as live:
        while not current.is_over:
            if check is not None:
                check()
            time.sleep(interval)
            current = load_progress(plan_id)
            live.update(progress_view(current), refresh=True)
    return current


def watch_lines(plan_id: str, console: Console, interval: float) -> Progress:
    """Not a terminal (a log, a pipe): a summary line whenever the plan's counts change."""
    shown: object = None
    while True:
        current = load_progress(plan_id)
        state = (current.plan.status, sorted(current.counts.items()))
        if state != shown:
            console.print(Text(f"{current.now:%H:%M:%S} ") + summary_line(current), soft_wrap=True)
            shown = state
        if current.is_over:
            return current
        time.sleep(interval)


def follow(plan_ref: str, console: Console, interval: float) -> int:
    """`orch watch`: progress until the plan is over, then its final bars. The exit code is `orch run`'s: 0 if
    the plan succeeded, 1 otherwise, 130 on Ctrl-C (the plan itself is left alone)."""
    with read_session() as session:
        plan_id = plans.find_plan(session, plan_ref).id  # a name is resolved once: a later plan of it is another
    try:
        if console.is_terminal:
            final = watch_live(plan_id, console, interval)
        else:
            final = watch_lines(plan_id, console, interval)
            console.print(progress_view(final))
    except KeyboardInterrupt:
        return INTERRUPTED
    console.print(line(f"details: orch report {plan_id}"), style="dim")
    return 0 if final.plan.status is PlanStatus.SUCCEEDED else 1
