"""The merge queue, applied: whoever holds an integration's merge lock (a lease in the store, with its token as the
fencing token) takes its requests in `merge_order`, merges each in the repository's cache — never in anyone's
checkout — runs the plan's gates on the result in a detached temporary worktree, and advances the integration
branch on the remote by compare-and-swap (a non-forced push from the head it read; a lost race merges again).
Only then does the store record the merge, and the task succeed for its dependants.

No LLM decides anything here: a conflict is predicted by `git merge-tree`, lockfiles named in `relock` are
re-generated, and any other conflict becomes a resolution task or the task's failure, per `on_conflict`.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from sqlalchemy.orm import Session

from orch.decisions.file_leases import covers
from orch.decisions.merge_order import next_merge
from orch.decisions.retry import Backoff, decide_outcome
from orch.dispatch.reconcile import dispatch_after_result, publish, reconcile_plans
from orch.errors import OrchError
from orch.executors import PROMPTED
from orch.failures import FailureClass
from orch.intake.agents import AgentRegistry
from orch.log import get_logger
from orch.records import MERGE_TASK, Dispatch, Integration, MergeRequest, Recorded
from orch.services.git.cache import RepositoryCache
from orch.services.git.command import GitFailed
from orch.services.git.merging import commit_tree, merge_base, predict_merge, relock_merge
from orch.services.git.remote import display_url
from orch.services.git.worktrees import add_detached, remove_worktree
from orch.settings import Settings
from orch.states import DOOMING, MergePhase, PlanStatus, TaskStatus
from orch.store import attempts, merges
from orch.store.db import db_now, read_session, write_session
from orch.store.models import PlanRow, TaskRow

if TYPE_CHECKING:
    from celery import Celery

log = get_logger(__name__)

MAX_PUSH_RACES = 5  # merges redone after a lost compare-and-swap before the request waits for a later merger
MAX_GATE_OUTPUT = 4_000

# (command, folder, timeout in seconds, log file) → (passed, the output's tail). The worker's, sandboxed as agents are.
GateRunner = Callable[[str, Path, float, Path], tuple[bool, str]]


class GateUnavailable(OrchError):
    """A gate could not be run on this host (its sandbox, its folder): no verdict on the work, which waits for a
    later merger rather than spend its task's retries."""


@dataclass(frozen=True)
class Merged:
    commit: str


@dataclass(frozen=True)
class Conflicted:
    conflicts: tuple[str, ...]
    details: str


@dataclass(frozen=True)
class GateFailed:
    gate: str
    output: str


@dataclass(frozen=True)
class Unmergeable:
    why: str  # git cannot merge this work (unrelated histories, a tree it refuses, tries exhausted): a failure of it


@dataclass(frozen=True)
class Withdrawn:
    why: str  # its task stopped waiting for it (cancelled, skipped, retried) while it merged: nothing is pushed


@dataclass(frozen=True)
class Blocked:
    why: str  # it cannot merge now (the remote unreachable, races lost): it waits for a later merger


MergeResult = Merged | Conflicted | GateFailed | Unmergeable | Withdrawn | Blocked
MAX_MERGE_TRIES = 10  # merges begun (blocked, or their merger lost) before a request is turned down


# --- sending a merger ------------------------------------------------------------------------------------


def send_mergers(app: Celery, mergers: Sequence[tuple[int, str]]) -> None:
    """One `orch.merge` message per integration with work queued (its id only), on a queue its plan's workers
    read. Lost, it is re-sent by the beat (`integrations_waiting`)."""
    for integration_pk, queue in dict.fromkeys(mergers):
        app.send_task(MERGE_TASK, args=(integration_pk,), queue=queue)


# --- the integration branch ------------------------------------------------------------------------------


