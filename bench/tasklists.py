"""Part 5: task lists (issue 16), on a spec-kit `tasks.md` of `tasklist_tasks` tasks generated in the run's folder
(phases of 50, `[P]` tags, `[USn]` labels, backticked paths, `(depends on T0xx-T0yy)` ranges written with an en
dash, detail bullets):

- import, in this process: `orch.intake.tasklists.importing.load_any_plan` (the file read, its format detected,
  read, checked as a whole and validated into a Plan), best and median of `tasklist_runs` runs after one untimed;
  then the same steps timed one by one: the reader alone (`read_tasklist`: the text, the spec-kit reader and the
  list's checks) and the validation (`plan_of_list`: the plan document and `validate_plan`), whose share of the
  import is reported;
- saved edit -> new task queued, the real path on this store and its broker: the list's plan submitted and
  followed as `orch sync` beside a broker does (`Follower(watching=True)` ticked every 0.2 s by a thread,
  `FileWatch` on the list, what a revision makes ready claimed and sent at once by `dispatch_ready`), with a real
  `celery -A orch beat` process ticking every `ORCH_TICK_SECONDS` (1 s) as a deployment has.
  Then `tasklist_edits` times a new task line is saved into the list as an editor saves (a temporary file beside
  it, renamed over it), and the time runs from the rename to the store showing the new task `queued` (polled
  every 10 ms). No worker runs: queued is the end point.

The new task goes at the end of phase 1, whose tasks are all `[P]`: there it waits for nothing. Appended at the
end of the file it would wait, through spec-kit's phase barriers, for every task before it, which no worker runs
here.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bench.infra import PYTHON, BenchError, Child, Fleet, Stores, environ, summary, wait_until
from bench.sizes import Size
from orch.intake.agents import AgentRegistry
from orch.intake.plan import Plan
from orch.services.tasklist_sync import Follower
from orch.states import PlanStatus, TaskStatus
from orch.store.db import read_session
from orch.store.models import TaskRow

PHASE_SIZE = 50  # tasks per phase, as the file has them
FEATURE = "001-bench-task-list"
FOLLOW_SECONDS = 0.2  # how often `orch sync` ticks its follower
POLL_SECONDS = 0.01  # how often the store is read for the new task's state
EN_DASH = "\u2013"  # as spec-kit's generated ranges have it
NEW_TASK_BASE = 9000  # the added tasks' ids: T9001, T9002…, beyond every id of the list

_ENTITIES = ("user", "zone", "offset", "rule", "link", "report", "invoice", "session", "profile", "order")
_SETUP = (
    "Create the package skeleton",
    "Configure linting",
    "Add the formatter settings",
    "Pin the dependencies",
    "Add the editor settings",
)


# --- the list ------------------------------------------------------------------------------------------------


def task_id(number: int) -> str:
    return f"T{number:03d}"


def _setup_line(number: int, index: int) -> list[str]:
    what = _SETUP[index % len(_SETUP)]
    return [f"- [ ] {task_id(number)} [P] {what} in `src/app/setup/part{index:02d}.py`"]


def _story_lines(number: int, phase: int, index: int) -> list[str]:
    """One task of a user story's phase: every tenth task without [P] (the ones after it wait for it), ranges
    and lists of explicit dependencies on the phase before, detail bullets under every third."""
    story = f"[US{phase - 1}]"
    entity = _ENTITIES[index % len(_ENTITIES)]
    module = f"src/app/story{phase - 1:02d}/{entity}_{index:02d}.py"
    if index % 10 == 0:
        line = f"- [ ] {task_id(number)} {story} Implement the {entity} flow in `{module}`"
    elif index % 10 in (1, 2):
        test = f"tests/contract/test_{entity}_{index:02d}.py"
        line = f"- [ ] {task_id(number)} [P] {story} Contract test for {entity} in {test}"
    else:
        line = f"- [ ] {task_id(number)} [P] {story} Model the {entity} record in `{module}`"
    earlier = number - PHASE_SIZE  # the same place in the phase before
    if index % 7 == 3:
        line += f" (depends on {task_id(earlier - 3)}{EN_DASH}{task_id(earlier)})"
    elif index % 7 == 5:
        line += f" (depends on {task_id(earlier - 1)}, {task_id(earlier)})"
    lines = [line]
    if index % 3 == 0:
        lines += [
            f"  - Keep the {entity} rules in one place; see `docs/{entity}.md`.",
            f"  - Accept the examples of the story's acceptance scenario {index % 4 + 1}.",
        ]
    return lines


def speckit_tasks(count: int) -> str:
    """A spec-kit tasks.md of `count` tasks, T001 onwards, in phases of PHASE_SIZE: phase 1 (setup) all [P], the
    others one user story each."""
    lines = [
        "# Tasks: Benchmark feature",
        "",
        f"**Input**: Design documents from `/specs/{FEATURE}/`",
        "**Prerequisites**: plan.md, spec.md, data-model.md",
        "",
        "## Format: `[ID] [P?] [Story] Description`",
        "",
    ]
    for start in range(1, count + 1, PHASE_SIZE):
        phase = (start - 1) // PHASE_SIZE + 1
        lines += ["---", ""]
        if phase == 1:
            lines += ["## Phase 1: Setup", ""]  # no keyword: its tasks route to the fallback type, uncapped here
        else:
            lines += [f"## Phase {phase}: User Story {phase - 1} (Priority: P{min(phase - 1, 3)})", ""]
            lines += [f"### Tests and implementation for User Story {phase - 1}", ""]
        for number in range(start, min(start + PHASE_SIZE, count + 1)):
            index = number - start
            lines += _setup_line(number, index) if phase == 1 else _story_lines(number, phase, index)
        lines += ["", f"**Checkpoint**: phase {phase} is done and testable on its own.", ""]
    return "\n".join(lines)


def write_feature(folder: Path, count: int) -> Path:
    """`<folder>/project/specs/<feature>/tasks.md` with its spec and plan beside it; the list's path. No
    data-model.md: every prompt names the feature's documents, and "data-model" is a keyword of the
    database-architect type (capped at 4), which would then take every task that has no other keyword."""
    feature = folder / "project" / "specs" / FEATURE
    feature.mkdir(parents=True, exist_ok=True)
    for name in ("spec.md", "plan.md"):
        (feature / name).write_text(f"# {name.removesuffix('.md')} of the benchmark's feature\n", encoding="utf-8")
    path = feature / "tasks.md"
    path.write_text(speckit_tasks(count), encoding="utf-8")
    return path


def with_new_task(text: str, number: int) -> str:
    """`text` with a new [P] task at the end of phase 1 (before the phase's checkpoint line)."""
    marker = "\n\n**Checkpoint**: phase 1 "
    at = text.index(marker)
    line = f"- [ ] {task_id(NEW_TASK_BASE + number)} [P] Add edit {number} in `src/app/edit{number}.py`"
    return f"{text[:at]}\n{line}{text[at:]}"


def save_as_editor(path: Path, text: str) -> None:
    """Write `text` as an editor saves: a temporary file beside `path`, flushed to disk, renamed over it."""
    temporary = path.with_name(f".{path.name}.bench-save")
    with temporary.open("w", encoding="utf-8") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


# --- 1. import -------------------------------------------------------------------------------------------------


def measure_import(path: Path, registry: AgentRegistry, runs: int) -> dict[str, Any]:
    """`load_any_plan` called as `orch validate|run|submit|sync` call it, timed `runs` times (after one untimed
    run: the readers' imports), then its steps timed one by one as many times: format detection, the reader
    (`read_tasklist`), the validation (`plan_of_list`)."""
    from orch.intake.targets import load_targets
    from orch.intake.tasklists.importing import PlanInput, load_any_plan, plan_of_list, read_tasklist, resolve_format
    from orch.settings import get_settings

    settings = get_settings()
    roots, targets = settings.workdir_root_paths, load_targets(settings.config_dir)
    how = PlanInput()
    plan = load_any_plan(path, registry, roots, targets=targets, how=how)
    whole: list[float] = []
    for _ in range(runs):
        began = time.perf_counter()
        load_any_plan(path, registry, roots, targets=targets, how=how)
        whole.append(time.perf_counter() - began)
    detect: list[float] = []
    reader: list[float] = []
    validation: list[float] = []
    for _ in range(runs):
        began = time.perf_counter()
        found = resolve_format(path, how.format, str(path))
        detected = time.perf_counter()
        if found != "speckit":
            raise BenchError(f"{path} was read as {found}, not as a spec-kit list")
        read = read_tasklist(path, found, how.options, str(path))
        was_read = time.perf_counter()
        plan_of_list(read, registry, roots, targets=targets)
        validated = time.perf_counter()
        detect.append(detected - began)
        reader.append(was_read - detected)
        validation.append(validated - was_read)
    steps = [d + r + v for d, r, v in zip(detect, reader, validation, strict=True)]
    return {
        "tasks": len(plan.tasks),
        "edges": sum(len(task.after) for task in plan.tasks),
        "file_kib": path.stat().st_size / 1024,
        "runs": runs,
        "load_any_plan_s": _seconds(whole),
        "detect_s": _seconds(detect),
        "read_tasklist_s": _seconds(reader),
        "plan_of_list_s": _seconds(validation),
        "validation_share_percent": 100 * statistics.median(validation) / statistics.median(steps),
    }


def _seconds(values: list[float]) -> dict[str, float]:
    return {"best": min(values), "median": statistics.median(values), **summary(values)}


# --- 2. saved edit → new task queued ----------------------------------------------------------------------------


@dataclass
class EditClock:
    """When, after the latest save, the watcher first told of a change and the follower applied a revision."""

    seen: float | None = None
    applied: float | None = None
    sync_ms: list[float] = field(default_factory=list)  # each sync that applied a revision: read + validate + revise
    revise_ms: list[float] = field(default_factory=list)  # ... its revision's transaction alone

    def reset(self) -> None:
        """Before a save."""
        self.seen = self.applied = None

    def told(self) -> None:
        if self.seen is None:
            self.seen = time.monotonic()


@dataclass
class TimedFollower(Follower):
    """orch sync's Follower, the first news of a change and its syncs timed."""

    clock: EditClock = field(default_factory=EditClock)

    def file_changed(self, now: float | None = None) -> None:
        self.clock.told()
        super().file_changed(now)

    def sync_now(self) -> Any:
        began = time.monotonic()
        applied = super().sync_now()
        if applied is not None and applied.number is not None:
            ended = time.monotonic()
            self.clock.applied = ended
            self.clock.sync_ms.append(1000 * (ended - began))
        return applied

    def _revise(self, plan: Plan, text: str) -> Any:
        began = time.monotonic()
        applied = super()._revise(plan, text)
        if applied is not None and applied.number is not None:
            self.clock.revise_ms.append(1000 * (time.monotonic() - began))
        return applied


class FollowLoop:
    """`orch sync`'s loop in a thread: the follower ticked every FOLLOW_SECONDS while its plan is not cancelled."""

    def __init__(self, follower: Follower) -> None:
        self.follower = follower
        self.stop = threading.Event()
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="bench follower", daemon=True)

    def _run(self) -> None:
        try:
            while not self.stop.is_set() and not _cancelled(self.follower.plan_id):
                self.follower.tick()
                self.stop.wait(FOLLOW_SECONDS)
        except BaseException as exc:  # shown by check(), in the benchmark's thread
            self.failure = exc

    def check(self) -> None:
        if self.failure is not None:
            raise BenchError(f"the follower failed: {type(self.failure).__name__}: {self.failure}")
        if not self.thread.is_alive() and not self.stop.is_set():
            raise BenchError("the follower stopped: its plan was cancelled")


