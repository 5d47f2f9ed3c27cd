"""`orch logs`: a task attempt's output, from its log file on this host (followed while the attempt runs, with
--follow), else the tail the store keeps. The agent's control and escape sequences are shown as visible escapes
(orch.views.terminal) unless raw."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from orch.errors import UserError
from orch.states import AttemptStatus
from orch.store import plans
from orch.store.db import read_session
from orch.store.models import AttemptRow
from orch.views.terminal import InertDecoder, inert

LOG_CHUNK_BYTES = 64 * 1024  # what `orch logs` reads and prints at a time, however large the log


def load_attempt(plan_ref: str, task_id: str, number: int | None) -> tuple[str, AttemptRow]:
    """The plan's id and the task's attempt `number` (None: its latest)."""
    with read_session() as session:
        plan = plans.find_plan(session, plan_ref)
        task = next((t for t in plans.plan_tasks(session, plan.id) if t.key == task_id), None)
        if task is None:
            raise UserError(f"plan {plan.id} has no task {task_id!r}")
        attempts = plans.task_attempts(session, task.pk)
    if not attempts:
        raise UserError(f"task {task_id!r} of plan {plan.id} has not started yet")
    chosen = attempts[-1] if number is None else next((a for a in attempts if a.number == number), None)
    if chosen is None:
        raise UserError(f"task {task_id!r} has no attempt {number} (it has {len(attempts)})")
    return plan.id, chosen


def print_log(plan_ref: str, task_id: str, number: int | None, follow: bool, raw: bool, logs_dir: Path) -> None:
    """The attempt's log on stdout (`raw`: its bytes unchanged), to its end, or with `follow` until the attempt
    ends; where this host has no log file (`logs_dir`: where its workers write them), the tail kept in the store."""
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

    plan_id, attempt = load_attempt(plan_ref, task_id, number)
    # An attempt's log path is stored when it ends; while it runs, its log is where this host's workers write it.
    path = Path(attempt.log_path or logs_dir.resolve() / plan_id / f"{task_id}.{attempt.number}.log")
    if not path.exists():
        print(
            f"[log file not on this host ({inert(attempt.worker)}); the last output kept in the store:]",
            file=sys.stderr,
            flush=True,
        )
        write(attempt.output_tail.encode("utf-8"), final=True)
        return
    offset = 0
    finished = not follow or attempt.status is not AttemptStatus.RUNNING
    while True:
        offset = copy_from(path, offset)
        if finished:
            write(b"", final=True)  # bytes of a character the log ends inside of: U+FFFD
            return
        time.sleep(0.25)
        _, attempt = load_attempt(plan_ref, task_id, number)
        finished = attempt.status is not AttemptStatus.RUNNING  # one more read after it ended
