"""Scenario 12: the merge queue under faults, with real git (a bare repository as the plan's remote) and a real store.

12a  a merger (`celery -A orch worker`) SIGKILLed while a gate runs, with ORCH_MERGE_LEASE_SECONDS=3: its lock
     expires, the beat's tick sends a merger to a second worker, which redoes the merge — the work lands once;
12b  a merger SIGKILLed after its push moved the integration branch and before the store recorded it (a git on its
     PATH holds it there, after the real git pushed): the redo finds the work on the branch and records it, with no
     new commit;
12c  two mergers on one integration at once: one holds the lock, the other returns;
12d  two merges computed from the same head, bypassing the lock: the compare-and-swap push lets one apply, the
     other merges again on top;
12e  a lost push race: another host pushes to orch/<plan> between the merger's read of its head and its push (twice
     in a row): the merger merges again each time and the branch ends holding everything.

Each counts the double applies: a task's commit (`Orch-Task` trailer) or a request's merge commit
(`Orch-Merge-Request` trailer) reachable from orch/<plan> more than once. 12a and 12b run real worker processes on
PostgreSQL and Redis like the other process scenarios; 12c-12e run a merger's code in threads of the test, on
SQLite and on PostgreSQL, after an embedded worker ran the plan's attempts."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker

import workers.tasks  # noqa: F401  (registers orch.run_task and orch.merge)
from beat.tick import run_tick
from orch.celery import app, use_broker
from orch.dispatch.merge_queue import Merged, MergeResult, merge_request, work_merge_queue
from orch.records import MergeRequest
from orch.settings import get_settings
from orch.states import MergePhase
from orch.store import merges
from orch.store.db import read_session
from tests.conftest import SANDBOX_READ
from tests.faults.cluster_faults import drop_unacked, kill_tree, wait_gone, worker_tree
from tests.faults.conftest import MakeCluster, RecordFigures
from tests.faults.harness import Cluster, FaultRun, examine, marked_processes, publisher_app, wait_until
from tests.faults.merge_faults import (
    all_merging,
    applied,
    commits_on,
    contained,
    git,
    integration_pk,
    is_merge_commit,
    lock_holder,
    make_remote,
    merge_lock_held,
    merge_queue_args,
    pause_after_merge_push,
    push_from_elsewhere,
    requests_of,
    seconds,
    submit_repo_plan,
    task_statuses,
)
from workers.merging import run_gate

pytestmark = [pytest.mark.faults]

MERGE_LEASE = 3.0
TWO_TASKS: list[dict[str, Any]] = [
    {"id": "a", "title": "write a", "command": "echo A > a.txt"},
    {"id": "b", "title": "write b", "command": "echo B > b.txt"},
]


# --- 12a, 12b: real worker processes ---------------------------------------------------------------------


@pytest.fixture
def fresh_beat(
    monkeypatch: pytest.MonkeyPatch, fault_run: FaultRun, fault_redis_url: str
) -> Iterator[Callable[[], None]]:
    """`run_tick` in this process, as a fresh beat of the run's cluster: its merger re-send clock empty, its
    messages sent on the run's queues through the fault suite's Redis."""
    import beat.tick

    monkeypatch.setenv("ORCH_CONFIG_DIR", str(fault_run.config_dir))
    monkeypatch.setenv("ORCH_BROKER_URL", fault_redis_url)
    get_settings.cache_clear()
    publisher = publisher_app(fault_run, fault_redis_url)
    monkeypatch.setattr(beat.tick, "_merger_sent", {})
    monkeypatch.setattr(beat.tick, "app", publisher)

    def tick() -> None:
        run_tick()

    try:
        yield tick
    finally:
        publisher.close()


def merge_cluster(make_cluster: MakeCluster, store: str, broker: str, **env: str) -> Cluster:
    return make_cluster(store, broker, ORCH_MERGE_LEASE_SECONDS=str(MERGE_LEASE), **env)


def kill_worker(cluster: Cluster, name: str, process: Any) -> float:
    """SIGKILL the worker's process group (main, pool, and the git and hooks they run) as a dying host; when."""
    tree = worker_tree(process)
    os.killpg(process.pid, signal.SIGKILL)
    killed = time.monotonic()
    assert not wait_gone(tree.worker_pids, 10), f"{name}'s processes outlived SIGKILL"
    cluster.forget(name)
    return killed