def integration_head(cache: RepositoryCache, integration: Integration) -> str:
    """The integration branch's head on the remote, fetched into the cache; the first to need the branch makes it
    at the plan's base commit (a compare-and-swap push: of two, one makes it and the other reads it)."""
    head = cache.fetch(integration.branch).get(integration.branch)
    if head is not None:
        return head
    # Made at the head the store last recorded (the base commit at first): a branch deleted mid-plan comes back
    # with the work merged so far, never silently without it.
    cache.fetch_commit(integration.head)
    made = cache.push(integration.head, integration.branch, expected=None)
    if made.pushed:
        return integration.head
    head = cache.fetch(integration.branch).get(integration.branch)
    if head is None:
        raise GitFailed(f"cannot make branch {integration.branch} in {display_url(integration.url)}: {made.reason}")
    return head


# --- working the queue -----------------------------------------------------------------------------------


def work_merge_queue(
    integration_pk: int, settings: Settings, registry: AgentRegistry, run_gate: GateRunner, app: Celery | None
) -> str:
    """Merge the integration's queue while holding its merge lock; returns what was done (the task's result)."""
    store = settings.resolved_database_url
    merged = 0
    while True:
        lease = str(uuid.uuid4())
        with write_session(store) as session:
            now = db_now(session)
            if not merges.claim_merge_lock(session, integration_pk, lease, settings.merge_lease_seconds, now):
                return f"merged {merged}; the merge lock is held by another merger"
        try:
            with _LockKeeper(store, integration_pk, lease, settings.merge_lease_seconds):
                done, blocked = _work(integration_pk, lease, settings, registry, run_gate, app)
                merged += done
        finally:
            with write_session(store) as session:
                merges.release_merge_lock(session, integration_pk, lease)
        if blocked:  # it waits for the beat's next merger (MERGER_RESEND_SECONDS), not for a merger spinning here
            return f"merged {merged}; a merge is blocked: {blocked}"
        with read_session(store) as session:  # one queued while the lock was let go must not wait for the beat
            if not merges.waiting_requests(session, integration_pk):
                break
    land_if_done(integration_pk, settings)
    return f"merged {merged}"


def _work(
    integration_pk: int,
    lease: str,
    settings: Settings,
    registry: AgentRegistry,
    run_gate: GateRunner,
    app: Celery | None,
) -> tuple[int, str | None]:
    """Merges while requests wait; returns how many merged, and why it stopped when a merge was blocked."""
    store = settings.resolved_database_url
    done = 0
    while (taken := _take_next(store, integration_pk, lease)) is not None:
        integration, request = taken
        try:
            result = merge_request(integration, request, settings, run_gate)
        except GitFailed as exc:
            result = Blocked(str(exc))
        except Exception as exc:  # a bug, the disk: the request waits (its tries are counted), the queue goes on
            log.exception("merge failed", request=request.pk)
            result = Blocked(f"{type(exc).__name__}: {exc}")
        if isinstance(result, Blocked) and request.tries + 1 >= MAX_MERGE_TRIES:
            result = Unmergeable(f"not merged in {MAX_MERGE_TRIES} tries; the last: {result.why}")
        dispatches = _record(store, integration, lease, request, result, registry, settings)
        if dispatches is None:
            return done, None  # the lock is no longer ours: its holder goes on
        if app is not None and dispatches:
            publish(app, dispatches, settings.kill_grace_seconds)
        if isinstance(result, Blocked):
            log.warning("merge blocked", request=request.pk, why=result.why)
            return done, result.why
        done += isinstance(result, Merged)
    return done, None


def _take_next(store: str, integration_pk: int, lease: str) -> tuple[Integration, MergeRequest] | None:
    with write_session(store) as session:
        now = db_now(session)
        while True:
            integration = merges.get_integration(session, integration_pk)
            request = next_merge(merges.waiting_requests(session, integration_pk))
            if integration is None or request is None:
                return None
            begun = merges.begin_merge(session, request, integration_pk, lease, now)
            if begun == "begun":
                return integration, request
            if begun == "lock_lost":
                return None


