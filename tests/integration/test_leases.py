"""Leases and heartbeats against the real store: a running attempt renews its lease by the database's clock, the
reaper settles attempts whose lease expired, a worker whose lease is gone kills its agent, budgets stop agents
and hold plans, the circuit breaker pauses a failing agent type, and the operator's retry/skip/pause/resume."""

from __future__ import annotations

import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from beat.tick import run_tick
from orch.budget import Budget
from orch.celery import use_broker
from orch.decisions.retry import Outcome
from orch.dispatch.reconcile import reconcile_plans
from orch.errors import ConfigInvalid, TaskNotFound, TaskStateConflict
from orch.intake.agents import load_agents
from orch.intake.prices import Usage
from orch.records import AttemptResult, Dispatch
from orch.settings import get_settings
from orch.states import LEGAL_TRANSITIONS, AttemptStatus, PlanStatus, TaskStatus
from orch.store import attempts, db, operator, pauses, plans
from orch.store.db import db_now, read_session, write_session
from orch.store.events import plan_events
from tests.helpers import REPO, fake_claude_wrapper, make_plan, marked_processes, registry, wait_for
from workers.runner import run_attempt


@pytest.fixture
def fast_leases(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> str:
    monkeypatch.setenv("ORCH_HEARTBEAT_SECONDS", "0.2")
    monkeypatch.setenv("ORCH_LEASE_SECONDS", "1")
    monkeypatch.setenv("ORCH_RETRY_BACKOFF_BASE", "0")
    get_settings.cache_clear()
    use_broker(redis_url)
    return redis_url


def submit(tasks: list[dict[str, Any]], workdir: Path, **extra: Any) -> str:
    with write_session() as session:
        return plans.submit_plan(session, make_plan(tasks, workdir=workdir, **extra), datetime.now(UTC))


def dispatch_all(plan_id: str) -> dict[str, Dispatch]:
    with write_session() as session:
        dispatches = reconcile_plans(session, [plan_id], registry(), db_now(session))
    return {d.key: d for d in dispatches}


def task(plan_id: str, key: str) -> Any:
    with read_session() as session:
        return plans.task_by_key(session, plan_id, key)


def attempt_rows(plan_id: str, key: str) -> list[Any]:
    with read_session() as session:
        return plans.task_attempts(session, plans.task_by_key(session, plan_id, key).pk)


def run_in_thread(dispatch: Dispatch) -> tuple[threading.Thread, list[str]]:
    outcome: list[str] = []
    thread = threading.Thread(target=lambda: outcome.append(run_attempt(dispatch.task_pk, dispatch.attempt, "w1")))
    thread.start()
    return thread, outcome


def test_the_lease_is_judged_by_the_database_clock_and_renewed_by_heartbeats(
    store_url: str, fast_leases: str, tmp_path: Path
) -> None:
    plan_id = submit([{"id": "a", "title": "wait", "command": "sleep 1.5"}], tmp_path)
    dispatch = dispatch_all(plan_id)["a"]
    thread, outcome = run_in_thread(dispatch)
    first = wait_for(lambda: task(plan_id, "a").lease_expires_at, 5, "the claim")
    with read_session() as session:
        assert abs((first - db_now(session)).total_seconds() - 1.0) < 0.5  # claimed "now" + ORCH_LEASE_SECONDS
    wait_for(lambda: (t := task(plan_id, "a").lease_expires_at) is not None and t > first, 5, "a renewal")
    thread.join(15)
    # The command outlived its 1 s lease several times over and still succeeded: heartbeats kept the lease.
    assert outcome == ["succeeded"]
    (only,) = attempt_rows(plan_id, "a")
    assert only.status is AttemptStatus.SUCCEEDED and only.heartbeat_at is not None
    assert task(plan_id, "a").lease_expires_at is None


def test_the_reaper_settles_an_expired_lease_and_rejects_the_late_result(
    store_url: str, fast_leases: str, tmp_path: Path
) -> None:
    plan_id = submit(
        [
            {"id": "a", "title": "a", "command": "true", "retries": 1},
            {"id": "b", "title": "b", "command": "true", "after": ["a"]},
        ],
        tmp_path,
    )
    dispatch = dispatch_all(plan_id)["a"]
    with write_session() as session:
        now = db_now(session)
        claimed = attempts.claim(session, dispatch.task_pk, dispatch.attempt, "frozen-host", 4242, 0.2, now=now)
    assert claimed is not None
    claim, _ = claimed
    with write_session() as session:  # not yet expired: nothing to reap
        assert attempts.expired_claims(session, now) == []
    report = run_tick(now=now + timedelta(seconds=1), reap=True)
    assert report.reaped == 1
    (lost,) = attempt_rows(plan_id, "a")
    assert lost.status is AttemptStatus.LOST and lost.failure_class == "worker_lost"
    assert "frozen-host (pid 4242)" in (lost.error or "")
    again = task(plan_id, "a")  # retried at once (ORCH_RETRY_BACKOFF_BASE=0) by the same tick
    assert again.status is TaskStatus.QUEUED and again.attempt == 2
    # The frozen worker wakes up: its renewal and its result are both refused.
    with write_session() as session:
        assert not attempts.renew_lease(session, claim, db_now(session), 10, Usage(), None)
    from workers.runner import finish

    with write_session() as session:
        later = db_now(session)
        assert attempts.claim(session, again.pk, 2, "w", 1, 0.1, now=later) is not None
    late = AttemptResult(True, exit_code=0, output_tail="woke up late", log_path="/logs/a.1.log")
    assert finish(claim, late, get_settings()) == "rejected"
    # Its output is kept on its own attempt only, whose status the reaper set; the attempt now running is not
    # touched.
    lost, second = attempt_rows(plan_id, "a")
    assert (lost.status, lost.output_tail, lost.log_path) == (AttemptStatus.LOST, "woke up late", "/logs/a.1.log")
    assert second.status is AttemptStatus.RUNNING and second.output_tail == "" and second.log_path is None
    # A second loss spends the last retry: the task fails and its dependant is doomed.
    run_tick(now=later + timedelta(seconds=1))
    assert task(plan_id, "a").status is TaskStatus.FAILED
    assert task(plan_id, "b").status is TaskStatus.UPSTREAM_FAILED
    with read_session() as session:
        assert plans.get_plan(session, plan_id).status is PlanStatus.FAILED  # type: ignore[union-attr]


def test_a_worker_whose_lease_is_gone_kills_its_agent(store_url: str, fast_leases: str, tmp_path: Path) -> None:
    marker = f"lease-gone-{secrets.token_hex(4)}"  # an agent in a sandbox has pids of its own: found by a marker
    command = f"echo before the cancel; exec env MARK={marker} sleep 60"
    plan_id = submit([{"id": "a", "title": "long", "command": command}], tmp_path)
    thread, outcome = run_in_thread(dispatch_all(plan_id)["a"])
    wait_for(lambda: marked_processes(marker), 10, "the agent to start")
    (running,) = attempt_rows(plan_id, "a")  # its log's path is known from the start, for `orch logs -f`
    log_path = get_settings().logs_dir.resolve() / plan_id / "a.1.log"
    assert running.log_path == str(log_path) and log_path.is_file()
    with write_session() as session:
        operator.cancel_task(session, plan_id, "a", db_now(session), "cancelled by a test")
    thread.join(10)
    assert outcome == ["rejected"]
    assert not marked_processes(marker)
    (cancelled,) = attempt_rows(plan_id, "a")
    assert cancelled.status is AttemptStatus.CANCELLED and cancelled.error == "cancelled by a test"
    # The stopped agent's output is kept, as for any attempt; the status the cancel set stays.
    assert cancelled.log_path == str(log_path) and "before the cancel" in cancelled.output_tail
    assert task(plan_id, "a").status is TaskStatus.CANCELLED


def test_a_dropped_delivery_says_plainly_what_happened(store_url: str, fast_leases: str, tmp_path: Path) -> None:
    """What Flower shows as the task's result: a duplicate or stale message's copy did nothing, and why."""
    plan_id = submit([{"id": "build", "title": "waits", "command": "while [ ! -e go ]; do sleep 0.1; done"}], tmp_path)
    dispatch = dispatch_all(plan_id)["build"]
    thread, outcome = run_in_thread(dispatch)
    try:
        wait_for(lambda: task(plan_id, "build").status is TaskStatus.RUNNING, 10, "the claim")
        copy = run_attempt(dispatch.task_pk, 1, "w2")
    finally:
        (tmp_path / "go").touch()
        thread.join(15)
    assert outcome == ["succeeded"]
    assert copy == (
        f"duplicate delivery: attempt 1 of task build (plan {plan_id}) already running on worker w1; nothing done"
    )
    late = run_attempt(dispatch.task_pk, 1, "w2")
    assert late == f"stale delivery: attempt 1 of task build (plan {plan_id}) already ended (succeeded); nothing done"
    assert run_attempt(dispatch.task_pk, 2, "w2") == (
        f"stale delivery: task build (plan {plan_id}) has no attempt 2 to run (it is succeeded); nothing done"
    )


@pytest.fixture
def fake_claude(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    wrapper = fake_claude_wrapper(tmp_path / "bin" / "claude")
    monkeypatch.setenv("ORCH_CLAUDE_BIN", str(wrapper))
    get_settings.cache_clear()
    return wrapper


def test_a_plan_over_budget_stops_its_agent_and_resumes_with_a_higher_one(
    store_url: str, fast_leases: str, fake_claude: Path, tmp_path: Path
) -> None:
    tasks = [{"id": "a", "title": "spend FAKE:spend", "agent": "backend-development", "executor": "claude-code"}]
    plan_id = submit(tasks, tmp_path, budget={"usd": 0.05})
    thread, outcome = run_in_thread(dispatch_all(plan_id)["a"])
    thread.join(20)
    assert outcome == ["retry_wait"]
    (stopped,) = attempt_rows(plan_id, "a")
    assert stopped.status is AttemptStatus.INTERRUPTED and stopped.failure_class == "interrupted"
    assert (stopped.cost_usd or 0) >= 0.05 and stopped.output_tokens > 0  # its spend stays on the record
    with read_session() as session:
        plan = plans.get_plan(session, plan_id)
        assert plan is not None and plan.status is PlanStatus.BUDGET_EXHAUSTED
        assert "plan budget spent: $" in (plan.held_reason or "") and "of $0.05" in (plan.held_reason or "")
    assert dispatch_all(plan_id) == {}  # held: nothing dispatched
    with write_session() as session, pytest.raises(TaskStateConflict, match="raise it"):
        operator.resume_plan(session, plan_id, db_now(session))
    with write_session() as session:
        assert operator.resume_plan(session, plan_id, db_now(session), Budget(usd=100)) is PlanStatus.BUDGET_EXHAUSTED
    assert set(dispatch_all(plan_id)) == {"a"}


def test_a_spent_plan_budget_holds_dispatch(store_url: str, tmp_path: Path) -> None:
    plan_id = submit(
        [{"id": "a", "title": "a", "command": "true"}, {"id": "b", "title": "b", "command": "true", "after": ["a"]}],
        tmp_path,
        budget={"tokens": 100},
    )
    dispatch = dispatch_all(plan_id)["a"]
    with write_session() as session:
        now = db_now(session)
        claimed = attempts.claim(session, dispatch.task_pk, 1, "w", 1, 60, now=now)
        assert claimed is not None
        claim, _ = claimed
        result = AttemptResult(True, exit_code=0, usage=Usage(input_tokens=90, output_tokens=20))
        attempts.record_result(session, claim, result, Outcome(TaskStatus.SUCCEEDED, AttemptStatus.SUCCEEDED), now)
    assert dispatch_all(plan_id) == {}
    with read_session() as session:
        plan = plans.get_plan(session, plan_id)
        assert plan is not None and plan.status is PlanStatus.BUDGET_EXHAUSTED
        assert plan.held_reason == "plan budget spent: 110 of 100 tokens"


@pytest.fixture
def breaker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    config = tmp_path / "config"
    shutil.copytree(REPO / "config", config)
    agents = yaml.safe_load((config / "agents.yaml").read_text())
    agents["defaults"]["breaker"] = {"failures": 2, "cooldown": "1h"}
    (config / "agents.yaml").write_text(yaml.safe_dump(agents))
    monkeypatch.setenv("ORCH_CONFIG_DIR", str(config))
    get_settings.cache_clear()
    yield


def test_consecutive_failures_open_the_agent_types_circuit(
    store_url: str, fast_leases: str, breaker_config: None, tmp_path: Path
) -> None:
    tasks = [
        {"id": f"f{i}", "title": "fails", "command": "exit 3", "retries": 0, "agent": "testing-specialist"}
        for i in range(3)
    ]
    tasks.append({"id": "docs", "title": "docs", "command": "true", "agent": "documentation-writer"})
    plan_id = submit(tasks, tmp_path)
    dispatches = dispatch_all(plan_id)
    assert run_attempt(dispatches["f0"].task_pk, 1) == "failed"
    with read_session() as session:
        assert "testing-specialist" not in pauses.active_pauses(session, db_now(session))
    assert run_attempt(dispatches["f1"].task_pk, 1) == "failed"
    with read_session() as session:
        pause = pauses.active_pauses(session, db_now(session))["testing-specialist"]
    assert pause.reason == "circuit open: 2 consecutive failures"
    assert pause.until - pause.created_at == timedelta(hours=1)
    assert run_attempt(dispatches["docs"].task_pk, 1) == "succeeded"  # other types keep running


def test_a_type_no_longer_declared_fails_and_trips_its_circuit_at_the_defaults(
    store_url: str, fast_leases: str, breaker_config: None, tmp_path: Path
) -> None:
    """agents.yaml loses a type while its tasks are queued: their failures are recorded, and its circuit opens as
    the file's defaults say (before, recording the result raised KeyError: the attempt was left for the reaper)."""
    failing = {"title": "fails", "command": "exit 3", "retries": 0, "agent": "testing-specialist"}
    tasks = [{"id": f"f{i}", **failing} for i in range(2)]
    plan_id = submit(tasks, tmp_path)
    dispatches = dispatch_all(plan_id)
    config = Path(get_settings().config_dir)
    agents = yaml.safe_load((config / "agents.yaml").read_text())
    agents["agent_types"] = [t for t in agents["agent_types"] if t["name"] != "testing-specialist"]
    (config / "agents.yaml").write_text(yaml.safe_dump(agents))
    load_agents.cache_clear()
    assert run_attempt(dispatches["f0"].task_pk, 1) == "failed"
    assert run_attempt(dispatches["f1"].task_pk, 1) == "failed"
    with read_session() as session:
        pause = pauses.active_pauses(session, db.db_now(session))["testing-specialist"]
    assert pause.reason == "circuit open: 2 consecutive failures"


def test_retry_and_skip_reopen_tasks_and_their_descendants(store_url: str, tmp_path: Path) -> None:
    plan_id = submit(
        [
            {"id": "a", "title": "a", "command": "exit 1", "retries": 0},
            {"id": "b", "title": "b", "command": "true", "after": ["a"]},
            {"id": "c", "title": "c", "command": "true", "after": ["b"]},
        ],
        tmp_path,
    )
    dispatch = dispatch_all(plan_id)["a"]
    assert run_attempt(dispatch.task_pk, 1) == "failed"
    assert task(plan_id, "c").status is TaskStatus.UPSTREAM_FAILED
    with read_session() as session:
        assert plans.get_plan(session, plan_id).status is PlanStatus.FAILED  # type: ignore[union-attr]
    with write_session() as session, pytest.raises(TaskNotFound, match=f"plan {plan_id} has no task 'zz'"):
        operator.retry_task(session, plan_id, "zz", db_now(session))
    with write_session() as session:
        assert operator.retry_task(session, plan_id, "a", db_now(session)) == ["a", "b", "c"]
    assert task(plan_id, "a").retry_floor == 1
    with read_session() as session:
        assert plans.get_plan(session, plan_id).status is PlanStatus.RUNNING  # type: ignore[union-attr]
        assert attempts.counted_failures(session, task(plan_id, "a").pk) == 0  # a fresh retry budget
    again = dispatch_all(plan_id)["a"]
    assert again.attempt == 2 and run_attempt(again.task_pk, 2) == "failed"
    with write_session() as session:
        assert operator.skip_task(session, plan_id, "a", db_now(session)) == ["a", "b", "c"]
    assert task(plan_id, "a").status is TaskStatus.SUCCEEDED
    assert set(dispatch_all(plan_id)) == {"b"}
    with write_session() as session, pytest.raises(TaskStateConflict, match="already succeeded"):
        operator.skip_task(session, plan_id, "a", db_now(session))
    with read_session() as session:
        events = plan_events(session, plan_id)
    changes = {(e.old, e.new) for e in events if e.kind == "task" and e.old}
    assert changes <= {(str(old), str(new)) for old, new in LEGAL_TRANSITIONS}


def test_pause_holds_dispatch_until_resume(store_url: str, tmp_path: Path) -> None:
    plan_id = submit([{"id": "a", "title": "a", "command": "true"}], tmp_path)
    with write_session() as session:
        assert operator.hold_plan(session, plan_id, PlanStatus.PAUSED, "orch pause", db_now(session))
    assert dispatch_all(plan_id) == {}
    with write_session() as session:
        assert operator.resume_plan(session, plan_id, db_now(session)) is PlanStatus.PAUSED
    assert set(dispatch_all(plan_id)) == {"a"}


def test_a_second_beat_on_sqlite_refuses_to_start(sqlite_url: str) -> None:
    from beat.single import hold_single_beat_lock

    first = hold_single_beat_lock(sqlite_url)
    assert first is not None and first.keep()
    try:
        with pytest.raises(ConfigInvalid, match=rf"another beat \(pid {os.getpid()}\) already runs against sqlite"):
            hold_single_beat_lock(sqlite_url)
    finally:
        first.release()
    again = hold_single_beat_lock(sqlite_url)  # released with its holder
    assert again is not None
    again.release()


def test_tasks_whose_files_overlap_never_run_together(store_url: str, tmp_path: Path) -> None:
    plan_id = submit(
        [
            {"id": "api", "title": "api", "command": "true", "files": ["src/api.py"], "priority": 5},
            {"id": "all", "title": "all", "command": "true", "files": ["src/*.py"]},
            {"id": "docs", "title": "docs", "command": "true", "files": ["docs/**"]},
        ],
        tmp_path,
    )
    other = submit([{"id": "x", "title": "x", "command": "true", "files": ["docs/index.md"]}], tmp_path)
    assert set(dispatch_all(plan_id)) == {"api", "docs"}  # `all` waits for `api`
    assert dispatch_all(other) == {}  # another plan in the same workdir waits for `docs`
    with write_session() as session:
        now = db_now(session)
        for key in ("api", "docs"):
            row = plans.task_by_key(session, plan_id, key)
            claimed = attempts.claim(session, row.pk, 1, "w", 1, 60, now=now)
            assert claimed is not None
            claim, _ = claimed
            done = Outcome(TaskStatus.SUCCEEDED, AttemptStatus.SUCCEEDED)
            attempts.record_result(session, claim, AttemptResult(True, exit_code=0), done, now)
    assert set(dispatch_all(plan_id)) == {"all"}
    assert set(dispatch_all(other)) == {"x"}
