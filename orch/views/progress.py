"""`orch watch` and `orch run`'s progress: a plan polled from the store, read-only, until it is over, by one loop
(`poll`) with a view for each output. On a terminal both show the live bars (`LiveView`). Piped, `orch watch` prints
a summary line whenever the counts change (`SummaryLines`) and `orch run` a line per event (`EventLines`): the
watcher of a plan of any size wants its state, the run's log wants every change with its error. Each refresh of the
bars or the summary is a few aggregate queries (Progress), so a 100,000-task plan costs no more."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Self

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from sqlalchemy.orm import Session

from orch.budget import Spend
from orch.durations import format_duration
from orch.states import ENDED_WELL, IN_FLIGHT, PLAN_FINAL, TERMINAL, PlanStatus, TaskStatus
from orch.store import events, plans, reads, spend
from orch.store.db import db_now, read_session
from orch.store.models import EventRow, PlanRow
from orch.store.pauses import active_pauses
from orch.views.format import line, show_table
from orch.views.status import PlanSnapshot, summary_line, tasks_table
from orch.views.terminal import inert

INTERRUPTED = 130  # the shell's code for Ctrl-C
RUNNING_SHOWN = 15  # running tasks a live view lists by name


@dataclass(frozen=True)
class Progress:
    """A plan's progress by aggregate, what the live views poll: cheap on a plan of any size (a GROUP BY of its
    tasks, the sum of its attempts' spend, and its few longest-running tasks)."""

    plan: PlanRow
    by_agent: dict[str, Counter[TaskStatus]]
    running: list[reads.RunningTask]  # the longest-running, at most RUNNING_SHOWN
    spend: Spend
    pauses: dict[str, tuple[datetime, str]]
    now: datetime  # the database's clock, which stamped the tasks' starts

    @classmethod
    def load(cls, session: Session, plan_id: str) -> Progress:
        plan = plans.find_plan(session, plan_id)
        by_agent = reads.counts_by_agent(session, plan.id)
        now = db_now(session)
        pauses = {a: (p.until, p.reason) for a, p in active_pauses(session, now).items() if a in by_agent}
        running = reads.running_tasks(session, plan.id, RUNNING_SHOWN)
        return cls(plan, by_agent, running, spend.plan_spend(session, plan.id), pauses, now)

    @property
    def counts(self) -> Counter[TaskStatus]:
        return reads.status_totals(self.by_agent.values())

    @property
    def total_tokens(self) -> int:
        return self.spend.tokens

    @property
    def cost_usd(self) -> float | None:
        return self.spend.usd or None

    @property
    def is_over(self) -> bool:
        return run_is_over(self.plan.status, self.counts)


def run_is_over(status: PlanStatus, counts: Mapping[TaskStatus, int]) -> bool:
    """A plan is over once final, or once out of budget with nothing left running (`orch resume` reopens it)."""
    if status in PLAN_FINAL:
        return True
    return status is PlanStatus.BUDGET_EXHAUSTED and not any(counts.get(s) for s in IN_FLIGHT)


def _bar_row(grid: Table, label: Text | str, counts: Counter[TaskStatus]) -> None:
    total = counts.total()
    done = sum(counts[s] for s in TERMINAL)
    failed = sum(counts[s] for s in TERMINAL - ENDED_WELL)
    bar = ProgressBar(total=max(total, 1), completed=done, width=30, complete_style="red" if failed else "green")
    detail = f"{done}/{total}"
    if failed:
        detail += f" ({failed} not succeeded)"
    if counts[TaskStatus.RUNNING]:
        detail += f", {counts[TaskStatus.RUNNING]} running"
    grid.add_row(label, bar, detail)


