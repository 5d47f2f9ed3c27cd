"""One attempt's life on a worker: claim it (or drop a duplicate), run its executor, record the outcome, and
dispatch the plan's newly ready tasks at once (the fast path)."""

from __future__ import annotations

import functools
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from orch.celery import app
from orch.decisions.followups import PLANNER, Limits
from orch.decisions.replan import REPLAN_DECLINED
from orch.decisions.retry import Backoff, Outcome, decide_outcome
from orch.dispatch import breaker
from orch.dispatch.merge_queue import send_mergers
from orch.dispatch.reconcile import dispatch_after_result, publish, reconcile_plans
from orch.errors import ExecutorUnavailable
from orch.executors import LOGGED, NETWORKED, PROMPTED, ExecutorName
from orch.failures import FailureClass, PauseCause
from orch.intake.agents import AgentRegistry, agent_network, load_agents
from orch.intake.prices import Usage, cost_usd, load_prices, price_for
from orch.intake.prompts import PromptTemplates, build_prompt, build_system_prompt, load_templates
from orch.log import bind_attempt, get_logger, private_log_file
from orch.records import AttemptResult, Claim, ClaimedTask, Dispatch, Integration
from orch.redaction import Redactor
from orch.services.git.command import GitFailed
from orch.services.git.remote import display_url
from orch.services.git.repository import StateNotKnown
from orch.settings import Settings, get_settings
from orch.states import DOOMING, TaskStatus
from orch.store import attempts, merges, pauses, plan_context
from orch.store.db import STORE_UNAVAILABLE, db_now, read_session, with_store_retry, write_session
from orch.store.growth import GrowthRules
from workers import control, replanning, workspace, worktree
from workers.executors import AttemptContext, get_executor
from workers.executors.base import with_scratch
from workers.executors.followups import collect_followups, offer_followups
from workers.heartbeat import LEASE_GONE, Heartbeat
from workers.verification import check_scope, run_verify

log = get_logger(__name__)


def run_attempt(task_pk: int, attempt: int, worker: str | None = None) -> str:
    """Run attempt `attempt` of task `task_pk`; returns what became of it (for the worker's log)."""
    settings = get_settings()  # read once per attempt, and passed down
    store = settings.resolved_database_url
    worker = worker or socket.gethostname()
    bind_attempt(task_pk=task_pk, attempt=attempt)

    def open_log(plan_id: str, task: ClaimedTask) -> str | None:
        return open_attempt_log(settings.logs_dir, plan_id, task, attempt)

    def claim_it() -> tuple[Claim, AttemptContext] | None:
        with write_session(store) as session:
            pid = os.getpid()
            claimed = attempts.claim(session, task_pk, attempt, worker, pid, settings.lease_seconds, log_path=open_log)
            return None if claimed is None else (claimed[0], _context(session, *claimed, settings))

    claimed = with_store_retry(claim_it, settings.store_retry_seconds, _store_wait("claim", task_pk))
    if claimed is None:
        why = _dropped(store, task_pk, attempt)
        log.info("dropped duplicate or stale delivery", task_pk=task_pk, attempt=attempt, why=why)
        return why  # the task's result, as Flower shows it
    claim, ctx = claimed
    bind_attempt(plan_id=claim.plan_id, task=claim.key, attempt=claim.attempt, task_pk=task_pk)
    log.info("attempt started", executor=ctx.task.executor)
    price = functools.partial(usage_cost, settings=settings)
    heartbeat = Heartbeat(claim, ctx.control, settings.heartbeat_seconds, settings.lease_seconds, price, store)
    with control.active(ctx.control), heartbeat:
        if ctx.task.replanning:  # its retries are spent: the planner is asked for tasks in its place
            result = replanning.replan(ctx, claim)
        else:
            result = run_in_worktree(ctx, claim) if ctx.task.repository else run_checked(ctx, claim)
        # The lease is renewed until the result is recorded: writing it may wait out a store outage.
        heartbeat.recording = True
        return finish(claim, redact(result, ctx.redactor()), settings)


