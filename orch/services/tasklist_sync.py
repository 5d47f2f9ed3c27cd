"""Keeping a task list and its plan in sync, both ways: the list's edits become plan revisions (debounced), and the
tasks' states are written back into the list as marks. Used by `orch run FILE` (write-back), `orch run FILE --watch`
and `orch sync FILE` (both ways).

A write re-reads the file first and writes only when it is what orch last read or wrote (else the edit is the
user's, to be read first); it writes a temporary file beside the list and renames it over the list, keeping its
permissions, and changes only marks: every other byte stays.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError

from orch.errors import OrchError, PlanInvalid, TaskStateConflict
from orch.intake.agents import AgentRegistry
from orch.intake.plan import Plan
from orch.intake.plan_document import read_plan_text
from orch.intake.tasklists.importing import Executor, ListRead, plan_of_list, read_tasklist
from orch.intake.tasklists.model import Format
from orch.intake.tasklists.reading import ReadOptions
from orch.intake.tasklists.writeback import apply_changes, mark_changes
from orch.states import TaskStatus
from orch.store.db import db_now, read_session, write_session
from orch.store.models import EventRow, PlanRow, TaskRow
from orch.store.revisions import LIST_CHANGED, Applied, revise_plan

DEFAULT_DEBOUNCE = 2.0
MAX_DEBOUNCE_WAIT = 10.0  # edits that never pause still sync this often
Say = Callable[[str], None]


@dataclass(frozen=True)
class ListSpec:
    """A followed list: where it is, how it is read, and what its plan's tasks are resolved against."""

    path: Path
    format: Format
    options: ReadOptions
    registry: AgentRegistry
    roots: Sequence[Path] = ()
    targets: Any = None
    executor: Executor | None = None
    mark_running: bool | None = None  # None: where the format has an in-progress mark


def plan_of(spec: ListSpec, read: ListRead) -> Plan:
    return plan_of_list(read, spec.registry, spec.roots, targets=spec.targets, executor=spec.executor)