def progress_view(progress: Progress) -> RenderableType:
    """Live view: overall bar, a bar per agent type, the running tasks with their durations so far."""
    grid = Table.grid(padding=(0, 1))
    grid.add_column(min_width=24)
    grid.add_column(width=30)
    grid.add_column()
    _bar_row(grid, Text("all tasks", style="bold"), progress.counts)
    for agent, counts in sorted(progress.by_agent.items()):
        _bar_row(grid, line(agent), counts)
    lines: list[RenderableType] = [summary_line(progress), grid]
    for task in progress.running:
        since = "" if task.started_at is None else format_duration((progress.now - task.started_at).total_seconds())
        attempt = f" attempt {task.attempt}" if task.attempt > 1 else ""
        lines.append(Text(f"  ▶ {inert(task.key)} ({inert(task.agent)}{attempt}) {since}", style="blue"))
    more = progress.counts[TaskStatus.RUNNING] - len(progress.running)
    if more > 0:
        lines.append(Text(f"  … and {more} more running", style="blue"))
    return Group(*lines)


def poll(view: View, interval: float, check: Callable[[], None] | None = None) -> None:
    """The progress loop of `orch watch` and `orch run`: `view` reads the plan and shows it, every `interval`
    seconds, until it is over; `check` runs before each wait and may raise to stop."""
    with view:
        while True:
            with read_session() as session:
                over = view.show(session)
            if over:
                return
            if check is not None:
                check()
            time.sleep(interval)


class View:
    """How the loop shows a plan: `show` reads it in `session`, shows what changed since its last call, and says
    whether the plan is over. The loop enters it for its duration."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None

    def show(self, session: Session) -> bool:
        raise NotImplementedError


NotesReader = Callable[[Session, PlanRow], list[str]]
NOTES_EVERY = 10.0  # seconds between two askings of why a plan cannot move (the broker is asked: a second or so)


class Notes:
    """Why a watched plan cannot move (no beat, a queue nobody reads: orch.views.serving), read at most every
    NOTES_EVERY seconds and kept in between."""

    def __init__(self, read: NotesReader | None) -> None:
        self.read = read
        self.lines: list[str] = []
        self.next_read = 0.0

    def current(self, session: Session, plan: PlanRow) -> list[str]:
        if self.read is not None and time.monotonic() >= self.next_read:
            self.lines = self.read(session, plan)
            self.next_read = time.monotonic() + NOTES_EVERY
        return self.lines


class LiveView(View):
    """On a terminal: the bars, redrawn in place (cleared at the end if `transient`)."""

    def __init__(
        self, plan_id: str, console: Console, transient: bool = False, notes: NotesReader | None = None
    ) -> None:
        self.plan_id, self.console, self.transient = plan_id, console, transient
        self.live: Live | None = None
        self.progress: Progress | None = None  # the last read
        self.notes = Notes(notes)

    def __exit__(self, *_exc: object) -> None:
        if self.live is not None:
            self.live.stop()

    def show(self, session: Session) -> bool:
        self.progress = Progress.load(session, self.plan_id)
        notes = [] if self.progress.is_over else self.notes.current(session, self.progress.plan)
        shown = Group(progress_view(self.progress), *(Text(inert(note), style="yellow") for note in notes))
        if self.live is None:
            self.live = Live(shown, console=self.console, auto_refresh=False, transient=self.transient)
            self.live.start(refresh=True)
        else:
            self.live.update(shown, refresh=True)
        return self.progress.is_over


class SummaryLines(View):
    """`orch watch` not on a terminal (a log, a pipe): a summary line whenever the plan's counts change."""

    def __init__(self, plan_id: str, console: Console, notes: NotesReader | None = None) -> None:
        self.plan_id, self.console = plan_id, console
        self.shown: object = None
        self.progress: Progress | None = None  # the last read
        self.notes = Notes(notes)
        self.notes_shown: list[str] = []

    def show(self, session: Session) -> bool:
        self.progress = current = Progress.load(session, self.plan_id)
        state = (current.plan.status, sorted(current.counts.items()))
        if state != self.shown:
            self.console.print(Text(f"{current.now:%H:%M:%S} ") + summary_line(current), soft_wrap=True)
            self.shown = state
        notes = [] if current.is_over else self.notes.current(session, current.plan)
        if notes != self.notes_shown:  # said once, and again when it changes
            for note in notes:
                self.console.print(Text(f"{current.now:%H:%M:%S}   {inert(note)}"), soft_wrap=True)
            self.notes_shown = notes
        return current.is_over


