"""`orch run`: a plan run here from start to end. The embedded servers and worker (orch.services.embedded) are
started, the plan submitted with its runner (this process), its progress shown (orch.views.progress) until it is
over, and what was started stopped, whatever happens: Ctrl-C cancels the plan, a worker that stops cancels it too.
The plans of an `orch run` on this host that died are cancelled by the next command (`cancel_dead_runs`)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import click
from rich.console import Console
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from orch.celery import use_broker
from orch.errors import ConfigInvalid, OrchError, StoreUnusable, WorkerStopped
from orch.executors import IN_PROCESS
from orch.intake.agents import AgentRegistry, load_agents
from orch.intake.plan import Plan
from orch.redaction import safe_url
from orch.services.embedded import EmbeddedRedis, EmbeddedWorker, check_home
from orch.services.isolation import resolve_isolation
from orch.services.processes import process_alive, this_process
from orch.services.tasklist_sync import DEFAULT_DEBOUNCE, FileWatch, Follower, ListSpec, dispatch_ready
from orch.settings import get_settings
from orch.states import PLAN_FINAL, PlanStatus
from orch.store import dispatching, operator, plans, runners
from orch.store.db import db_now, ensure_schema, read_session, write_session
from orch.views.format import counted
from orch.views.progress import INTERRUPTED, follow_run, print_final
from orch.views.routes import route_lines
from orch.views.terminal import inert


def run_queues(plan: Plan, registry: AgentRegistry) -> list[str]:
    """The queues `orch run`'s worker reads: every agent type's, for a running plan may gain tasks of any type (a
    task's follow-ups, a re-plan's replacement, which goes to the planner's queue first)."""
    return sorted({*(t.queue for t in plan.tasks), *registry.queues})


def check_agent_isolation(plan: Plan, err: Console) -> None:
    """Before `orch run` starts anything: the isolation its worker will give agents must be possible here (else one
    line, exit 2), and agents that will run without a sandbox are said to."""
    if all(task.executor in IN_PROCESS for task in plan.tasks):
        return
    isolation = resolve_isolation(get_settings())
    if isolation.problem is not None:
        raise ConfigInvalid(isolation.problem)
    if isolation.warning is not None:
        err.print(f"orch run: {isolation.warning}", highlight=False, markup=False)


@dataclass(frozen=True)
class ListRun:
    """`orch run` of a task list: written back as it runs, and with `watch` its edits applied as they are saved."""

    spec: ListSpec
    text: str  # the list as read for the submit
    watch: bool = False
    debounce: float = DEFAULT_DEBOUNCE


class _Stalled(Exception):
    """Only tasks the list holds (deferred) keep the plan from ending."""

    def __init__(self, held: list[tuple[str, str]]) -> None:
        self.held = held
        super().__init__(_held_note(held))


def run_embedded(
    plan: Plan,
    concurrency: int,
    out: Console,
    err: Console,
    as_json: bool = False,
    base_commits: Mapping[str, str] | None = None,
    tasklist: ListRun | None = None,
) -> int:
    """Start the embedded servers and worker, run `plan` to its end, stop them: 0 if it succeeded, 1 if not, 130
    after Ctrl-C (the plan cancelled). Whatever happens, what was started is stopped. Progress and the notes go to
    `err`, the final table (or, `as_json`, `orch status --json`'s document) to `out`."""
    home = get_settings().home.resolve()
    check_home(home)  # before anything starts: a read-only or full ORCH_HOME in one line
    run = _EmbeddedRun(as_json)
    code: int | None = None
    with _CtrlC() as ctrl_c:
        try:
            code = _start_and_watch(plan, concurrency, home, run, out, err, base_commits or {}, tasklist)
        except KeyboardInterrupt:
            code = INTERRUPTED
        except WorkerStopped as stopped:
            ctrl_c.stopping = True
            raise _cancel_after_worker_stopped(run.plan_id, stopped) from None
        finally:
            ctrl_c.stopping = True  # from here on a Ctrl-C never cuts the clean-up short
            if code == INTERRUPTED:
                _cancel_after_ctrl_c(run, out, err)
            run.stop()
            if run.final_write_back is not None:  # the list shows how the run left its tasks
                with contextlib.suppress(Exception):
                    run.final_write_back()
    return INTERRUPTED if ctrl_c.count else (code or 0)


# What signal.signal takes and returns: a handler, SIG_DFL or SIG_IGN, or None (one not installed from Python).
_Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


class _CtrlC:
    """SIGINT while `orch run` runs: the first raises KeyboardInterrupt (the plan is cancelled, the worker stopped);
    a later one, or one while it stops, only says it is stopping. Stopping is bounded (the worker is killed after
    20 s) and must not be cut short: a worker killed while its pool processes end their agents' process groups
    would make them start over, and leave behind what they had not ended yet."""

    def __init__(self) -> None:
        self.count = 0
        self.stopping = False
        self._previous: _Handler = None

    def __enter__(self) -> _CtrlC:
        self._previous = signal.signal(signal.SIGINT, self._interrupted)
        return self

    def __exit__(self, *_exc: object) -> None:
        # Once interrupted, what is left is the exit with 130: a later Ctrl-C (even one during the interpreter's
        # finalization, which resets Python handlers to the default) must not turn it into a death by SIGINT.
        signal.signal(signal.SIGINT, signal.SIG_IGN if self.count else self._previous)

    def _interrupted(self, _signum: int, _frame: object) -> None:
        self.count += 1
        if self.count == 1 and not self.stopping:
            raise KeyboardInterrupt
        sys.stderr.write("interrupted again: still stopping the worker, which ends its agents first\n")


class _EmbeddedRun:
    """What `orch run` started, to be stopped whatever happens."""

    def __init__(self, as_json: bool = False) -> None:
        self.as_json = as_json  # how the final word is printed
        self.redis: EmbeddedRedis | None = None  # once one is started
        self.worker: EmbeddedWorker | None = None  # once started
        self.plan_id: str | None = None
        self.final_write_back: Callable[[], object] | None = None  # a followed list's, once the run is over

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop(cold=True)  # cold: the plan is over or cancelled, so whatever still runs must end
            self.worker.close()
        if self.redis is not None:
            self.redis.stop()


def _start_and_watch(
    plan: Plan,
    concurrency: int,
    home: Path,
    run: _EmbeddedRun,
    out: Console,
    err: Console,
    base_commits: Mapping[str, str],
    tasklist: ListRun | None = None,
) -> int:
    settings = get_settings()
    logs = home / "logs"
    database_url = settings.resolved_database_url
    ensure_schema(database_url)  # a store that is unreachable, corrupt or read-only stops us before Redis starts
    cancel_dead_runs(warn_live=True)
    broker_url = settings.broker_url
    if broker_url is None:
        run.redis = EmbeddedRedis(log_path=logs / "redis.log")
        broker_url = run.redis.start()
    runner = this_process()
    with write_session(database_url) as session:
        run.plan_id = plan_id = plans.submit_plan(session, plan, datetime.now(UTC), base_commits)
        if runner is not None:
            runners.record_runner(session, plan_id, runner)
    queues = run_queues(plan, load_agents(settings.config_dir))
    if tasklist is not None and tasklist.watch:
        use_broker(broker_url)  # what a revision makes ready is sent from here at once
    run.worker = worker = EmbeddedWorker(
        queues=queues,
        env={
            "ORCH_BROKER_URL": broker_url,
            "ORCH_DATABASE_URL": database_url,
            "ORCH_HOME": str(home),
            "ORCH_CONFIG_DIR": str(settings.config_dir.resolve()),
            "ORCH_BEAT_PLANS": plan_id,
        },
        log_path=logs / f"worker-{plan_id}.log",
        concurrency=concurrency,
    )
    worker.start()
    plan_queues = counted(len({t.queue for t in plan.tasks}), "queue")  # its worker reads every type's
    err.print(
        f"[bold]orch run[/] plan [bold]{plan.name}[/] as [cyan]{plan_id}[/]: {counted(len(plan.tasks), 'task')} on "
        f"{plan_queues}; store {safe_url(database_url)}; worker log {worker.log_path}"
    )
    for line in route_lines(plan):  # the routes of tasks without `agent:`, once what could refuse the run has not
        err.print(line, markup=False, highlight=False)
    if tasklist is not None:
        return _run_list(plan, plan_id, tasklist, worker, run, out, err)
    final = watch_plan(plan_id, worker, out, err, as_json=run.as_json)
    if final is PlanStatus.SUCCEEDED and plan.repositories:
        return 0 if land_plan(plan_id, err) else 1
    return 0 if final is PlanStatus.SUCCEEDED else 1


def _run_list(
    plan: Plan, plan_id: str, tasklist: ListRun, worker: EmbeddedWorker, run: _EmbeddedRun, out: Console, err: Console
) -> int:
    """Run a list's plan, writing its tasks' states back into it; with `watch`, its saved edits become revisions and
    the run goes on after the plan ends (a revision may add tasks) until Ctrl-C."""

    def say(text: str) -> None:
        err.print(f"orch run: {inert(text)}", markup=False, highlight=False)

    follower = Follower(tasklist.spec, plan_id, tasklist.text, say, watching=tasklist.watch, debounce=tasklist.debounce)
    follower.origin = f"orch run --watch on {socket.gethostname()} (pid {os.getpid()})"
    follower.dispatch = dispatch_ready(tasklist.spec.registry)
    run.final_write_back = lambda: follower.write_back(force=True)
    said_stalled: list[tuple[str, str]] = []

    def tick() -> None:
        follower.tick()
        with read_session() as session:
            held = dispatching.stalled_on_holds(session, plan_id)
        if held is None:
            said_stalled.clear()
        elif not tasklist.watch:
            raise _Stalled(held)
        elif held != said_stalled:
            said_stalled[:] = held
            say(f"waiting for tasks the list holds: {_held_note(held)}; edit the list to go on")

    with FileWatch(tasklist.spec.path, follower.file_changed) if tasklist.watch else contextlib.nullcontext():
        try:
            final = watch_plan(plan_id, worker, out, err, as_json=run.as_json, extra_check=tick)
        except _Stalled as stalled:
            follower.write_back(force=True)
            reason = f"only tasks its list holds are left: {_held_note(stalled.held)}"
            say(f"{reason}; the plan is cancelled (`orch run --watch` waits for the list to change instead)")
            _record_cancel(plan_id, reason)
            print_final(plan_id, out, run.as_json)
            return 1
        follower.write_back(force=True)
        while tasklist.watch:  # until Ctrl-C: a revision may reopen the plan
            say(f"plan {plan_id} is {final}; still following {tasklist.spec.path} (Ctrl-C to stop)")
            final = _follow_until_reopened(plan_id, worker, follower, out, err, run.as_json, tick)
    if final is PlanStatus.SUCCEEDED and plan.repositories:
        return 0 if land_plan(plan_id, err) else 1
    return 0 if final is PlanStatus.SUCCEEDED else 1


def _held_note(held: list[tuple[str, str]]) -> str:
    shown = "; ".join(f"{key} ({why})" for key, why in held[:5])
    return shown + (f" and {len(held) - 5} more" if len(held) > 5 else "")


def _follow_until_reopened(
    plan_id: str,
    worker: EmbeddedWorker,
    follower: Follower,
    out: Console,
    err: Console,
    as_json: bool,
    tick: Callable[[], None],
) -> PlanStatus:
    """Tick the follower while the plan is over; once a revision reopens it, show its progress to its end again."""
    while True:
        follower.tick()
        if not worker.alive():
            raise WorkerStopped("the worker exited unexpectedly")
        with read_session() as session:
            status = plans.find_plan(session, plan_id).status
        if status not in PLAN_FINAL:
            return watch_plan(plan_id, worker, out, err, as_json=as_json, extra_check=tick)
        time.sleep(0.2)


def land_plan(plan_id: str, err: Console) -> bool:
    """Land a succeeded plan's work per its `land:` (unless its merger already did), saying where it is; False when
    a base could not be fast-forwarded (named, with why)."""
    # lazy (start-up cost): git and the merge queue, for plans with a repository
    from orch.dispatch.merge_queue import land
    from orch.store import merges

    settings = get_settings()
    with read_session() as session:
        integrations = [(i, merges.landed_state(session, i.pk)) for i in merges.plan_integrations(session, plan_id)]
    landed_all = True
    for integration, landed in integrations:
        if landed is None:
            landed, detail = land(integration, settings)
            with write_session() as session:
                merges.record_landing(session, integration.pk, landed, detail)
        else:
            with read_session() as session:
                detail = merges.land_detail(session, integration.pk) or ""
        landed_all &= landed != "refused"
        err.print(detail if landed != "refused" else f"not landed: {detail}", markup=False, highlight=False)
    return landed_all


def _cancel_after_ctrl_c(run: _EmbeddedRun, out: Console, err: Console) -> None:
    err.print("[magenta]interrupted: cancelling the plan and stopping the worker[/]")
    if run.plan_id is None:
        return
    problem = _record_cancel(run.plan_id, "cancelled by Ctrl-C of orch run")
    if problem is not None:
        click.echo(
            f"orch: could not record the cancel: {problem}; run `orch cancel {run.plan_id}` once the store can be "
            f"written",
            err=True,
        )
        return
    if run.worker is not None:
        run.worker.stop(cold=True)
    try:
        print_final(run.plan_id, out, run.as_json)
    except (OrchError, SQLAlchemyError) as exc:  # the cancel is recorded: not being able to show it is no failure
        click.echo(f"orch: {str(exc).splitlines()[0]}", err=True)


def _cancel_after_worker_stopped(plan_id: str | None, stopped: WorkerStopped) -> WorkerStopped:
    """The plan of a worker that stopped is cancelled; where the store refuses, the error says what to do."""
    if plan_id is None:
        return stopped
    problem = _record_cancel(plan_id, "cancelled: the worker of orch run stopped")
    if problem is None:
        return stopped
    message = str(stopped) if stopped.notice else f"the worker stopped: {problem}"
    return WorkerStopped(f"{message}; run `orch cancel {plan_id}` once the store can be written")


def _record_cancel(plan_id: str, reason: str) -> str | None:
    """Cancel the plan; None once recorded, else why the store did not take it (one line)."""
    try:
        with write_session() as session:
            operator.cancel_plan(session, plan_id, datetime.now(UTC), reason)
    except OrchError as exc:
        return str(exc)
    except DBAPIError as exc:  # e.g. still locked after busy_timeout, or the server went away
        return (str(exc.orig).strip().splitlines() or [type(exc).__name__])[0]
    return None


def cancel_dead_runs(warn_live: bool = False) -> None:
    """Cancel the unfinished plans of this host's `orch run`s that died (SIGKILL, OOM, a crash): their tasks held
    their agent types' caps. With `warn_live`, name (in one line) those a live `orch run` here still runs."""
    with read_session() as session:
        runs = runners.unfinished_runner_plans(session, socket.gethostname())
    alive = {run.plan_id: process_alive(run.runner) for run in runs}  # None: cannot tell (no /proc)
    dead = [run for run in runs if alive[run.plan_id] is False]
    live = [run for run in runs if alive[run.plan_id]]
    if dead:
        try:
            with write_session() as session:
                now = db_now(session)
                for run in dead:
                    operator.cancel_plan(session, run.plan_id, now, runners.dead_runner_reason(run.runner))
        except StoreUnusable as exc:
            click.echo(f"orch: could not cancel the plans of orch runs that died: {exc}", err=True)
        else:
            for run in dead:
                click.echo(f"orch: plan {run.plan_id} cancelled: {runners.dead_runner_reason(run.runner)}", err=True)
    if warn_live and live:
        held = ", ".join(f"{run.plan_id} ({run.runner.describe()})" for run in live)
        click.echo(
            f"orch: note: orch run still runs {held} in this store; their tasks count against the same agent types' "
            f"caps",
            err=True,
        )


def watch_plan(
    plan_id: str,
    worker: EmbeddedWorker,
    out: Console,
    err: Console,
    poll: float = 0.25,
    as_json: bool = False,
    extra_check: Callable[[], None] | None = None,
) -> PlanStatus:
    """Show progress until the plan is over (live view on a terminal, one line per event otherwise), then the
    final table. Raises WorkerStopped if the worker exits, or says it stops, first; `extra_check` runs at each
    poll too (a followed list's tick)."""

    def check_worker() -> None:
        if extra_check is not None:
            extra_check()
        notice = worker.notice()
        if notice is not None:
            raise WorkerStopped(f"the worker stopped: {notice}", notice=True)
        if not worker.alive():
            tail = inert(worker.log_tail(), keep_newlines=True)  # it may quote an agent's output
            raise WorkerStopped(f"the worker exited unexpectedly; its log ends with:\n{tail}")

    follow_run(plan_id, err, poll, check_worker)
    return print_final(plan_id, out, as_json)