@dataclass
class Follower:
    """One list and its plan: `tick` applies the list's settled edits (when `watching`) and writes states back."""

    spec: ListSpec
    plan_id: str
    text: str  # the list as orch last read or wrote it
    say: Say
    watching: bool = False
    debounce: float = DEFAULT_DEBOUNCE
    origin: str = field(default_factory=lambda: f"orch sync on {socket.gethostname()} (pid {os.getpid()})")  # who
    changed_at: float | None = None  # when an edit not yet applied was first seen (monotonic)
    settled_at: float | None = None  # when the file last changed (monotonic)
    last_event: int = -1
    revisions: int = 0
    syncs_failed: int = 0
    last_problem: str | None = None
    # Called with the plan id once a revision is applied: what it made ready is sent at once, not at the beat's
    # next tick (None: the beat sends it).
    dispatch: Callable[[str], None] | None = None
    unsettled_text: str | None = None  # not watching: a changed text seen, adopted once it stays the same
    unsettled_at: float = 0.0

    def file_changed(self, now: float | None = None) -> None:
        """The watcher saw the list change (perhaps by orch's own write: `tick` tells)."""
        now = time.monotonic() if now is None else now
        self.settled_at = now
        if self.changed_at is None:
            self.changed_at = now

    def tick(self, now: float | None = None) -> None:
        """Apply a settled edit (watching), then write back what changed in the store since the last tick."""
        now = time.monotonic() if now is None else now
        if self.watching and self.changed_at is not None and self._settled(now):
            self.sync_now()
        self.write_back()

    def _settled(self, now: float) -> bool:
        assert self.changed_at is not None and self.settled_at is not None
        return now - self.settled_at >= self.debounce or now - self.changed_at >= max(MAX_DEBOUNCE_WAIT, self.debounce)

    def sync_now(self) -> Applied | None:
        """Read the list; if it is not what orch last saw, apply it as a revision. None: nothing to apply, or the
        list cannot be read as it is (said once, the plan left as it was)."""
        self.changed_at = self.settled_at = None
        try:
            text = read_plan_text(self.spec.path, str(self.spec.path))
        except PlanInvalid as exc:
            self._problem("; ".join(exc.problems))
            return None
        if text == self.text:
            return None
        try:
            read = read_tasklist(self.spec.path, self.spec.format, self.spec.options, str(self.spec.path))
            plan = plan_of(self.spec, read)
        except PlanInvalid as exc:
            self._problem("not applied: " + "; ".join(exc.problems))
            return None
        applied = self._revise(plan, read.text)
        if applied is None:
            return None
        self.text = read.text
        self.last_problem = None
        if applied.number is not None:
            self.revisions += 1
            self.say(f"revision {applied.number} of plan {self.plan_id}: {applied.summary()}")
            self._dispatch()
        elif applied.revision.cycle or applied.revision.not_applied:
            self.say(f"{self.spec.path}: {applied.summary()}")
        return applied

    def _revise(self, plan: Plan, text: str) -> Applied | None:
        def still_current() -> bool:
            return read_plan_text(self.spec.path, str(self.spec.path)) == text

        for attempt in range(3):
            try:
                with write_session() as session:
                    return revise_plan(session, self.plan_id, plan, datetime.now(UTC), self.origin, still_current)
            except TaskStateConflict as exc:
                if str(exc) == LIST_CHANGED:  # read again once the newer text settles
                    self.file_changed()
                    return None
                if "revised meanwhile" not in str(exc) or attempt == 2:
                    self._problem(str(exc))
                    return None
            except (DBAPIError, OrchError) as exc:  # a deadlock, a lost connection, a full store: tried again
                if attempt == 2:
                    self.syncs_failed += 1
                    self._problem(f"the store refused the revision: {_first_line(exc)}")
                    return None
        return None

    def _dispatch(self) -> None:
        if self.dispatch is None:
            return
        try:
            self.dispatch(self.plan_id)
        except Exception as exc:  # the broker or the store refused: the beat sends what is ready at its next tick
            self._problem(f"what the revision made ready waits for the beat: {type(exc).__name__}: {exc}")

    def _problem(self, problem: str) -> None:
        if problem != self.last_problem:
            self.say(problem)
        self.last_problem = problem

    def write_back(self, force: bool = False) -> int:
        """Write the tasks' states into the list as marks, if the store changed since the last write-back. Returns
        how many marks changed. A store or file that refuses is said once; the next tick tries again."""
        try:
            with read_session() as session:
                newest = session.scalar(select(func.max(EventRow.pk)).where(EventRow.plan_id == self.plan_id)) or 0
                if newest == self.last_event and not force:
                    return 0
                states = _states(session, self.plan_id)
            written = self._write_marks(states)
        except (DBAPIError, OrchError) as exc:
            self._problem(f"cannot read the plan's states now: {_first_line(exc)}")
            return 0
        except OSError as exc:
            self._problem(f"cannot write {self.spec.path}: {exc.strerror or exc}")
            return 0
        if written is not None:
            self.last_event = newest
        return written or 0

    def _write_marks(self, states: Mapping[str, TaskStatus]) -> int | None:
        """None: the list changed under orch (a user's edit, to be read first) and was left alone."""
        try:
            current = read_plan_text(self.spec.path, str(self.spec.path))
        except PlanInvalid as exc:
            self._problem("; ".join(exc.problems))
            return None
        generated_ok = True
        if current != self.text:
            if self.watching:  # an edit the watcher may not have told of yet: applied once it settles
                if self.changed_at is None:
                    self.file_changed()
                return None
            # Not watching: its edits are not applied, but its marks are still written — once it has settled (an
            # editor saving in place may be half way through), and not those of items whose id is their line.
            now = time.monotonic()
            if current != self.unsettled_text:
                self.unsettled_text, self.unsettled_at = current, now
                return None
            if now - self.unsettled_at < self.debounce:
                return None
            self.text = current
            generated_ok = False
        try:
            read = read_tasklist(self.spec.path, self.spec.format, self.spec.options, str(self.spec.path))
        except PlanInvalid as exc:
            self._problem("cannot write states back: " + "; ".join(exc.problems))
            return None
        if read.text != current:
            return None
        changes = mark_changes(read.tasks, current, states, self.spec.mark_running)
        if not generated_ok:  # an item without an id is named by its line, which the edit may have moved
            by_line = {task.id for task in read.tasks.tasks if task.id == f"L{task.line}"}
            changes = [change for change in changes if change.task_id not in by_line]
        if not changes:
            return 0
        updated = apply_changes(read.tasks, current, changes)
        if not replace_if_unchanged(self.spec.path, current, updated):
            return None
        self.text = updated
        return len(changes)


