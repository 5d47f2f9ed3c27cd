"""Plans of `anthropic` tasks through a real Celery worker: handoffs in prompts, retry-after, permanent failures,
tokens and cost per task and plan, and the API key never stored."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker

import workers.tasks  # noqa: F401  (registers orch.run_task)
from orch.celery import app, use_broker
from orch.intake.prices import Usage, cost_usd, load_prices
from orch.store import plans
from orch.store.db import read_session, write_session
from orch.views.status import PlanSnapshot
from tests.fakes.messages_api import MessagesAPI, Reply
from tests.helpers import REPO, drive_until_final, make_plan

KEY = "sk-ant-canary-7f3a9c"
QUEUES = ["agent.security-specialist", "agent.backend-development", "agent.documentation-writer",
          "agent.general-purpose"]  # fmt: skip


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch, embedded_redis_url: str, sqlite_url: str) -> Iterator[MessagesAPI]:
    use_broker(embedded_redis_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("ORCH_RETRY_BACKOFF_BASE", "0.2")
    from orch.settings import get_settings

    get_settings.cache_clear()
    routes = {
        "Task design:": [Reply(text="Design: RS256 JWTs, 15 minute expiry, refresh rotation.", input_tokens=1000,
                               output_tokens=200)],
        "Task build:": [Reply(text="Built /login and /refresh.", input_tokens=2000, output_tokens=400,
                              cache_read_tokens=500)],
        "Task docs:": [Reply.error(429, "rate_limit_error", "Rate limited", headers={"retry-after": "2"}),
                       Reply(text="Wrote docs/auth.md.", input_tokens=300, output_tokens=100)],
        "Task audit:": [Reply.error(401, "authentication_error", "invalid x-api-key")],
    }  # fmt: skip
    with MessagesAPI(routes=routes) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        yield server


def test_an_agent_plan_hands_off_retries_and_accounts_for_cost(api: MessagesAPI, tmp_path: Path) -> None:
    tasks: list[dict[str, Any]] = [
        {"id": "design", "title": "Design the JWT architecture", "agent": "security-specialist"},
        {"id": "build", "title": "Implement the endpoints", "agent": "backend-development", "after": ["design"],
         "success": "login and refresh work", "files": ["server/auth.py"]},
        {"id": "docs", "title": "Document the auth flow", "agent": "documentation-writer", "after": ["build"]},
        {"id": "audit", "title": "Audit the secrets handling", "agent": "general-purpose"},
    ]  # fmt: skip
    plan = make_plan(tasks, name="agents", workdir=tmp_path, defaults={"executor": "anthropic", "retries": 2})
    with write_session() as session:
        plan_id = plans.submit_plan(session, plan, datetime.now(UTC))
    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False, queues=QUEUES):
        drive_until_final(plan_id, 60)

    with read_session() as session:
        snapshot = PlanSnapshot.load(session, plans.find_plan(session, plan_id), datetime.now(UTC))
        tasks_by_key = {t.key: t for t in snapshot.tasks}
        docs_attempts = plans.task_attempts(session, tasks_by_key["docs"].pk)
    report = snapshot.as_json()
    status = {t["id"]: t for t in report["tasks"]}
    assert report["plan"]["status"] == "failed"  # audit failed for good
    assert [status[k]["status"] for k in ("design", "build", "docs")] == ["succeeded"] * 3

    # A 401 is permanent: failed at once, one attempt, the provider's message kept.
    assert status["audit"]["status"] == "failed" and status["audit"]["attempts"] == 1
    assert "401 authentication_error: invalid x-api-key" in status["audit"]["error"]

    # The handoff: build's prompt carries what design produced; and its own success criteria and files.
    (build_prompt,) = api.texts("Task build:")
    assert "Design: RS256 JWTs, 15 minute expiry, refresh rotation." in build_prompt
    assert "login and refresh work" in build_prompt and "server/auth.py" in build_prompt

    # A 429 waits at least retry-after, and the next prompt says why the last attempt failed.
    first, second = docs_attempts
    assert first.failure_class == "rate_limited" and second.status == "succeeded"
    assert first.finished_at is not None
    assert (second.started_at - first.finished_at).total_seconds() >= 2.0
    assert "previous attempt (1) failed" in api.texts("Task docs:")[1] and "429" in api.texts("Task docs:")[1]

    # Tokens and cost per task add up to the plan's, priced from config/prices.yaml.
    price = load_prices(REPO / "config")["claude-sonnet-4-6"]
    assert status["design"]["tokens"]["total"] == 1200
    assert status["build"]["tokens"] == {"input": 2000, "output": 400, "cache_creation": 0, "cache_read": 500,
                                         "total": 2900}  # fmt: skip
    expected = cost_usd(Usage(1000, 200), price) + cost_usd(Usage(2000, 400, 0, 500), price)
    expected += cost_usd(Usage(300, 100), price)
    assert status["design"]["cost_usd"] == pytest.approx(cost_usd(Usage(1000, 200), price))
    assert report["plan"]["cost_usd"] == pytest.approx(expected)
    assert report["plan"]["tokens"]["total"] == 1200 + 2900 + 400

    # The API key reached the provider, and nowhere else: not the store, not the logs.
    db_file = tmp_path / ".orch" / "store.db"
    for path in [db_file, *db_file.parent.glob("store.db*"), *(tmp_path / ".orch").rglob("*")]:
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), f"the API key leaked into {path}"