def _cancelled(plan_id: str) -> bool:
    from orch.store.plans import get_plan

    with read_session() as session:
        plan = get_plan(session, plan_id)
        return plan is None or plan.status is PlanStatus.CANCELLED


def _status(plan_id: str, key: str) -> TaskStatus | None:
    with read_session() as session:
        status: TaskStatus | None = session.scalar(
            select(TaskRow.status).where(TaskRow.plan_id == plan_id, TaskRow.key == key)
        )
        return status


def _row(plan_id: str, key: str) -> str:
    """The task's state as the store has it, to say why it is not queued."""
    with read_session() as session:
        row = session.execute(
            select(TaskRow.status, TaskRow.agent, TaskRow.unmet_deps).where(
                TaskRow.plan_id == plan_id, TaskRow.key == key
            )
        ).first()
    return "not in the store" if row is None else f"{row[0]}, agent type {row[1]}, {row[2]} unmet dependencies"


def _queued_count(plan_id: str) -> int:
    from orch.store import reads

    with read_session() as session:
        return reads.count_by_status(session, plan_id).get(TaskStatus.QUEUED, 0)


def submit_followed(path: Path, registry: AgentRegistry, say: Callable[[str], None], debounce: float) -> TimedFollower:
    """What `orch sync FILE` does before it follows the file: the list read as a plan, its spec, no plan following it
    yet, so the plan submitted, and a follower (watching) made from the text as read; its marks written back."""
    from orch.intake.plan_document import read_plan_text
    from orch.intake.targets import load_targets
    from orch.intake.tasklists.importing import PlanInput, load_any_plan
    from orch.services.tasklist_sync import ListSpec, dispatch_ready, followed_plan
    from orch.settings import get_settings
    from orch.store import plans
    from orch.store.db import db_now, write_session

    settings = get_settings()
    targets = load_targets(settings.config_dir)
    how = PlanInput()
    plan: Plan = load_any_plan(path, registry, settings.workdir_root_paths, targets=targets, how=how)
    if plan.origin is None:
        raise BenchError(f"{path} was read as an orch plan, not as a task list")
    spec = ListSpec(
        path=Path(plan.origin.file),
        format=plan.origin.format,  # type: ignore[arg-type]
        options=how.options,
        registry=registry,
        roots=settings.workdir_root_paths,
        targets=targets,
    )
    if followed_plan(spec.path) is not None:
        raise BenchError(f"a plan follows {path} already")
    with write_session() as session:
        plan_id = plans.submit_plan(session, plan, db_now(session), {})
    follower = TimedFollower(spec, plan_id, read_plan_text(spec.path), say, watching=True, debounce=debounce)
    follower.dispatch = dispatch_ready(spec.registry)  # as `orch sync` beside a broker: ready tasks sent at once
    follower.write_back(force=True)
    return follower