def _dropped(store: str, task_pk: int, attempt: int) -> str:
    """Why the claim found nothing to run, for the task's result; one read, not retried (nothing is lost)."""
    try:
        with read_session(store) as session:
            return attempts.dropped_delivery(session, task_pk, attempt)
    except STORE_UNAVAILABLE:
        return f"duplicate or stale delivery of attempt {attempt} of task #{task_pk}; nothing done"


def run_checked(ctx: AttemptContext, claim: Claim) -> AttemptResult:
    """The executor, then the checks of its work: files changed, scope, the task's `verify:` command."""
    started = time.monotonic()
    watch = ctx.task.executor != ExecutorName.NOOP and ctx.workdir.is_dir()  # noop changes nothing: no git round trips
    before = workspace.snapshot(ctx.workdir) if watch else None
    with with_scratch(ctx) as ctx:  # the attempt's own folder (its agent's HOME and TMPDIR), verify's too
        ctx = offer_followups(ctx)
        result = collect_followups(ctx, execute(ctx, claim))
        if before is not None:
            result = replace(result, files_changed=workspace.changed_since(before, ctx.workdir))
        if result.succeeded or ctx.control.stop_request is None:
            knowable = before is not None or (watch and workspace.holds_repository(ctx.workdir))
            result = check_scope(result, ctx.task.files, ctx.task.scope, known_before=knowable)
            result = run_verify(result, ctx, ctx.task.verify)
    return replace(result, duration_s=round(time.monotonic() - started, 3), cost_usd=attempt_cost(result, ctx.settings))


def run_in_worktree(ctx: AttemptContext, claim: Claim) -> AttemptResult:
    """A worktree attempt: its own worktree at the integration branch's head, the executor and checks there, and
    orch's commit of its work (under the lease), pushed; the worktree is removed at the end, its work kept on its
    branch and archive ref."""
    started = time.monotonic()
    settings = ctx.settings
    worktree.sweep_now_and_then(settings)
    over = worktree.over_quota(settings)
    if over is not None:
        return AttemptResult(
            False, failure_class=FailureClass.WORKTREE_QUOTA, error=over, retry_after=worktree.QUOTA_WAIT_SECONDS
        )
    try:
        integration, merging = _integration_of(settings.resolved_database_url, claim, ctx.task)
        tree = worktree.prepare(claim, ctx.task, integration, settings, merging)
    except (GitFailed, StateNotKnown) as exc:
        return AttemptResult(False, failure_class=FailureClass.WORKTREE_ERROR, error=str(exc))
    if not _record_worktree(settings.resolved_database_url, claim, tree):
        worktree.discard(tree)  # nothing ran in it
        return AttemptResult(False, failure_class=FailureClass.LEASE_LOST, error=LEASE_GONE)
    in_tree = replace(
        ctx,
        task=replace(ctx.task, workdir=str(tree.path)),
        git_readable=(tree.cache.path,),
        git_writable=(tree.admin_dir,),
        prompt=ctx.prompt and worktree_prompt(ctx.prompt, integration, tree),
    )
    # An exception (a shutdown, the store gone) leaves the worktree as it is: its work is not kept yet, and the
    # next sweep on this host (a worker's start, `orch worktrees --prune`) commits and pushes it first.
    result = _run_in(in_tree, claim, tree)
    if result.head_commit is not None:
        worktree.discard(tree)  # its work is on the remote: its branch and archive ref
    else:
        log.warning("worktree kept for the sweep: its work could not be kept", path=str(tree.path))
    return replace(result, duration_s=round(time.monotonic() - started, 3), cost_usd=attempt_cost(result, settings))


def worktree_prompt(prompt: str, integration: Integration, tree: worktree.AttemptWorktree) -> str:
    note = (
        f"You work in your own git worktree of {display_url(integration.url)}, on branch {tree.branch}, made from "
        f"the plan's integration branch with every dependency's work merged. When you finish, orch commits what "
        f"you leave in it: do not commit, push or switch branches yourself."
    )
    return f"{prompt}\n\n{note}"  # the repository's context file is in the prompt already (its `context` section)


