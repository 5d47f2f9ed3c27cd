"""The plan around a task, read for its prompt on SQLite and PostgreSQL (the plan's goal, the tasks waiting on it,
those under way beside it, its repository's context file; two queries, bounded lists), and a prompted attempt's
prompt carrying them: built at the claim, and as a real worker sends it to the (loopback) Messages API."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from sqlalchemy import event, update

import workers.tasks  # noqa: F401  (registers orch.run_task)
from beat.tick import run_tick
from orch.celery import app, use_broker
from orch.dispatch.reconcile import reconcile_plans
from orch.intake.plan_validation import validate_plan
from orch.intake.prompts import LISTED_TASKS, TaskRef
from orch.intake.targets import parse_targets
from orch.states import TaskStatus
from orch.store import attempts, plans
from orch.store.db import get_engine, read_session, write_session
from orch.store.models import TaskRow
from orch.store.plan_context import for_task
from tests.fakes.messages_api import MessagesAPI, Reply
from tests.helpers import drive_until_final, make_plan, registry, wait_for
from tests.integration.test_worktree_plans import seeded
from workers import runner

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
GOAL = "Add authentication with a security audit and docs."


def submit(tasks: list[dict[str, Any]], description: str = GOAL, **extra: Any) -> str:
    with write_session() as session:
        return plans.submit_plan(session, make_plan(tasks, name="auth", description=description, **extra), NOW)


def pks(plan_id: str) -> dict[str, int]:
    with read_session() as session:
        return {task.key: task.pk for task in plans.plan_tasks(session, plan_id)}


def set_status(task_pks: list[int], status: TaskStatus) -> None:
    with write_session() as session:
        session.execute(update(TaskRow).where(TaskRow.pk.in_(task_pks)).values(status=status))


def keys(refs: tuple[TaskRef, ...]) -> list[str]:
    return [ref.key for ref in refs]


def test_the_plan_context_is_the_goal_the_dependants_and_the_tasks_under_way(store_url: str) -> None:
    plan_id = submit([
        {"id": "design", "title": "Design the JWT architecture", "command": "true"},
        {"id": "build", "title": "Implement the endpoints", "after": ["design"], "command": "true"},
        {"id": "docs", "title": "Document the auth flow", "after": ["design", "build"], "command": "true"},
        {"id": "audit", "title": "Audit the secrets handling", "command": "true"},
        {"id": "lint", "title": "Lint", "command": "true"},
        {"id": "old", "title": "Done already", "command": "true"},
    ])  # fmt: skip
    task = pks(plan_id)
    set_status([task["design"], task["audit"]], TaskStatus.RUNNING)
    set_status([task["lint"]], TaskStatus.MERGING)
    set_status([task["old"]], TaskStatus.SUCCEEDED)
    with read_session() as session:
        design = for_task(session, plan_id, task["design"], None)
        build = for_task(session, plan_id, task["build"], None)

    assert (design.name, design.goal, design.repository_context) == ("auth", GOAL, "")
    assert design.dependants.tasks == (TaskRef("build", "Implement the endpoints"),
                                       TaskRef("docs", "Document the auth flow"))  # fmt: skip
    assert design.dependants.total == 2
    # under way beside it: running, merging (queued too); never itself, nor what finished or waits
    assert keys(design.running.tasks) == ["audit", "lint"] and design.running.total == 2
    assert keys(build.dependants.tasks) == ["docs"]
    assert keys(build.running.tasks) == ["design", "audit", "lint"]


def test_only_dependants_that_will_still_run_are_waiting_on_it(store_url: str) -> None:
    ended = [TaskStatus.CANCELLED, TaskStatus.UPSTREAM_FAILED, TaskStatus.REPLACED, TaskStatus.FAILED]
    waiting = [TaskStatus.PENDING, TaskStatus.RETRY_WAIT, TaskStatus.QUEUED]
    plan_id = submit(
        [{"id": "root", "title": "Root", "command": "true"}]
        + [{"id": str(s), "title": f"A {s} dependant", "after": ["root"], "command": "true"} for s in ended + waiting]
    )
    task = pks(plan_id)
    for status in ended + waiting:
        set_status([task[str(status)]], status)
    with read_session() as session:
        found = for_task(session, plan_id, task["root"], None)
    assert sorted(keys(found.dependants.tasks)) == sorted(map(str, waiting)) and found.dependants.total == 3


def test_the_lists_are_bounded_counted_and_read_in_two_queries(store_url: str) -> None:
    many = LISTED_TASKS + 7
    plan_id = submit(
        [{"id": "root", "title": "Root", "command": "true"}]
        + [{"id": f"next-{n:02}", "title": f"Next {n}", "after": ["root"], "command": "true"} for n in range(many)]
        + [{"id": f"side-{n:02}", "title": f"Side {n}", "command": "true"} for n in range(many)],
        description="g" * 10_000,
    )
    task = pks(plan_id)
    set_status([pk for key, pk in task.items() if key.startswith("side-")], TaskStatus.QUEUED)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):  # not SQLite's BEGIN
            statements.append(statement)

    engine = get_engine(store_url)
    with read_session() as session:
        event.listen(engine, "before_cursor_execute", count)
        try:
            found = for_task(session, plan_id, task["root"], None)
        finally:
            event.remove(engine, "before_cursor_execute", count)

    assert len(statements) == 2, statements
    assert keys(found.dependants.tasks) == [f"next-{n:02}" for n in range(LISTED_TASKS)]
    assert keys(found.running.tasks) == [f"side-{n:02}" for n in range(LISTED_TASKS)]
    assert found.dependants.total == found.running.total == many
    assert len(found.goal) <= 4001  # read clipped: the prompt clips it to GOAL_CHARS and marks it


def test_a_plan_that_is_gone_gives_an_empty_context(store_url: str) -> None:
    with read_session() as session:
        found = for_task(session, "no-such-plan", 1, None)
    assert found.name == "" and found.dependants.total == found.running.total == 0


def test_a_claimed_attempts_prompt_carries_the_plan_around_it_and_its_targets_context(
    store_url: str, tmp_path: Path
) -> None:
    from orch.services.repositories import base_commits
    from orch.settings import get_settings

    web = seeded(tmp_path, "web", {"web.txt": "web\n"})
    (tmp_path / "web-context.md").write_text("The web app is built with htmx; $task_id stays as written.\n")
    targets = parse_targets(
        {"targets": {"web": {"url": str(web), "context": "web-context.md"}}}, str(tmp_path / "targets.yaml"), tmp_path
    )
    document = {
        "name": "auth",
        "description": GOAL,
        "defaults": {"agent": "general-purpose", "executor": "anthropic"},
        "tasks": [
            {"id": "page", "title": "Build the login page", "target": "web"},
            {"id": "api", "title": "Serve /login"},
            {"id": "review", "title": "Review the page ($title)", "after": ["page"]},
        ],
    }
    (tmp_path / "work").mkdir()
    plan = validate_plan(document, registry(), source="auth.yaml", base_dir=tmp_path / "work", targets=targets)
    settings = get_settings()
    with write_session() as session:
        plan_id = plans.submit_plan(session, plan, NOW, base_commits(plan, settings))
    with write_session() as session:
        dispatched = {d.key: d for d in reconcile_plans(session, [plan_id], registry(), NOW)}
    assert set(dispatched) == {"page", "api"}
    with write_session() as session:
        claimed = attempts.claim(session, dispatched["page"].task_pk, dispatched["page"].attempt, "w", 1, 60)
        assert claimed is not None
        prompt = runner._context(session, *claimed, settings).prompt

    assert prompt.startswith("# Task page: Build the login page")
    assert f"## The plan this task serves: auth\n{GOAL}" in prompt
    assert "## Tasks waiting on this one\n- review: Review the page ($title)" in prompt
    assert "## Tasks running beside this one (do not do their work)\n- api: Serve /login" in prompt
    assert "## About this repository:\nThe web app is built with htmx; $task_id stays as written." in prompt
    assert "```orch-followups" in prompt  # an anthropic agent may add follow-ups by its final message


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, embedded_redis_url: str, sqlite_url: str) -> Iterator[MessagesAPI]:
    use_broker(embedded_redis_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    from orch.settings import get_settings

    get_settings.cache_clear()
    with MessagesAPI(default=Reply(text="Done.", input_tokens=10, output_tokens=5)) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        yield server


def test_a_prompted_agent_on_a_real_worker_is_told_the_plan_it_serves(api: MessagesAPI, tmp_path: Path) -> None:
    """`hold` (a shell task) stays under way until the design prompt has been sent, so that prompt names it."""
    tasks: list[dict[str, Any]] = [
        {"id": "design", "title": "Design the JWT architecture", "executor": "anthropic"},
        {"id": "hold", "title": "Hold the database", "timeout": "60s",
         "command": "for i in $(seq 1 600); do [ -e go ] && exit 0; sleep 0.1; done; exit 1"},
        {"id": "build", "title": "Implement the endpoints", "after": ["design"], "executor": "anthropic"},
    ]  # fmt: skip
    workdir = tmp_path / "work"
    workdir.mkdir()
    plan = make_plan(tasks, name="auth", workdir=workdir, description=GOAL, defaults={"agent": "general-purpose"})
    with write_session() as session:
        plan_id = plans.submit_plan(session, plan, datetime.now(UTC))
    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False, queues=["agent.general-purpose"]):

        def design_prompt() -> list[str]:
            run_tick()
            return api.texts("Task design:")

        (design,) = wait_for(design_prompt, 30, "the design prompt")
        (workdir / "go").touch()
        drive_until_final(plan_id, 60)

    assert f"## The plan this task serves: auth\n{GOAL}" in design
    assert "## Tasks waiting on this one\n- build: Implement the endpoints" in design
    assert "## Tasks running beside this one (do not do their work)\n- hold: Hold the database" in design
    assert "```orch-followups" in design
    (build,) = api.texts("Task build:")
    assert "### design (general-purpose): Design the JWT architecture\nDone." in build
    assert "Tasks waiting on this one" not in build  # nothing waits on build (hold may still be under way)


def claimed_prompts(plan_id: str) -> dict[str, str]:
    from orch.settings import get_settings

    with write_session() as session:
        dispatched = reconcile_plans(session, [plan_id], registry(), NOW)
    prompts = {}
    for dispatch in dispatched:
        with write_session() as session:
            claimed = attempts.claim(session, dispatch.task_pk, dispatch.attempt, "w", 1, 60)
            assert claimed is not None
            prompts[dispatch.key] = runner._context(session, *claimed, get_settings()).prompt
    return prompts


def test_only_agents_answering_by_a_final_message_are_told_how_to_add_follow_ups(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orch.settings import get_settings

    tasks = [
        {"id": "agent", "title": "Write it", "executor": "anthropic"},
        {"id": "code", "title": "Sum it", "executor": "python", "call": "myagents:summarise"},
    ]
    prompts = claimed_prompts(submit(tasks, defaults={"agent": "general-purpose"}))
    assert "```orch-followups" in prompts["agent"]
    assert "Follow-up tasks" not in prompts["code"]  # a python task writes $ORCH_FOLLOWUPS instead
    assert f"## The plan this task serves: auth\n{GOAL}" in prompts["code"]  # the plan around it all the same

    monkeypatch.setenv("ORCH_FOLLOWUPS_PER_TASK", "0")
    get_settings.cache_clear()
    prompts = claimed_prompts(submit([tasks[0]], defaults={"agent": "general-purpose"}))
    assert "Follow-up tasks" not in prompts["agent"] and GOAL in prompts["agent"]


def test_a_task_as_deep_as_follow_ups_may_go_is_not_offered_them(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Everything a task at ORCH_FOLLOWUPS_DEPTH added would be refused, so its prompt does not offer follow-ups."""
    from orch.settings import get_settings

    monkeypatch.setenv("ORCH_FOLLOWUPS_DEPTH", "2")
    get_settings.cache_clear()
    tasks = [{"id": f"depth-{n}", "title": "Write it", "executor": "anthropic"} for n in range(3)]
    plan_id = submit(tasks, defaults={"agent": "general-purpose"})
    with write_session() as session:
        for key, pk in pks(plan_id).items():
            session.execute(update(TaskRow).where(TaskRow.pk == pk).values(depth=int(key[-1])))
    prompts = claimed_prompts(plan_id)
    assert "```orch-followups" in prompts["depth-0"] and "```orch-followups" in prompts["depth-1"]
    assert "Follow-up tasks" not in prompts["depth-2"] and GOAL in prompts["depth-2"]