def measure_edits(path: Path, registry: AgentRegistry, beat: Child, edits: int, debounce: float) -> dict[str, Any]:
    """The list submitted and followed; `edits` saves each adding a task, timed from the save to the task queued."""
    from orch.services.tasklist_sync import FileWatch

    said: list[str] = []
    follower = submit_followed(path, registry, said.append, debounce)
    plan_id = follower.plan_id
    loop = FollowLoop(follower)
    samples: list[dict[str, float]] = []
    with FileWatch(follower.spec.path, follower.file_changed):
        loop.thread.start()
        try:
            wait_until(lambda: _queued_count(plan_id) > 0, 60, "the beat to queue the list's first tasks")
            for number in range(1, edits + 1):
                time.sleep(0.3 + 0.1 * number)  # the saves fall at different moments of the beat's period
                samples.append(_one_edit(path, follower, loop, beat, number, debounce))
        finally:
            loop.stop.set()
            loop.thread.join(timeout=10)
    loop.check()
    if follower.syncs_failed or follower.revisions != edits:
        raise BenchError(f"{follower.revisions} revisions for {edits} edits ({follower.syncs_failed} failed): {said}")
    totals = [s["save_to_queued_s"] for s in samples]
    return {
        "plan_id": plan_id,
        "debounce_s": debounce,
        "edits": samples,
        "save_to_queued_s": {"median": statistics.median(totals), **summary(totals)},
        "over_debounce_max_s": max(totals) - debounce,
        "sync_ms": summary(follower.clock.sync_ms),
        "revise_ms": summary(follower.clock.revise_ms),
        "follower_said": said[:20],
    }