def merge_request(
    integration: Integration,
    request: MergeRequest,
    settings: Settings,
    run_gate: GateRunner,
    waited_for: Callable[[Settings, MergeRequest], str | None] | None = None,
) -> MergeResult:
    """Merge one request's work onto the integration branch on the remote (gates passed), or say why not.
    `waited_for`: why the request's task no longer waits for it (None: it does), asked just before the push; by
    default, of the store."""
    still_wanted = waited_for or _no_longer_waited_for
    cache = RepositoryCache(settings.git_cache_dir, integration.url).ensure()
    for _ in range(MAX_PUSH_RACES):
        current = integration_head(cache, integration)
        cache.fetch_commit(request.head_commit)
        if cache.is_ancestor(request.head_commit, current):
            return Merged(current)  # merged before, by a merger that died before recording it
        try:
            candidate = _candidate(cache, integration, request, current, settings, run_gate)
        except GitFailed as exc:  # merge-tree, commit-tree in the cache: this work, not the remote
            return Unmergeable(str(exc))
        if not isinstance(candidate, str):
            return candidate
        failed = _run_gates(cache, integration, request, candidate, settings, run_gate)
        if failed is not None:
            return failed
        gone = still_wanted(settings, request)
        if gone is not None:  # checked last thing before the push: a cancel during its gates stops it landing
            return Withdrawn(gone)
        if cache.push(candidate, integration.branch, expected=current).pushed:
            return Merged(candidate)
        log.info("lost the race to advance the integration branch; merging again", request=request.pk)
    return Blocked(f"{integration.branch} moved under {MAX_PUSH_RACES} merges in a row")


def _candidate(
    cache: RepositoryCache,
    integration: Integration,
    request: MergeRequest,
    current: str,
    settings: Settings,
    run_gate: GateRunner,
) -> str | Conflicted:
    """The commit the integration branch would move to: the request's own head when that is a fast-forward, else a
    merge commit of a clean (or relocked) merge; Conflicted when the work conflicts."""
    head = request.head_commit
    if cache.is_ancestor(current, head):
        return head
    prediction = predict_merge(cache, current, head)
    locks = _lockfiles_changed_on_both_sides(cache, integration, current, head)
    tree = prediction.tree
    if not prediction.clean or locks:
        if not integration.relock or not all(_is_lockfile(integration, path) for path in prediction.conflicts):
            return Conflicted(prediction.conflicts, prediction.details)
        folder = _scratch_folder(settings, integration, request, "relock")

        relock_log = _merge_log(settings, integration, request, "relock")

        def run(command: str, worktree: Path) -> tuple[bool, str]:
            return run_gate(command, worktree, integration.gate_timeout, relock_log)

        tree, said = relock_merge(cache, folder, current, head, integration.relock, run)
        if tree is None:
            return Conflicted(prediction.conflicts, said)
    assert tree is not None
    message = (
        f"Merge {request.key} (attempt {request.attempt}) into {integration.branch}\n\n"
        f"Orch-Merge-Request: {request.pk}\n"
    )
    return commit_tree(cache, tree, [current, head], message, settings.git_author)


def _no_longer_waited_for(settings: Settings, request: MergeRequest) -> str | None:
    """Why the request's task no longer waits for its merge, or None while it does."""
    with read_session(settings.resolved_database_url) as session:
        task = session.get(TaskRow, request.task_pk)
        if task is None:
            return "its task is gone"
        if task.status is not TaskStatus.MERGING or task.attempt != request.attempt:
            return f"its task no longer waits for it ({task.status} at attempt {task.attempt})"
    return None


def _is_lockfile(integration: Integration, path: str) -> bool:
    return covers(path, [pattern for pattern, _command in integration.relock])


def _lockfiles_changed_on_both_sides(
    cache: RepositoryCache, integration: Integration, current: str, head: str
) -> list[str]:
    """Lockfiles both sides changed since they parted: never merged as text, even when git could."""
    if not integration.relock:
        return []
    base = merge_base(cache, current, head)
    if base is None:
        return []
    ours = {p for p in cache.changed_paths(base, current) if _is_lockfile(integration, p)}
    theirs = {p for p in cache.changed_paths(base, head) if _is_lockfile(integration, p)}
    return sorted(ours & theirs)


