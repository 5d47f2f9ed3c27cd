"""Plans of `claude-code` tasks through a real Celery worker, with the fake CLI: a usage limit with a reset time
pauses the agent type (its other tasks wait for the reset) and spends no retry."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml
from celery.contrib.testing.worker import start_worker

import workers.tasks  # noqa: F401  (registers orch.run_task)
from beat.tick import run_tick
from orch.celery import app, use_broker
from orch.states import PlanStatus
from orch.store import pauses, plans
from orch.store.db import read_session, write_session
from orch.views.status import PlanSnapshot
from tests.helpers import REPO, fake_claude_wrapper, make_plan, wait_for


@pytest.fixture
def claude_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, embedded_redis_url: str, sqlite_url: str
) -> Iterator[Path]:
    """The fake CLI as ORCH_CLAUDE_BIN, and a config whose backend-development type runs one task at a time."""
    config = tmp_path / "config"
    shutil.copytree(REPO / "config", config)
    agents = yaml.safe_load((config / "agents.yaml").read_text())
    for agent in agents["agent_types"]:
        if agent["name"] == "backend-development":
            agent["concurrency"] = 1
    (config / "agents.yaml").write_text(yaml.safe_dump(agents))
    (tmp_path / "state").mkdir()  # in the plan's workdir: the only folder an agent may write
    wrapper = fake_claude_wrapper(tmp_path / "bin" / "claude", FAKE_CLAUDE_STATE=str(tmp_path / "state"))
    monkeypatch.setenv("ORCH_CONFIG_DIR", str(config))
    monkeypatch.setenv("ORCH_CLAUDE_BIN", str(wrapper))
    from orch.settings import get_settings

    get_settings.cache_clear()
    use_broker(embedded_redis_url)
    yield config


def test_a_usage_limit_pauses_the_agent_type_until_its_reset(claude_env: Path, tmp_path: Path) -> None:
    tasks = [
        {"id": "login", "title": "Implement login FAKE:usage-limit-once", "priority": 10, "retries": 0},
        {"id": "logout", "title": "Implement logout FAKE:success", "retries": 0},
        {"id": "refresh", "title": "Implement refresh FAKE:success", "retries": 0},
    ]
    for task in tasks:
        task["agent"] = "backend-development"
    with write_session() as session:
        plan_id = plans.submit_plan(session, make_plan(tasks, name="limits", workdir=tmp_path), datetime.now(UTC))
    seen_pause = []
    with start_worker(
        app, pool="threads", concurrency=2, perform_ping_check=False, queues=["agent.backend-development"]
    ):

        def finished() -> bool:
            run_tick()
            with read_session() as session:
                snapshot = PlanSnapshot.load(session, plans.find_plan(session, plan_id), datetime.now(UTC))
            if snapshot.pauses:
                seen_pause.append(snapshot.as_json()["plan"]["paused_agents"])
            return snapshot.plan.status is not PlanStatus.RUNNING

        wait_for(finished, 60, "the plan to finish", interval=0.1)

    with read_session() as session:
        rows = {t.key: t for t in plans.plan_tasks(session, plan_id)}
        login = plans.task_attempts(session, rows["login"].pk)
        others = [plans.task_attempts(session, rows[k].pk) for k in ("logout", "refresh")]
        pause = pauses.active_pauses(session, datetime(2000, 1, 1, tzinfo=UTC))["backend-development"]
        plan = plans.get_plan(session, plan_id)
    assert plan is not None and plan.status is PlanStatus.SUCCEEDED
    # retries: 0, yet login ran twice: the usage limit spent no retry.
    assert [a.failure_class for a in login] == ["usage_limit", None]
    assert "usage limit reached" in (login[0].error or "")
    # The pause was visible in the status, and nothing of the type started before the reset.
    assert seen_pause and "backend-development" in seen_pause[0]
    assert all(attempts[0].started_at >= pause.until for attempts in others)
    assert login[1].started_at >= pause.until