def _one_edit(
    path: Path, follower: TimedFollower, loop: FollowLoop, beat: Child, number: int, debounce: float
) -> dict[str, float]:
    """One save adding task T900n, and the times from the save to: the watcher telling, the follower's revision
    applied, the store showing the task queued."""
    key = task_id(NEW_TASK_BASE + number)
    text = with_new_task(path.read_text(encoding="utf-8"), number)
    clock = follower.clock
    clock.reset()
    save_as_editor(path, text)
    saved = time.monotonic()
    deadline = saved + debounce + 30

    def late(what: str) -> Callable[[], str]:
        return lambda: f"task {key}: {what} {deadline - saved:.0f}s after its save ({_row(follower.plan_id, key)})"

    # The store is read only once the revision is applied: reads every 10 ms while the follower syncs would take
    # this process's CPU from it.
    _wait(lambda: clock.applied is not None, deadline, loop, beat, late("no revision applied"))
    queued = _wait(
        lambda: _status(follower.plan_id, key) is TaskStatus.QUEUED, deadline, loop, beat, late("not queued")
    )
    if clock.seen is None or clock.applied is None:
        raise BenchError(f"task {key} queued without the watcher telling of its save")
    return {
        "save_to_queued_s": queued - saved,
        "save_to_seen_ms": 1000 * (clock.seen - saved),
        "seen_to_applied_ms": 1000 * (clock.applied - clock.seen),
        "applied_to_queued_ms": 1000 * (queued - clock.applied),
    }