def _merge_log(settings: Settings, integration: Integration, request: MergeRequest, what: str) -> Path:
    """Where a gate's or relock command's output goes: beside the plan's attempt logs (ORCH_HOME/logs/<plan>), not
    in the merger's scratch, which is removed (a merge redone writes it again)."""
    return settings.logs_dir.resolve() / integration.plan_id / f"merge-{request.pk}.{what}.log"


def _scratch_folder(settings: Settings, integration: Integration, request: MergeRequest, what: str) -> Path:
    folder = settings.resolved_worktree_root / ".merges" / f"{integration.plan_id}-{request.pk}-{what}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    return folder


def _run_gates(
    cache: RepositoryCache,
    integration: Integration,
    request: MergeRequest,
    candidate: str,
    settings: Settings,
    run_gate: GateRunner,
) -> GateFailed | None:
    """The plan's gates on the merged result, in a detached temporary worktree (removed after)."""
    if not integration.gates:
        return None
    folder = _scratch_folder(settings, integration, request, "gates")
    if folder.exists():
        remove_worktree(cache, folder)
    add_detached(cache, folder, candidate)
    try:
        for number, gate in enumerate(integration.gates, 1):
            log_file = _merge_log(settings, integration, request, f"gate{number}")
            passed, output = run_gate(gate, folder, integration.gate_timeout, log_file)
            if not passed:
                return GateFailed(gate, output[-MAX_GATE_OUTPUT:])
    finally:
        remove_worktree(cache, folder)
    return None


# --- recording -------------------------------------------------------------------------------------------


def _record(
    store: str,
    integration: Integration,
    lease: str,
    request: MergeRequest,
    result: MergeResult,
    registry: AgentRegistry,
    settings: Settings,
) -> list[Dispatch] | None:
    """The merge's outcome in the store, under the lock; the dispatches it made (None: the lock was lost)."""
    with write_session(store) as session:
        now = db_now(session)
        if isinstance(result, Merged):
            recorded = merges.record_merged(session, integration.pk, lease, request, result.commit, now)
            if recorded is None:
                return None
            return dispatch_after_result(session, integration.plan_id, recorded, registry, now)
        if isinstance(result, Blocked):
            merges.requeue(session, integration.pk, lease, request.pk, result.why)
            return []
        if isinstance(result, Withdrawn):
            merges.withdraw(session, integration.pk, lease, request.pk, now, result.why)
            return []
        task = session.get(TaskRow, request.task_pk)
        if task is None:
            return []
        if isinstance(result, Conflicted) and integration.on_conflict == "resolve" and task.executor in PROMPTED:
            key = merges.add_resolution_task(
                session, integration.pk, lease, request, result.conflicts, result.details, now
            )
            if key is None:
                return None
            return dispatch_after_result(session, integration.plan_id, Recorded(1), registry, now)
        return _turn_down(session, integration, lease, request, result, task, registry, settings, now)