def _run_in(ctx: AttemptContext, claim: Claim, tree: worktree.AttemptWorktree) -> AttemptResult:
    with with_scratch(ctx) as ctx:
        ctx = offer_followups(ctx)
        result = collect_followups(ctx, execute(ctx, claim))
        if result.succeeded and (left := worktree.markers_left(tree)):
            result = replace(
                result,
                succeeded=False,
                failure_class=FailureClass.AGENT_ERROR,
                error=f"conflict markers remain in {', '.join(left[:20])}",
            )
        try:  # a failed or interrupted attempt's work is kept too, on its own branch (never merged)
            head = _commit_under_lease(ctx, claim, tree, result.succeeded)
        except (GitFailed, StateNotKnown) as exc:
            if not result.succeeded:
                return result
            return AttemptResult(False, failure_class=FailureClass.WORKTREE_ERROR, error=f"committing its work: {exc}")
        if head is None:
            if not result.succeeded:
                return result
            return replace(result, succeeded=False, failure_class=FailureClass.LEASE_LOST, error=LEASE_GONE)
        if not result.succeeded:
            return replace(result, head_commit=head)
        if head != tree.base_commit and not tree.cache.is_ancestor(tree.base_commit, head):
            return AttemptResult(
                False,
                failure_class=FailureClass.AGENT_ERROR,
                error=f"its work ({head[:12]}) does not descend from {tree.base_commit[:12]}, where its worktree "
                "started: it rewrote or replaced the branch's history",
                head_commit=head,
            )
        changed = tuple(tree.cache.changed_paths(tree.base_commit, head)) if head != tree.base_commit else ()
        result = replace(result, files_changed=changed, head_commit=head)
        result = check_scope(result, ctx.task.files, ctx.task.scope, known_before=True)
        result = run_verify(result, ctx, ctx.task.verify)
    return replace(result, lands=result.succeeded and ctx.task.merge)


def _commit_under_lease(
    ctx: AttemptContext, claim: Claim, tree: worktree.AttemptWorktree, succeeded: bool
) -> str | None:
    """The attempt's work committed and pushed, only while it holds its lease (None: it does not)."""
    store = ctx.settings.resolved_database_url
    with read_session(store) as session:
        if not merges.holds_lease(session, claim):
            return None
    head = worktree.conclude(tree, ctx.task, claim, ctx.settings, succeeded, datetime.now(UTC))
    with write_session(store) as session:
        recorded = merges.record_worktree(session, claim, tree.branch, tree.base_commit, str(tree.path), head)
    return head if recorded else None


def _integration_of(store: str, claim: Claim, task: ClaimedTask) -> tuple[Integration, str | None]:
    """The task's integration branch, and a resolution task's conflicting commit."""
    with read_session(store) as session:
        integration = merges.find_integration(session, claim.plan_id, task.repository or "")
        if integration is None:
            raise GitFailed(f"plan {claim.plan_id} has no repository {task.repository!r} in the store")
        request = merges.get_request(session, task.resolves) if task.resolves is not None else None
        return integration, None if request is None else request.head_commit


def _record_worktree(store: str, claim: Claim, tree: worktree.AttemptWorktree) -> bool:
    with write_session(store) as session:
        return merges.record_worktree(session, claim, tree.branch, tree.base_commit, str(tree.path))


def _store_wait(what: str, task_pk: int) -> Callable[[Exception, float], None]:
    def on_retry(exc: Exception, delay: float) -> None:
        log.warning(f"store unreachable at {what}; retrying", task_pk=task_pk, in_s=delay, error=str(exc)[:200])

    return on_retry


def redact(result: AttemptResult, redactor: Redactor) -> AttemptResult:
    """No secret value goes into the store: the texts an attempt records are masked."""
    if not redactor:
        return result
    return replace(
        result,
        error=None if result.error is None else redactor.text(result.error),
        result=None if result.result is None else redactor.text(result.result),
        output_tail=redactor.text(result.output_tail),
        # an agent names its files and its model too (`touch "$KEY"`, a forged result line)
        files_changed=None if result.files_changed is None else tuple(map(redactor.text, result.files_changed)),
        model=None if result.model is None else redactor.text(result.model),
        followups=None if result.followups is None else redactor.text(result.followups),
    )


