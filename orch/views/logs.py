"""`orch logs`: a task attempt's output, from its log file on this host (followed while the attempt runs, with
--follow), else the tail the store keeps. The agent's control and escape sequences are shown as visible escapes
(orch.views.terminal) unless raw."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.orm import Session

from orch.errors import UserError
from orch.executors import LOGGED
from orch.states import AttemptStatus, TaskStatus
from orch.store import plans
from orch.store.db import read_session
from orch.store.models import AttemptRow, TaskRow
from orch.views.terminal import InertDecoder, inert

LOG_CHUNK_BYTES = 64 * 1024  # what `orch logs` reads and prints at a time, however large the log
FOLLOW_POLL_SECONDS = 0.25


def load_attempt(plan_ref: str, task_id: str, number: int | None) -> tuple[str, TaskRow, AttemptRow]:
    """The plan's id, the task and its attempt `number` (None: its latest). A task without attempts is one line
    saying why: not started yet, or never to run (and why not)."""
    with read_session() as session:
        plan = plans.find_plan(session, plan_ref)
        task = plans.task_by_key(session, plan.id, task_id)
        attempts = plans.task_attempts(session, task.pk)
        if not attempts:
            raise UserError(f"task {task_id!r} of plan {plan.id} {never_ran(session, plan.id, task)}")
    chosen = attempts[-1] if number is None else next((a for a in attempts if a.number == number), None)
    if chosen is None:
        raise UserError(f"task {task_id!r} has no attempt {number} (it has {len(attempts)})")
    return plan.id, task, chosen


def reload(attempt: AttemptRow) -> AttemptRow:
    """The attempt as the store has it now (one read by primary key, whatever the plan's size)."""
    with read_session() as session:
        return session.get(AttemptRow, attempt.pk) or attempt


def never_ran(session: Session, plan_id: str, task: TaskRow) -> str:
    """Why a task without attempts has no log (completing "task T of plan P …")."""
    if task.status is TaskStatus.UPSTREAM_FAILED:
        causes = "; ".join(_failed_upstream(session, plan_id, task)) or "a dependency failed"
        return f"never ran and will not: {causes}"
    if task.status is TaskStatus.CANCELLED:
        return "was cancelled before it ran: it has no log"
    if task.status is TaskStatus.SUCCEEDED:
        return "was skipped (orch skip) without running: it has no log"
    return f"has not started yet ({task.status})"


def _failed_upstream(session: Session, plan_id: str, task: TaskRow) -> list[str]:
    """The failed or cancelled tasks upstream of `task` that doomed it (through doomed tasks between)."""
    by_pk = {t.pk: t for t in plans.plan_tasks(session, plan_id)}
    after: dict[int, list[int]] = {}
    for task_pk, depends_on in plans.plan_dependencies(session, plan_id):
        after.setdefault(task_pk, []).append(depends_on)
    causes: list[str] = []
    seen: set[int] = set()
    stack = list(after.get(task.pk, ()))
    while stack:
        pk = stack.pop()
        if pk in seen:
            continue
        seen.add(pk)
        upstream = by_pk[pk]
        if upstream.status is TaskStatus.UPSTREAM_FAILED:
            stack.extend(after.get(pk, ()))
        elif upstream.status in (TaskStatus.FAILED, TaskStatus.CANCELLED):
            how = "failed" if upstream.status is TaskStatus.FAILED else "was cancelled"
            why = f" ({(upstream.error or '').splitlines()[0][:80]})" if upstream.error else ""
            causes.append(inert(f"upstream task {upstream.key!r} {how}{why}"))
    return sorted(causes)


def log_file(plan_id: str, task: TaskRow, attempt: AttemptRow, logs_dir: Path) -> Path | None:
    """The attempt's log file on this host, or None. The worker records its path when it claims the attempt
    (having created the file): a recorded path that is not here is on the worker's host. An attempt recorded
    without one (an executor that writes none, a worker of an older orch) is looked for where this host's workers
    write logs."""
    if attempt.log_path:
        path = Path(attempt.log_path)
    elif task.executor in LOGGED:
        path = logs_dir.resolve() / plan_id / f"{task.key}.{attempt.number}.log"
    else:
        return None
    return path if path.is_file() else None


def print_log(plan_ref: str, task_id: str, number: int | None, follow: bool, raw: bool, logs_dir: Path) -> None:
    """The attempt's log on stdout (`raw`: its bytes unchanged), to its end, or with `follow` until the attempt
    ends (then a line on stderr saying how it ended); where this host has no log file (`logs_dir`: where its
    workers write them), the tail kept in the store, once the attempt has ended. A running attempt whose log is
    on another host is an error naming the worker that has it."""
    decoder = InertDecoder()

    def write(data: bytes, final: bool = False) -> None:
        sys.stdout.buffer.write(data if raw else decoder.feed(data, final).encode("utf-8"))
        sys.stdout.flush()

    def copy_from(path: Path, offset: int) -> int:
        """Print the log from `offset` to its current end, a bounded chunk at a time; returns the new end."""
        with path.open("rb") as log:
            log.seek(offset)
            while chunk := log.read(LOG_CHUNK_BYTES):
                offset += len(chunk)
                write(chunk)
        return offset

    plan_id, task, attempt = load_attempt(plan_ref, task_id, number)
    path = log_file(plan_id, task, attempt, logs_dir)
    if path is None:
        print_stored_tail(task, attempt, write)
        return
    offset = 0
    finished = not follow or attempt.status is not AttemptStatus.RUNNING
    while True:
        offset = copy_from(path, offset)
        if finished:
            write(b"", final=True)  # bytes of a character the log ends inside of: U+FFFD
            if follow:
                print(ended_line(task, attempt), file=sys.stderr, flush=True)
            return
        time.sleep(FOLLOW_POLL_SECONDS)
        attempt = reload(attempt)
        finished = attempt.status is not AttemptStatus.RUNNING  # one more read after it ended


def print_stored_tail(task: TaskRow, attempt: AttemptRow, write: Callable[[bytes, bool], None]) -> None:
    """No log file here: the output the store kept of an ended attempt, saying where the whole log is."""
    here = socket.gethostname()
    where = f"{inert(attempt.log_path)} is on worker {inert(attempt.worker)}" if attempt.log_path else None
    if attempt.status is AttemptStatus.RUNNING:
        if where is None and task.executor not in LOGGED:
            raise UserError(
                f"attempt {attempt.number} of task {task.key!r} is running on worker {inert(attempt.worker)}; its "
                f"executor ({task.executor}) writes no log file: its output is kept in the store when it ends"
            )
        raise UserError(
            f"attempt {attempt.number} of task {task.key!r} is running on worker {inert(attempt.worker)}; its log "
            f"file {inert(attempt.log_path or '')} is not on this host ({here}): run orch logs there"
        )
    detail = f": {where}" if where else f" ({inert(attempt.worker)})"
    print(f"[log file not on this host ({here}){detail}; the last output kept in the store:]", file=sys.stderr)
    sys.stderr.flush()
    write(attempt.output_tail.encode("utf-8"), True)


def ended_line(task: TaskRow, attempt: AttemptRow) -> str:
    """`orch logs -f`'s last line: how the attempt it followed ended."""
    why = f" ({inert((attempt.error or '').splitlines()[0][:160])})" if attempt.error else ""
    return f"orch logs: attempt {attempt.number} of task {inert(task.key)} ended: {attempt.status}{why}"