def _first_line(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    return (str(original).strip().splitlines() or [type(exc).__name__])[0]


def _states(session: Any, plan_id: str) -> dict[str, TaskStatus]:
    rows = session.execute(select(TaskRow.key, TaskRow.status, TaskRow.hold).where(TaskRow.plan_id == plan_id))
    # a task the list withdrew is no longer the list's: its mark is left alone
    return {key: status for key, status, hold in rows if not (status is TaskStatus.CANCELLED and hold)}


def replace_if_unchanged(path: Path, expected: str, text: str) -> bool:
    """Write `text` over the file at `path` if it still holds `expected`: a temporary file beside it (same
    permissions, and owner where this process may set it), fsynced, renamed over it; a file with other hard links
    is written in place instead (a rename would detach them). False, writing nothing, when the file changed
    meanwhile (its text, or its size, time or inode since that last look)."""
    target = path.resolve()
    before = os.stat(target)
    if read_plan_text(path, str(path)) != expected:
        return False
    data = text.encode("utf-8", "surrogatepass")
    if before.st_nlink > 1:
        return _write_in_place(target, before, data)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".orch-tmp", dir=target.parent)
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, stat.S_IMODE(before.st_mode))
        with contextlib.suppress(OSError):  # only a privileged process may give a file away: best effort
            os.chown(temporary, before.st_uid, before.st_gid)
        if _changed_since(target, before):  # the last look: an edit since is the user's, kept
            os.unlink(temporary)
            return False
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return True


def _changed_since(path: Path, before: os.stat_result) -> bool:
    now = os.stat(path)
    return (now.st_ino, now.st_size, now.st_mtime_ns) != (before.st_ino, before.st_size, before.st_mtime_ns)


def _write_in_place(path: Path, before: os.stat_result, data: bytes) -> bool:
    if _changed_since(path, before):
        return False
    with open(path, "r+b") as file:
        file.write(data)
        file.truncate()
        file.flush()
        os.fsync(file.fileno())
    return True


def dispatch_ready(registry: AgentRegistry) -> Callable[[str], None]:
    """A follower's `dispatch`: claim what is ready in the plan now and send it through this process's broker (as
    the beat would at its next tick)."""

    def dispatch(plan_id: str) -> None:
        # lazy (start-up cost): Celery, for the commands that follow a list beside a broker
        from orch.celery import app
        from orch.dispatch.reconcile import publish, reconcile_plans
        from orch.settings import get_settings

        with write_session() as session:
            dispatches = reconcile_plans(session, [plan_id], registry, db_now(session))
        publish(app, dispatches, get_settings().kill_grace_seconds)

    return dispatch


# --- finding and starting the plan of a list ---------------------------------------------------------------------


def followed_plan(path: Path) -> PlanRow | None:
    """The newest plan not cancelled that follows the list at `path`."""
    with read_session() as session:
        return session.scalars(
            select(PlanRow)
            .where(PlanRow.list_file == str(path.resolve()), PlanRow.status != "cancelled")
            .order_by(PlanRow.created_at.desc())
            .limit(1)
        ).first()


class FileWatch:
    """While entered, a thread tells `on_change` whenever the file at `path` is written or replaced (its folder is
    watched, so an editor's save by rename is seen too)."""

    def __init__(self, path: Path, on_change: Callable[[], None]) -> None:
        self.path = path.resolve()
        self.on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"watch {path.name}", daemon=True)

    def __enter__(self) -> FileWatch:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _watch(self) -> None:
        import watchfiles  # lazy (start-up cost): only the commands that follow a file

        name = self.path.name

        def ours(_change: watchfiles.Change, changed: str) -> bool:
            return Path(changed).name == name

        for _changes in watchfiles.watch(
            self.path.parent,
            watch_filter=ours,
            debounce=200,
            step=50,
            stop_event=self._stop,
            recursive=False,
            raise_interrupt=False,
        ):
            self.on_change()
