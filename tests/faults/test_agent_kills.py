"""Scenario 7: agents that hang, ignore SIGTERM and fork grandchildren that ignore it too, or flood their output,
run by a real worker. Each is killed on time (its timeout, plus the SIGTERM → SIGKILL grace when it ignores
SIGTERM), nothing of it is left, and its log stays capped."""

from __future__ import annotations

import os

import pytest

from tests.faults.conftest import MakeCluster, RecordFigures
from tests.faults.harness import (
    FAST_SETTINGS,
    Cluster,
    FaultRun,
    LeaseWatch,
    Store,
    submit_plan,
    wait_for_plan,
)

pytestmark = [pytest.mark.faults, pytest.mark.redis]

GRACE = float(FAST_SETTINGS["ORCH_KILL_GRACE_SECONDS"])
LOG_MAX = int(FAST_SETTINGS["ORCH_LOG_MAX_BYTES"])
TAIL_MAX = int(FAST_SETTINGS["ORCH_OUTPUT_TAIL_BYTES"])
SLACK = 2.0  # claim, process start, recording: the worker's own overhead on a loaded 2-core machine
AGENTS = ["backend-development", "testing-specialist", "documentation-writer", "devops-engineer"]


def kill_plan(run: FaultRun) -> dict[str, tuple[str, int]]:
    """Task id -> (command, timeout in seconds)."""
    trap_and_fork = 'trap "" TERM; (trap "" TERM; sleep 1000) & (trap "" TERM; sleep 1000) & '
    return {
        "hang": (run.agent_command("--hang"), 1),
        "ignore-term-fork": (run.agent_command("--ignore-term", "--fork", "3", "--hang"), 1),
        "sh-trap-grandchildren": (run.marked_shell(trap_and_fork + run.agent_command("--hang")), 1),
        "flood-forever": (run.agent_command("--flood", "-1"), 2),
        "flood-200mb": (run.agent_command("--flood", str(200_000_000)), 60),
        "control": (run.agent_command("--sleep", "0.2"), 60),
    }


TIMED_OUT = ["hang", "ignore-term-fork", "sh-trap-grandchildren", "flood-forever"]
IGNORE_TERM = ["ignore-term-fork", "sh-trap-grandchildren"]


def plan_document(name: str, cases: dict[str, tuple[str, int]]) -> dict[str, object]:
    tasks = [
        {"id": key, "title": f"misbehave: {key}", "agent": AGENTS[i % len(AGENTS)], "retries": 0}
        | {"command": command, "timeout": timeout}
        for i, (key, (command, timeout)) in enumerate(cases.items())
    ]
    return {"name": name, "tasks": tasks}


@pytest.fixture
def cluster(sqlite_url: str, fault_redis_url: str, fault_run: FaultRun, make_cluster: MakeCluster) -> Cluster:
    """A worker (six processes) on the queues of AGENTS, and a beat, on a SQLite store."""
    cluster = make_cluster(sqlite_url, fault_redis_url)
    cluster.start(["killer"], fault_run.queues(AGENTS), concurrency=6)
    return cluster


@pytest.mark.timeout(120)
def test_misbehaving_agents_are_killed_on_time_and_leave_nothing(
    cluster: Cluster, fault_run: FaultRun, record_figures: RecordFigures
) -> None:
    cases = kill_plan(fault_run)
    plan_id = submit_plan(fault_run, cluster.env, plan_document("misbehave", cases))

    with Store(cluster.database_url) as store:
        watch = LeaseWatch(store, plan_id)
        status = wait_for_plan(store, plan_id, 90, cluster=cluster, watch=watch)

    verdict = cluster.examine(plan_id, watch)
    snapshot = verdict.snapshot
    overruns: dict[str, float] = {}
    for key in TIMED_OUT:
        (attempt,) = snapshot.attempts_of(key)
        assert attempt.started_at is not None and attempt.finished_at is not None
        overruns[key] = (attempt.finished_at - attempt.started_at).total_seconds() - cases[key][1]
    late = [
        f"{k}: recorded {o:.2f}s after its {cases[k][1]}s timeout" for k, o in overruns.items() if o > GRACE + SLACK
    ]
    log_sizes = {a.log_path: os.path.getsize(a.log_path) for a in snapshot.attempts if a.log_path}
    forked = [line for line in verdict.ledger if line["event"] == "forked"]
    figures = {
        **verdict.figures,
        "killed on time": (len(TIMED_OUT) - len(late), len(TIMED_OUT)),
        "max overrun": f"{max(overruns.values()):.2f}s (grace {GRACE:g}s)",
        "grandchildren": sum(len(line["children"]) for line in forked) + 2,  # + the two `sleep`s of the sh one
        "largest log": f"{max(log_sizes.values(), default=0) // 1024} KiB (cap {LOG_MAX // 1024} KiB)",
    }
    record_figures("7 agent kills", figures, verdict.notes)

    verdict.assert_ok()
    assert status == "failed"
    assert not late, late
    for key in TIMED_OUT:
        (attempt,) = snapshot.attempts_of(key)
        assert (snapshot.task(key).status, attempt.failure_class) == ("failed", "timeout"), (key, attempt.error)
    # Those that ignore SIGTERM outlived it: only the SIGKILL after the grace ended them.
    assert min(overruns[k] for k in IGNORE_TERM) >= GRACE * 0.8, overruns
    assert forked and len(forked[0]["children"]) == 3
    for key in ("flood-200mb", "control"):
        assert snapshot.task(key).status == "succeeded", (key, snapshot.attempts_of(key))
    for key in ("flood-forever", "flood-200mb"):
        (attempt,) = snapshot.attempts_of(key)
        assert attempt.log_path
        assert LOG_MAX // 2 <= log_sizes[attempt.log_path] <= LOG_MAX + 4096, (key, log_sizes)
        assert len(attempt.output_tail.encode()) <= TAIL_MAX + 256, (key, len(attempt.output_tail))


@pytest.mark.timeout(60)
def test_an_agent_that_daemonizes_leaves_nothing(
    cluster: Cluster, fault_run: FaultRun, record_figures: RecordFigures
) -> None:
    daemon = "setsid sleep 1000 </dev/null >/dev/null 2>&1 & "
    cases = {
        "daemon-then-hang": (fault_run.marked_shell(daemon + fault_run.agent_command("--hang")), 1),
        "daemon-then-succeed": (fault_run.marked_shell(daemon + fault_run.agent_command()), 60),
    }
    plan_id = submit_plan(fault_run, cluster.env, plan_document("daemons", cases))
    with Store(cluster.database_url) as store:
        wait_for_plan(store, plan_id, 40, cluster=cluster)

    verdict = cluster.examine(plan_id)
    record_figures("7 agent kills: setsid daemons", verdict.figures, verdict.notes)
    assert verdict.snapshot.task("daemon-then-hang").status == "failed"
    assert verdict.snapshot.task("daemon-then-succeed").status == "succeeded"
    verdict.assert_ok()
