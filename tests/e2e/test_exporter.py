"""`orch exporter` as a real process, after `orch run` ran a plan with a failure and a retry: /metrics scraped
over HTTP and parsed with prometheus_client's parser, its figures equal to the store's."""

from __future__ import annotations

import re
import signal
import time
import urllib.request
from collections import Counter
from pathlib import Path

from orch.states import TaskStatus
from orch.store import plans
from orch.store.db import read_session
from tests.e2e.conftest import ORCH, Processes, orch_env, run_orch
from tests.helpers import wait_for
from tests.metrics_scrape import assert_attempts_match_store, by, matching, parse, silent_server, value

PLAN = """\
name: metered
defaults: {timeout: 1m}
tasks:
  - {id: setup, title: set up the workspace, agent: devops-engineer, command: "echo ready"}
  - id: flaky
    title: check the service health
    agent: observability
    after: [setup]
    retries: 2
    command: "if [ -f flaky.ran ]; then echo ok; else touch flaky.ran; echo not yet; exit 1; fi"
  - {id: broken, title: build the package, agent: backend-development, after: [setup], retries: 0, command: "exit 3"}
  - {id: ship, title: ship the package, agent: devops-engineer, after: [broken], command: "true"}
  - {id: docs, title: write the docs, agent: documentation-writer, executor: noop}
"""
CANARY = "hunter2-exporter-canary"


def get_metrics(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain")
        return str(response.read().decode())


def ready_scrape(url: str) -> str | None:
    """A scrape's text once the exporter has read the store's history (before, its store figures are absent)."""
    text = get_metrics(url)
    return text if value(parse(text), "orch_exporter_ready") == 1.0 else None


def test_the_exporter_reports_what_the_store_holds_after_orch_run(
    tmp_path: Path, store_url: str, redis_url: str, processes: Processes
) -> None:
    # PostgreSQL trusts local connections, so a password in the URL is accepted and ignored: it must not leak.
    database_url = store_url.replace("postgres@", f"postgres:{CANARY}@")
    env = orch_env(tmp_path, ORCH_DATABASE_URL=database_url, ORCH_RETRY_BACKOFF_BASE="0.2")
    (tmp_path / "metered.yaml").write_text(PLAN)
    ran = run_orch(["run", "metered.yaml"], tmp_path, env, timeout=180)
    assert ran.returncode == 1, ran.stdout + ran.stderr  # `broken` fails for good

    log = tmp_path / "exporter.log"
    exporter = processes.start([ORCH, "exporter", "--port", "0"], tmp_path, {**env, "ORCH_BROKER_URL": redis_url}, log)
    url = wait_for(lambda: re.search(r"serving (http://\S+/metrics)", log.read_text()), 60, "the exporter").group(1)
    text = wait_for(lambda: ready_scrape(url), 60, "the exporter to have read the store's history")
    samples = parse(text)

    with read_session() as session:
        plan = plans.find_plan(session, "metered")
        tasks = plans.plan_tasks(session, plan.id)
    assert value(samples, "orch_store_up") == 1.0 and value(samples, "orch_broker_up") == 1.0
    assert value(samples, "orch_plan_info", plan=plan.id, name="metered", status="failed") == 1.0
    states = Counter((t.agent, t.status.value) for t in tasks)
    for agent in {t.agent for t in tasks}:
        for state in TaskStatus:
            assert (
                value(samples, "orch_tasks", plan=plan.id, agent_type=agent, state=state.value)
                == states[(agent, state.value)]
            )
    assert states[("devops-engineer", "upstream_failed")] == 1  # `ship`, after `broken`

    assert_attempts_match_store(samples)
    assert by(samples, "orch_attempts_finished_total", "agent_type", "status")[("observability", "failed")] == 1
    assert by(samples, "orch_attempts_finished_total", "agent_type", "status")[("observability", "succeeded")] == 1
    failures = by(samples, "orch_attempt_failures_total", "agent_type", "failure_class")
    assert failures == {("observability", "exit_status"): 1.0, ("backend-development", "exit_status"): 1.0}
    assert value(samples, "celery_task_retried_total", name="orch.run_task", queue_name="agent.observability") == 1
    assert sum(matching(samples, "celery_task_failed_total").values()) == 2
    assert sum(matching(samples, "celery_task_succeeded_total").values()) == 3  # setup, flaky's retry, docs
    for (agent, status), count in by(samples, "orch_attempt_duration_seconds_count", "agent_type", "status").items():
        buckets = sorted(
            (float(le), v)
            for (a, s, le), v in by(
                samples, "orch_attempt_duration_seconds_bucket", "agent_type", "status", "le"
            ).items()
            if (a, s) == (agent, status)
        )
        counts = [v for _, v in buckets]
        assert counts == sorted(counts) and counts[-1] == count  # cumulative, ending at +Inf with the count
    assert all(v == 0 for v in matching(samples, "orch_queue_length").values())  # the run is over: nothing waits

    exporter.send_signal(signal.SIGTERM)
    assert exporter.wait(timeout=15) == 0
    assert CANARY not in text + log.read_text()


def test_the_exporter_listens_at_once_while_its_store_hangs(
    tmp_path: Path, redis_url: str, processes: Processes
) -> None:
    """The port opens before the store answers (a TCP liveness probe passes), and a scrape meanwhile answers in
    seconds: the exporter not ready, the store down, the broker's figures there."""
    log = tmp_path / "exporter.log"
    with silent_server() as port:
        database_url = f"postgresql+psycopg://orch:{CANARY}@127.0.0.1:{port}/orch"
        env = orch_env(tmp_path, ORCH_DATABASE_URL=database_url, ORCH_BROKER_URL=redis_url)
        exporter = processes.start([ORCH, "exporter", "--port", "0"], tmp_path, env, log)
        url = wait_for(lambda: re.search(r"serving (http://\S+/metrics)", log.read_text()), 30, "the port").group(1)
        started = time.monotonic()
        samples = parse(get_metrics(url))
        assert time.monotonic() - started < 8.0
    assert value(samples, "orch_exporter_ready") == 0.0 and value(samples, "orch_store_up") == 0.0
    assert value(samples, "orch_broker_up") == 1.0 and matching(samples, "orch_queue_length")
    exporter.send_signal(signal.SIGTERM)
    assert exporter.wait(timeout=15) == 0
    assert CANARY not in log.read_text()