def attempt_cost(result: AttemptResult, settings: Settings) -> float | None:
    """The executor's own figure (e.g. the CLI's total_cost_usd), else tokens priced by config/prices.yaml."""
    if result.cost_usd is not None:
        return result.cost_usd
    return usage_cost(result.usage, result.model, settings)


def usage_cost(usage: Usage, model: str | None, settings: Settings) -> float | None:
    if not model or not usage.total:
        return None
    price = price_for(model, load_prices(settings.config_dir))
    return None if price is None else round(cost_usd(usage, price), 6)


def _context(session: Session, claim: Claim, task: ClaimedTask, settings: Settings) -> AttemptContext:
    """What the attempt runs with. A re-plan attempt runs no executor: it is given no prompt (the planner's message
    is built from the task's failures, workers.replanning)."""
    registry = load_agents(settings.config_dir)
    agent = registry.get_or_default(task.agent)
    templates = load_templates(settings.config_dir)
    prompted = task.executor in PROMPTED and not task.replanning
    system = "" if task.replanning else build_system_prompt(templates, task.agent, agent.description, agent.system)
    return AttemptContext(
        task=task,
        agent=agent,
        settings=settings,
        plan_id=claim.plan_id,
        attempt=claim.attempt,
        lease=claim.lease,
        log_path=attempt_log_path(settings.logs_dir, claim.plan_id, claim.key, claim.attempt),
        network=agent_network(agent.network, task.executor),
        secrets={name: os.environ[name] for name in agent.secrets if os.environ.get(name)},
        masked=frozenset(name for a in registry for name in a.secrets),
        prompt=_prompt(session, claim, task, templates, settings) if prompted else "",
        system_prompt=system,
    )


def _prompt(session: Session, claim: Claim, task: ClaimedTask, templates: PromptTemplates, settings: Settings) -> str:
    """The task's prompt: the plan it serves, its dependencies' handoffs, the tasks waiting on it and running beside
    it, its repository's context file, and why its previous attempt failed. Agents that answer by a final message
    (not python) are told how to add follow-up tasks in it, unless the task is as deep as follow-ups may go (all it
    added would be refused)."""
    return build_prompt(
        templates,
        task_id=task.key,
        title=task.title,
        description=task.description,
        success=task.success,
        files=task.files,
        handoffs=attempts.handoffs(session, claim.task_pk),
        previous_failure=attempts.previous_failure(session, claim.task_pk, claim.attempt),
        plan=plan_context.for_task(session, claim.plan_id, claim.task_pk, task.repository),
        followups=offers_followups(task, settings),
    )


def offers_followups(task: ClaimedTask, settings: Settings) -> bool:
    """Whether the task's prompt tells how to add follow-ups: it answers by a final message (claude-code,
    anthropic), follow-ups are allowed, and one it adds would not be deeper than ORCH_FOLLOWUPS_DEPTH."""
    allowed = settings.followups_per_task > 0 and task.depth < settings.followups_depth
    return task.executor in NETWORKED and allowed


def open_attempt_log(logs_dir: Path, plan_id: str, task: ClaimedTask, attempt: int) -> str | None:
    """The attempt's log file, created before the claim names it in the store: wherever the store says a running
    attempt's log is, that host has the file (`orch logs -f` follows it from the start). A re-plan attempt runs no
    executor, so it has none."""
    if task.executor not in LOGGED or task.replanning:
        return None
    return str(private_log_file(attempt_log_path(logs_dir, plan_id, task.key, attempt)))


@functools.cache
def _logs_dir(configured: Path) -> Path:
    return configured.resolve()


def attempt_log_path(logs_dir: Path, plan_id: str, key: str, attempt: int) -> Path:
    """Where this worker writes an attempt's output (an absolute path: the store records it)."""
    return _logs_dir(logs_dir) / plan_id / f"{key}.{attempt}.log"