def _wait(until: Callable[[], bool], deadline: float, loop: FollowLoop, beat: Child, late: Callable[[], str]) -> float:
    """Poll `until` every POLL_SECONDS (the follower and the beat checked alive); when it held (monotonic)."""
    while not until():
        loop.check()
        beat.check_alive()
        if time.monotonic() > deadline:
            raise BenchError(late())
        time.sleep(POLL_SECONDS)
    return time.monotonic()


# --- the part ------------------------------------------------------------------------------------------------


def run_tasklists(
    fleet: Fleet,
    env: dict[str, str],
    stores: Stores,
    broker_url: str,
    registry: AgentRegistry,
    size: Size,
    folder: Path,
) -> dict[str, Any]:
    """The import in this process, then on a fresh store of this run's kind, with a beat process on it, the
    saved edits."""
    from orch.celery import use_broker
    from orch.store.db import ensure_schema

    folder.mkdir(parents=True, exist_ok=True)
    path = write_feature(folder, size.tasklist_tasks)
    result: dict[str, Any] = {
        "tasks": size.tasklist_tasks,
        "import": measure_import(path, registry, size.tasklist_runs),
    }
    url = stores.new("tasklists")
    with environ(ORCH_DATABASE_URL=url, ORCH_BROKER_URL=broker_url):
        use_broker(broker_url)
        ensure_schema(url)  # before the beat starts, so that it does not migrate the store itself
        beat = fleet.start(
            "tasklists-beat",
            [PYTHON, "-m", "celery", "-A", "orch", "beat", "-s", str(folder / "beat-schedule")],
            {**env, "ORCH_DATABASE_URL": url},
            folder / "beat.log",
            folder,
        )
        try:
            result["edit"] = measure_edits(path, registry, beat, size.tasklist_edits, size.tasklist_debounce)
        finally:
            fleet.stop(beat)
    return result