def tick_until_merged(
    tick: Callable[[], None], plan_id: str, cluster: Cluster, timeout: float, dead_lock: str | None
) -> tuple[float, float]:
    """The beat ticks until every request of the plan merged; when another merger was first seen holding the lock
    in place of the dead one's `dead_lock`, and when the merges were seen done."""
    taken_over: list[float] = []

    def merged() -> bool:
        cluster.check_alive()
        tick()
        if not taken_over and lock_holder(plan_id) not in (None, dead_lock):
            taken_over.append(time.monotonic())
        return {r.phase for r in requests_of(plan_id).values()} == {MergePhase.MERGED.value}

    try:
        wait_until(merged, timeout, f"plan {plan_id}'s merges to be redone", interval=0.1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; requests: {requests_of(plan_id)}\n{cluster.logs_tail()}") from None
    done = time.monotonic()
    return (taken_over[0] if taken_over else done), done


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.timeout(90)
def test_a_merger_sigkilled_while_its_gate_runs_is_redone_and_applies_once(
    fault_run: FaultRun,
    postgres_url: str,
    fault_redis_url: str,
    make_cluster: MakeCluster,
    fresh_beat: Callable[[], None],
    record_figures: RecordFigures,
) -> None:
    gate_folder = fault_run.folder / "gate"
    gate_folder.mkdir(mode=0o777)
    gate_folder.chmod(0o777)  # read by the gate, sandboxed as the agents' user
    release = gate_folder / "release"
    # The gate blocks until `release` exists: the first merger is killed while it waits; the redo's passes at once.
    gate = fault_run.marked_shell(f"while [ ! -e {release} ]; do sleep 0.05; done")
    cluster = merge_cluster(make_cluster, postgres_url, fault_redis_url,
                            ORCH_SANDBOX_READ=f"{SANDBOX_READ['ORCH_SANDBOX_READ']}:{gate_folder}")  # fmt: skip
    origin = make_remote(fault_run.folder)
    plan_id = submit_repo_plan(TWO_TASKS, origin, fault_run.folder / "work", fault_run.config_dir, gates=[gate])
    queue = fault_run.queue("general-purpose")
    victim = cluster.worker("victim", [queue], concurrency=2)
    started = time.monotonic()
    try:
        fresh_beat()  # dispatches a and b; no tick runs again until the victim is dead

        def gate_waits() -> bool:
            cluster.check_alive()
            return all_merging(plan_id) and bool(marked_processes(str(release)))

        wait_until(gate_waits, 40, "both tasks merging and the first merge's gate running")
        first = next(r for r in requests_of(plan_id).values() if r.phase == MergePhase.MERGING.value)
        dead_lock = lock_holder(plan_id)
        killed = kill_worker(cluster, "victim", victim)
        release.touch()  # the orphaned gate (its own process group) ends; the redo's gate passes
        cluster.worker("rescuer", [queue], concurrency=2)
        lock_taken, redone = tick_until_merged(fresh_beat, plan_id, cluster, 40, dead_lock)
    finally:
        release.touch()
        kill_tree(int(entry.split(":", 1)[0]) for entry in marked_processes(str(release)))
        stranded = drop_unacked(cluster.broker_url, fault_run)

    requests = requests_of(plan_id)
    done = applied(origin, plan_id)
    verdict = examine(cluster.database_url, plan_id, None, fault_run.marker)
    figures = {
        **verdict.figures,
        "killed while gating": first.key,
        "kill to lock taken over": seconds(killed, lock_taken),
        "kill to redone merge": seconds(killed, redone),
        "merge lease": f"{MERGE_LEASE:.0f}s",
        "tries of the killed merge": requests[first.key].tries,
        "double applies": done.double_applies,
        "task commits on the branch": f"{sum(done.tasks.values())}/{len(TWO_TASKS)}",
        "messages stranded unacked": stranded,
        "scenario seconds": f"{time.monotonic() - started:.1f}s",
    }
    record_figures("12a merger SIGKILL mid-gate", figures, verdict.notes)

    verdict.assert_ok()
    assert task_statuses(plan_id) == {"a": "succeeded", "b": "succeeded"}
    assert requests[first.key].tries >= 2, requests
    assert done.double_applies == 0, done
    assert done.tasks == {"a": 1, "b": 1}, done
    assert set(done.requests.values()) <= {1}, done
    assert git(origin, "show", f"orch/{plan_id}:a.txt") == "A" and git(origin, "show", f"orch/{plan_id}:b.txt") == "B"


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.timeout(90)
def test_a_merger_sigkilled_after_its_push_is_recorded_by_the_redo_without_a_new_commit(
    fault_run: FaultRun,
    postgres_url: str,
    fault_redis_url: str,
    make_cluster: MakeCluster,
    fresh_beat: Callable[[], None],
    record_figures: RecordFigures,
) -> None:
    pushed, release = fault_run.folder / "pushed", fault_run.folder / "release"
    # No gate: the first request fast-forwards; the second is a merge commit, whose push the victim's git holds.
    pausing = pause_after_merge_push(fault_run.folder, pushed, release)  # the rescuer merges nothing anew
    cluster = merge_cluster(make_cluster, postgres_url, fault_redis_url, **pausing)
    origin = make_remote(fault_run.folder)
    plan_id = submit_repo_plan(TWO_TASKS, origin, fault_run.folder / "work", fault_run.config_dir)
    queue = fault_run.queue("general-purpose")
    victim = cluster.worker("victim", [queue], concurrency=2)
    started = time.monotonic()
    branch = f"orch/{plan_id}"
    try:
        fresh_beat()

        def pushed_and_held() -> bool:
            cluster.check_alive()
            return pushed.exists() and pushed.read_text().strip() != ""

        wait_until(pushed_and_held, 40, "the merge commit's push to be held after it moved the branch")
        merge_commit = pushed.read_text().strip()
        assert git(origin, "rev-parse", branch) == merge_commit  # the ref moved: the push is done
        unrecorded = next(r for r in requests_of(plan_id).values() if r.phase == MergePhase.MERGING.value)
        commits_at_kill = commits_on(origin, branch)
        dead_lock = lock_holder(plan_id)
        killed = kill_worker(cluster, "victim", victim)
        release.touch()
        cluster.worker("rescuer", [queue], concurrency=2)
        lock_taken, redone = tick_until_merged(fresh_beat, plan_id, cluster, 40, dead_lock)
    finally:
        release.touch()
        stranded = drop_unacked(cluster.broker_url, fault_run)

    requests = requests_of(plan_id)
    done = applied(origin, plan_id)
    verdict = examine(cluster.database_url, plan_id, None, fault_run.marker)
    new_commits = commits_on(origin, branch) - commits_at_kill
    figures = {
        **verdict.figures,
        "killed between push and record": unrecorded.key,
        "kill to lock taken over": seconds(killed, lock_taken),
        "kill to recorded merge": seconds(killed, redone),
        "merge lease": f"{MERGE_LEASE:.0f}s",
        "tries of the killed merge": requests[unrecorded.key].tries,
        "commits the redo added": new_commits,
        "double applies": done.double_applies,
        "messages stranded unacked": stranded,
        "scenario seconds": f"{time.monotonic() - started:.1f}s",
    }
    record_figures("12b merger SIGKILL after push", figures, verdict.notes)

    verdict.assert_ok()
    assert task_statuses(plan_id) == {"a": "succeeded", "b": "succeeded"}
    assert is_merge_commit(origin, merge_commit)
    assert requests[unrecorded.key].merged_commit == merge_commit, requests
    assert requests[unrecorded.key].tries >= 2, requests
    assert new_commits == 0 and git(origin, "rev-parse", branch) == merge_commit
    assert done.double_applies == 0 and done.tasks == {"a": 1, "b": 1}, done
    assert done.requests == {str(unrecorded.pk): 1}, done


# --- 12c-12e: a merger's code in threads, on both stores -------------------------------------------------

QUEUES = ["agent.general-purpose"]


@pytest.fixture
def embedded_broker(embedded_redis_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ORCH_RETRY_BACKOFF_BASE", "0.1")
    get_settings.cache_clear()
    use_broker(embedded_redis_url)
    return embedded_redis_url


def queued_requests(tasks: list[dict[str, Any]], origin: Path, folder: Path, **repo: Any) -> str:
    """Run the plan's attempts on an embedded worker while the test holds the merge lock, so their work waits in
    the merge queue (every task `merging`, every request queued) for the scenario's own mergers; the plan's id."""
    plan_id = submit_repo_plan(tasks, origin, folder / "work", **repo)
    worker = start_worker(app, pool="threads", concurrency=2, perform_ping_check=False, queues=QUEUES)
    with merge_lock_held(plan_id), worker:

        def merging() -> bool:
            run_tick()
            return all_merging(plan_id)

        wait_until(merging, 40, f"plan {plan_id}'s tasks to wait in the merge queue", interval=0.1)
    assert {r.phase for r in requests_of(plan_id).values()} == {MergePhase.QUEUED.value}
    return plan_id


def real_gate(command: str, folder: Path, timeout: float, log_path: Path) -> tuple[bool, str]:
    return run_gate(get_settings(), command, folder, timeout, log_path)


@pytest.fixture(params=["sqlite", "postgres"])
def store(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        request.applymarker(pytest.mark.postgres)
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.mark.timeout(60)
def test_two_mergers_at_once_one_holds_the_lock_the_other_returns(
    store: str, embedded_broker: str, tmp_path: Path, record_figures: RecordFigures
) -> None:
    origin = make_remote(tmp_path)
    plan_id = queued_requests(TWO_TASKS, origin, tmp_path, gates=["test -f README.md"])
    settings, registry = merge_queue_args()
    pk = integration_pk(plan_id)
    start = threading.Barrier(2)
    other_returned = threading.Event()
    results: dict[str, str] = {}
    returned_at: dict[str, float] = {}

    def gate(command: str, folder: Path, timeout: float, log_path: Path) -> tuple[bool, str]:
        assert other_returned.wait(20), "the other merger did not return while this one held the lock"
        return real_gate(command, folder, timeout, log_path)

    def merger(name: str) -> None:
        start.wait()
        results[name] = work_merge_queue(pk, settings, registry, gate, None)
        returned_at[name] = time.monotonic()
        if "held by another merger" in results[name]:
            other_returned.set()

    threads = [threading.Thread(target=merger, args=(name,)) for name in ("m1", "m2")]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(40)
    held = [name for name, said in results.items() if "held by another merger" in said]
    winners = [name for name, said in results.items() if said == "merged 2"]
    done = applied(origin, plan_id)
    figures = {
        "store": store.split(":", 1)[0].split("+", 1)[0],
        "mergers": 2,
        "held the lock": len(winners),
        "returned 'held by another merger'": len(held),
        "loser returned after": seconds(began, returned_at[held[0]]) if held else "-",
        "merged by the holder": results.get(winners[0], "-") if winners else "-",
        "double applies": done.double_applies,
        "lock left held": int(lock_holder(plan_id) is not None),
    }
    record_figures(f"12c two mergers at once ({figures['store']})", figures)

    assert sorted(results) == ["m1", "m2"], f"a merger did not return: {results}"
    assert len(winners) == 1 and len(held) == 1, results
    assert task_statuses(plan_id) == {"a": "succeeded", "b": "succeeded"}
    assert done.double_applies == 0 and done.tasks == {"a": 1, "b": 1}, done
    assert lock_holder(plan_id) is None


@pytest.mark.timeout(60)
def test_two_merges_from_one_head_the_compare_and_swap_applies_each_once(
    store: str, embedded_broker: str, tmp_path: Path, record_figures: RecordFigures
) -> None:
    origin = make_remote(tmp_path)
    plan_id = queued_requests(TWO_TASKS, origin, tmp_path, gates=["test -f README.md"])
    settings, _registry = merge_queue_args()
    branch = f"orch/{plan_id}"
    with read_session() as session:
        integration = merges.get_integration(session, integration_pk(plan_id))
        waiting = merges.waiting_requests(session, integration_pk(plan_id))
    assert integration is not None and len(waiting) == 2
    waiting_head = {request.key: request.head_commit for request in waiting}
    base = git(origin, "rev-parse", branch)
    both_computed = threading.Barrier(2, timeout=20)
    rounds: dict[str, int] = {}
    results: dict[str, MergeResult] = {}

    def gate_for(key: str) -> Callable[[str, Path, float, Path], tuple[bool, str]]:
        def gate(command: str, folder: Path, timeout: float, log_path: Path) -> tuple[bool, str]:
            rounds[key] = rounds.get(key, 0) + 1
            if rounds[key] == 1:
                both_computed.wait()  # both candidates made from the same head before either pushes
            return real_gate(command, folder, timeout, log_path)

        return gate

    def merge(request: MergeRequest) -> None:
        results[request.key] = merge_request(integration, request, settings, gate_for(request.key))

    threads = [threading.Thread(target=merge, args=(request,)) for request in waiting]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(40)
    after_race = git(origin, "rev-parse", branch)
    commits_after_race = commits_on(origin, branch)
    # The store learns of both through the queue: a merger finds each request's work on the branch already.
    settings, registry = merge_queue_args()
    said = work_merge_queue(integration_pk(plan_id), settings, registry, real_gate, None)
    done = applied(origin, plan_id)
    requests = requests_of(plan_id)
    winner, loser = sorted(rounds, key=lambda key: rounds[key])
    figures = {
        "store": store.split(":", 1)[0].split("+", 1)[0],
        "merges from one head": 2,
        "merge rounds (winner / loser)": f"{rounds[winner]} / {rounds[loser]}",
        "pushes refused": sum(rounds.values()) - len(rounds),
        "landed": sum(1 for r in results.values() if isinstance(r, Merged)),
        "double applies": done.double_applies,
        "commits added when recording": commits_on(origin, branch) - commits_after_race,
    }
    record_figures(f"12d two merges, one head ({figures['store']})", figures)

    assert (rounds[winner], rounds[loser]) == (1, 2), rounds
    assert results == {winner: Merged(waiting_head[winner]), loser: Merged(after_race)}, results
    assert contained(origin, [base, waiting_head[winner]], branch) == 2  # the branch only grew: nothing forced
    assert is_merge_commit(origin, after_race), "the loser merged again on top of the winner's work"
    assert git(origin, "rev-parse", branch) == after_race and said == "merged 2", said
    assert done.double_applies == 0 and done.tasks == {"a": 1, "b": 1}, done
    assert done.requests == {str(requests[loser].pk): 1}, done
    assert task_statuses(plan_id) == {"a": "succeeded", "b": "succeeded"}
    assert {r.merged_commit for r in requests.values()} == {after_race}


INTERLOPERS = 2  # pushes by another host between the merger's read of the head and its push, in a row


@pytest.mark.timeout(60)
def test_a_lost_push_race_merges_again_on_the_new_head(
    store: str, embedded_broker: str, tmp_path: Path, record_figures: RecordFigures
) -> None:
    origin = make_remote(tmp_path)
    tasks = [{"id": "a", "title": "write a", "command": "echo A > a.txt"}]
    plan_id = queued_requests(tasks, origin, tmp_path, gates=["test -f a.txt"])
    branch = f"orch/{plan_id}"
    settings, registry = merge_queue_args()
    foreign: list[str] = []
    rounds = 0

    def gate(command: str, folder: Path, timeout: float, log_path: Path) -> tuple[bool, str]:
        nonlocal rounds
        rounds += 1
        if rounds <= INTERLOPERS:  # the merger has read the head and made its candidate; it pushes after this
            foreign.append(push_from_elsewhere(origin, tmp_path / "other-host", branch, f"other-{rounds}.txt", "x\n"))
        return real_gate(command, folder, timeout, log_path)

    started = time.monotonic()
    said = work_merge_queue(integration_pk(plan_id), settings, registry, gate, None)
    took = time.monotonic() - started
    done = applied(origin, plan_id)
    requests = requests_of(plan_id)
    head = git(origin, "rev-parse", branch)
    figures = {
        "store": store.split(":", 1)[0].split("+", 1)[0],
        "pushes by another host mid-merge": len(foreign),
        "merge rounds": rounds,
        "store tries": requests["a"].tries,
        "other host's commits kept": f"{contained(origin, foreign, branch)}/{len(foreign)}",
        "double applies": done.double_applies,
        "merge seconds": f"{took:.2f}s",
    }
    record_figures(f"12e lost push race ({figures['store']})", figures)

    assert said == "merged 1", said
    assert rounds == INTERLOPERS + 1
    assert requests["a"].phase == MergePhase.MERGED.value and requests["a"].merged_commit == head
    assert requests["a"].tries == 1  # the races are redone within one merge, not requeued
    assert contained(origin, foreign, branch) == len(foreign)
    assert is_merge_commit(origin, head) and git(origin, "show", f"{branch}:a.txt") == "A"
    assert done.double_applies == 0 and done.tasks == {"a": 1}, done
    assert task_statuses(plan_id) == {"a": "succeeded"}


OUTAGE = 5.0  # seconds the remote stays away while the merger is watched


@pytest.mark.timeout(60)
def test_a_remote_lost_mid_merge_leaves_the_request_for_a_later_merger(
    store: str, embedded_broker: str, tmp_path: Path, record_figures: RecordFigures
) -> None:
    origin = make_remote(tmp_path)
    away = tmp_path / "origin-away.git"
    tasks = [{"id": "a", "title": "write a", "command": "echo A > a.txt"}]
    plan_id = queued_requests(tasks, origin, tmp_path, gates=["test -f a.txt"])
    settings, registry = merge_queue_args()
    pk = integration_pk(plan_id)
    gates = 0

    def gate(command: str, folder: Path, timeout: float, log_path: Path) -> tuple[bool, str]:
        nonlocal gates
        gates += 1
        if gates == 1:
            origin.rename(away)  # the remote goes away between the merge's gate and its push
        return real_gate(command, folder, timeout, log_path)

    said: list[str] = []
    merger = threading.Thread(target=lambda: said.append(work_merge_queue(pk, settings, registry, gate, None)))
    merger.start()
    try:
        merger.join(OUTAGE)
        returned = not merger.is_alive()
        during = requests_of(plan_id)["a"]
        held_during = lock_holder(plan_id) is not None
    finally:
        if away.exists():
            away.rename(origin)  # back: a merger still spinning then merges and returns
        merger.join(30)
    later = work_merge_queue(pk, settings, registry, real_gate, None) if returned else "-"
    after = requests_of(plan_id)["a"]
    figures = {
        "store": store.split(":", 1)[0].split("+", 1)[0],
        "remote away": f"{OUTAGE:.0f}s",
        "merger returned while it was away": int(returned),
        "merge tries while it was away": during.tries,
        "lock held while it was away": int(held_during),
        "later merger": later,
        "final phase": after.phase,
        "double applies": applied(origin, plan_id).double_applies,
    }
    record_figures(f"12f remote lost mid-merge ({figures['store']})", figures)

    assert returned, f"the merger still runs {OUTAGE:.0f}s into the outage, {during.tries} tries"
    assert during.phase == MergePhase.QUEUED.value and (during.detail or "").startswith("waiting: "), during
    assert not held_during
    assert later == "merged 1" and after.phase == MergePhase.MERGED.value
    assert task_statuses(plan_id) == {"a": "succeeded"}