def _turn_down(
    session: Session,
    integration: Integration,
    lease: str,
    request: MergeRequest,
    result: Conflicted | GateFailed | Unmergeable,
    task: TaskRow,
    registry: AgentRegistry,
    settings: Settings,
    now: datetime,
) -> list[Dispatch] | None:
    conflicts: tuple[str, ...] = ()
    if isinstance(result, GateFailed):
        failure, phase = FailureClass.GATE_FAILED, MergePhase.GATE_FAILED
        detail = f"gate `{result.gate}` failed on the merged result: {result.output[-1000:]}"
    elif isinstance(result, Unmergeable):
        failure, phase = FailureClass.MERGE_ERROR, MergePhase.FAILED
        detail = f"its work cannot be merged into {integration.branch}: {result.why[:1000]}"
    else:
        failure, phase, conflicts = FailureClass.MERGE_CONFLICT, MergePhase.CONFLICTED, result.conflicts
        detail = f"merge conflict with {integration.branch} in {', '.join(conflicts[:20])}"
    earlier = attempts.counted_failures(session, task.pk)
    backoff = Backoff(settings.retry_backoff_base, settings.retry_backoff_max)
    outcome = decide_outcome(False, failure, detail, earlier, task.retries, now, random.random(), backoff)
    if not merges.record_turned_down(
        session, integration.pk, lease, request, phase, outcome, failure, detail, now, conflicts
    ):
        return None
    if outcome.task_status in DOOMING:
        return reconcile_plans(session, [integration.plan_id], registry, now)
    return []


# --- landing ---------------------------------------------------------------------------------------------

LandResult = tuple[Literal["landed", "refused", "kept", "none"], str]


def land_if_done(integration_pk: int, settings: Settings) -> None:
    """Land the plan's work per `land:` once the plan succeeded (the last merge finished it)."""
    store = settings.resolved_database_url
    with read_session(store) as session:
        integration = merges.get_integration(session, integration_pk)
        plan = session.get(PlanRow, integration.plan_id) if integration else None
        landed = merges.landed_state(session, integration_pk)
    if integration is None or plan is None or plan.status is not PlanStatus.SUCCEEDED or landed is not None:
        return
    outcome, detail = land(integration, settings)
    with write_session(store) as session:
        merges.record_landing(session, integration_pk, outcome, detail)
    log.info("plan landed" if outcome == "landed" else "plan not landed", plan=integration.plan_id, detail=detail)


def land(integration: Integration, settings: Settings) -> LandResult:
    """`land: base` fast-forwards the base branch to the integration branch — never forced: a base that moved in
    a way that is no fast-forward is reported by name. `branch` leaves the integration branch for review."""
    branch = integration.branch
    if integration.land == "none":
        return "none", f"land: none — the plan's work stays on {branch}"
    cache = RepositoryCache(settings.git_cache_dir, integration.url).ensure()
    head = integration_head(cache, integration)
    if integration.land == "branch":
        return "kept", f"the plan's work is on branch {branch} at {head[:12]}, for review"
    base = integration.base
    current = cache.remote_heads(base).get(base)
    if current is None:
        return "refused", f"branch {base} no longer exists in {display_url(integration.url)}; {branch} holds the work"
    if current == head:
        return "landed", f"{base} is at {head[:12]} already"
    cache.fetch(base)
    if not cache.is_ancestor(current, head):
        return "refused", (
            f"{base} moved since the plan started ({integration.base_commit[:12]} → {current[:12]}) and {branch} is "
            f"not a fast-forward of it: merge {branch} into {base} yourself; orch never forces {base}"
        )
    pushed = cache.push(head, base, expected=current)
    if pushed.pushed:
        return "landed", f"fast-forwarded {base} to {head[:12]} ({branch})"
    if cache.remote_heads(base).get(base) == head:  # another lander (the plan's merger, `orch run`) won the race
        return "landed", f"{base} is at {head[:12]} already"
    return "refused", f"{base} could not be fast-forwarded to {branch}: {pushed.reason}"


# --- keeping the lock ------------------------------------------------------------------------------------


class _LockKeeper:
    """Renews the merge lock every third of its lease while a merge (its gates may take long) runs."""

    def __init__(self, store: str, integration_pk: int, lease: str, seconds: float) -> None:
        self.store, self.integration_pk, self.lease, self.seconds = store, integration_pk, lease, seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="orch-merge-lock", daemon=True)

    def __enter__(self) -> _LockKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                with write_session(self.store) as session:
                    merges.renew_merge_lock(session, self.integration_pk, self.lease, self.seconds, db_now(session))
            except Exception as exc:
                log.warning("could not renew the merge lock", error=str(exc)[:200])