class EventLines(View):
    """`orch run` not on a terminal: its log, a line per event (every state change, with its detail: an attempt's
    error, say), as plain text."""

    def __init__(self, plan_id: str, console: Console) -> None:
        self.plan_id, self.console = plan_id, console
        self.last_event = 0
        self.key_of: dict[int, str] = {}

    def show(self, session: Session) -> bool:
        plan = plans.find_plan(session, self.plan_id)
        if not self.key_of:
            self.key_of = {t.pk: t.key for t in plans.plan_tasks(session, self.plan_id)}
        for event in events.events_after(session, self.plan_id, self.last_event):
            self.last_event = event.pk
            print(format_event(event, self.key_of), file=self.console.file, flush=True)
        return run_is_over(plan.status, reads.count_by_status(session, self.plan_id))


def follow(plan_ref: str, console: Console, interval: float, notes: NotesReader | None = None) -> int:
    """`orch watch`: progress until the plan is over, then its final bars. The exit code is `orch run`'s: 0 if
    the plan succeeded, 1 otherwise, 130 on Ctrl-C (the plan itself is left alone). `notes`: why the plan cannot
    move, if it cannot (shown under the bars, or as lines when they change)."""
    with read_session() as session:
        plan_id = plans.find_plan(session, plan_ref).id  # a name is resolved once: a later plan of it is another
    view = LiveView(plan_id, console, notes=notes) if console.is_terminal else SummaryLines(plan_id, console, notes)
    try:
        poll(view, interval)
    except KeyboardInterrupt:
        return INTERRUPTED
    assert view.progress is not None  # read at least once
    if isinstance(view, SummaryLines):
        console.print(progress_view(view.progress))
    console.print(line(f"details: orch report {plan_id}"), style="dim")
    return 0 if view.progress.plan.status is PlanStatus.SUCCEEDED else 1


def follow_run(plan_id: str, console: Console, interval: float, check: Callable[[], None]) -> None:
    """`orch run`'s progress until the plan is over: the live view on a terminal, cleared at the end (the final
    table follows), else a line per event. `check` runs before each wait and may raise to stop."""
    view = LiveView(plan_id, console, transient=True) if console.is_terminal else EventLines(plan_id, console)
    poll(view, interval, check)


def format_event(event: EventRow, key_of: dict[int, str]) -> str:
    """One line per event; its detail (an agent's error, say) cannot break the line or drive the terminal."""
    stamp = event.at.strftime("%H:%M:%S")
    subject = f"task {key_of.get(event.task_pk, event.task_pk)}" if event.task_pk else "plan"
    attempt = f" #{event.attempt}" if event.attempt else ""
    change = f"{event.old} -> {event.new}" if event.old else f"{event.new or event.kind}"
    detail = f"  ({event.detail})" if event.detail else ""
    return inert(f"{stamp} {subject}{attempt}: {change}{detail}")


def print_final(plan_id: str, console: Console, as_json: bool = False) -> PlanStatus:
    """`orch run`'s last word: the plan's tasks table and summary line, or `orch status --json`'s document."""
    with read_session() as session:
        snapshot = PlanSnapshot.load(session, plans.find_plan(session, plan_id), datetime.now(UTC))
    if as_json:
        console.out(json.dumps(snapshot.as_json(), indent=2), highlight=False)  # no markup, no wrapping
        return snapshot.plan.status
    show_table(console, tasks_table(snapshot, datetime.now(UTC)))
    console.print(summary_line(snapshot))
    return snapshot.plan.status