def test_a_re_plan_attempt_builds_no_prompt_and_opens_no_log(sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-plan attempt runs no executor: the worker builds the task's agent prompt for it no more than it creates
    its log file (the planner's message is its own, workers.replanning)."""
    from orch.decisions.retry import Outcome
    from orch.records import AttemptResult
    from orch.settings import get_settings
    from orch.states import AttemptStatus

    def no_prompt(*args: object) -> str:
        raise AssertionError("a re-plan attempt's prompt was built")

    plan_id = submit(
        [{"id": "big", "title": "Do it all", "executor": "anthropic", "retries": 0, "on_failure": "replan"}],
        defaults={"agent": "general-purpose"},
    )
    settings = get_settings()
    with write_session() as session:
        (first,) = reconcile_plans(session, [plan_id], registry(), NOW)
    with write_session() as session:
        claimed = attempts.claim(session, first.task_pk, first.attempt, "w", 1, 60, now=NOW)
        assert claimed is not None
        failed = Outcome(TaskStatus.FAILED, AttemptStatus.FAILED, None, "retries exhausted")
        assert attempts.record_result(session, claimed[0], AttemptResult(False, error="no"), failed, NOW) is not None
    monkeypatch.setattr(runner, "_prompt", no_prompt)
    with write_session() as session:
        (replan,) = reconcile_plans(session, [plan_id], registry(), NOW)
    assert replan.queue == "agent.planner"
    with write_session() as session:
        claimed = attempts.claim(session, replan.task_pk, replan.attempt, "w", 1, 60, now=NOW)
        assert claimed is not None and claimed[1].replanning
        ctx = runner._context(session, *claimed, settings)
    assert ctx.prompt == "" and ctx.system_prompt == ""
    assert runner.open_attempt_log(settings.logs_dir, plan_id, claimed[1], replan.attempt) is None
    assert not (settings.logs_dir.resolve() / plan_id / f"big.{replan.attempt}.log").exists()
    # the task's own attempts have their log, as before
    assert runner.open_attempt_log(settings.logs_dir, plan_id, replace(claimed[1], replanning=False), 1)