def execute(ctx: AttemptContext, claim: Claim) -> AttemptResult:
    try:
        executor = get_executor(ctx.task.executor, ctx.agent.name)
        return executor.run(ctx)
    except ExecutorUnavailable as exc:
        return AttemptResult(False, failure_class=FailureClass.EXECUTOR_UNAVAILABLE, error=str(exc))
    except Exception as exc:  # an executor bug must still end the attempt with a recorded reason
        log.exception("executor raised")
        return AttemptResult(False, failure_class=FailureClass.INTERNAL_ERROR, error=f"{type(exc).__name__}: {exc}")


def finish(claim: Claim, result: AttemptResult, settings: Settings) -> str:
    """Record the outcome under the claim's lease, then dispatch what it made ready — one transaction, retried
    while the store is away (a finished agent's work is not thrown away for a database restart)."""
    registry = load_agents(settings.config_dir)
    rules = GrowthRules(
        registry, Limits(settings.followups_per_task, settings.followups_depth, settings.followups_total)
    )
    draw = random.random()
    mergers: list[tuple[int, str]] = []  # (integration, queue): a merger to send, once the result is recorded

    def record() -> tuple[bool, Outcome, list[Dispatch]]:
        mergers.clear()  # a retried transaction starts again
        with write_session(settings.resolved_database_url) as session:
            now = db_now(session)
            outcome = decide_outcome(
                result.succeeded,
                result.failure_class,
                result.error,
                claim.counted_failures,
                claim.retries,
                now,
                draw,
                Backoff(settings.retry_backoff_base, settings.retry_backoff_max),
                retry_after=result.retry_after,
            )
            if outcome.task_status is TaskStatus.SUCCEEDED and result.lands:
                outcome = replace(outcome, task_status=TaskStatus.MERGING, detail="its work waits in the merge queue")
            recorded = attempts.record_result(session, claim, result, outcome, now, rules)
            if recorded is None:
                return False, outcome, []
            if recorded.status is not None:  # a re-plan, or a replacement applied or refused, decided otherwise
                outcome = replace(outcome, task_status=recorded.status)
            if outcome.task_status is TaskStatus.MERGING and result.head_commit:
                base = _base_of(session, claim) or result.head_commit
                mergers.extend(filter(None, [merges.enqueue_merge(session, claim, base, result.head_commit, now)]))
            _hold_agent_type(session, claim, result, registry, now)
            if outcome.task_status in DOOMING:  # rare: carry the failure to its descendants now, not at the next tick
                return True, outcome, reconcile_plans(session, [claim.plan_id], registry, now)
            retrying = claim.task_pk if outcome.task_status is TaskStatus.RETRY_WAIT else None
            return True, outcome, dispatch_after_result(session, claim.plan_id, recorded, registry, now, retrying)

    accepted, outcome, dispatches = with_store_retry(
        record, settings.store_retry_seconds, _store_wait("result", claim.task_pk)
    )
    if not accepted:
        log.warning("result rejected: the attempt's lease no longer holds (cancelled, skipped or reaped)")
        return "rejected"
    publish(app, dispatches, settings.kill_grace_seconds)
    send_mergers(app, mergers)
    log.info("attempt finished", status=str(outcome.task_status), error=result.error)
    return str(outcome.task_status)


def _hold_agent_type(
    session: Session, claim: Claim, result: AttemptResult, registry: AgentRegistry, now: datetime
) -> None:
    """A usage limit pauses the attempt's agent type, and a failure may open its circuit breaker. A re-plan
    attempt's is the planner type (the task's own type did not run); a planner that declined answered, so no
    breaker counts it."""
    agent = PLANNER if claim.replanning else claim.agent
    if result.failure_class == FailureClass.USAGE_LIMIT and result.retry_after:
        until = now + timedelta(seconds=result.retry_after)
        pauses.pause_agent(session, agent, until, PauseCause.USAGE_LIMIT, result.error or "usage limit", now)
    if not result.succeeded and result.failure_class != REPLAN_DECLINED:
        breaker.trip_if_open(session, agent, registry.get_or_default(agent).breaker, now)


def _base_of(session: Session, claim: Claim) -> str | None:
    row = attempts.get_attempt(session, claim)
    return None if row is None else row.base_commit
