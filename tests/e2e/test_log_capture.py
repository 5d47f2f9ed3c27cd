"""Everything `orch run` (the CLI, its worker and the beat tick in it) writes, with an API key in the environment
and passwords in the database and broker URLs: no secret anywhere, JSON lines that parse, and the lines about
a task carry its plan_id, task and attempt."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

from tests.e2e.conftest import orch_env, run_orch

API_KEY = "sk-ant-LOGCANARY-9d2f61b7a0c4"
DB_PASSWORD = "Db-Canary-Pass-5a7e"
BROKER_PASSWORD = "Broker-Canary-Pass-3c9b"
SECRETS = (API_KEY, DB_PASSWORD, BROKER_PASSWORD)
# Celery's own log format, "[2026-11-21 10:00:00,000: INFO/MainProcess] ...": none may bypass orch's handler.
CELERY_FORMAT = re.compile(r"^\[\d{4}-\d\d-\d\d [\d:,]+: [A-Z]+/")

PLAN = """\
name: logged
tasks:
  - id: leak
    title: print the key and fail once
    agent: general-purpose
    retries: 1
    command: |
      echo "stdout key=$ANTHROPIC_API_KEY"
      echo "stderr key=$ANTHROPIC_API_KEY" >&2
      echo "read from a config file: postgresql://postgres:{db_password}@db/orch redis://:{broker_password}@redis"
      if [ "$ORCH_ATTEMPT" -lt 2 ]; then echo "failing with $ANTHROPIC_API_KEY {db_password}"; exit 1; fi
  - id: after-leak
    title: runs after it
    agent: documentation-writer
    after: [leak]
    command: "true"
  - id: alone
    title: runs alone
    agent: testing-specialist
    command: "true"
"""


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_no_secret_in_anything_orch_run_writes_and_task_lines_carry_their_ids(
    postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    plan = tmp_path / "logged.yaml"
    plan.write_text(textwrap.dedent(PLAN).format(db_password=DB_PASSWORD, broker_password=BROKER_PASSWORD))
    database_url = postgres_url.replace("postgresql+psycopg://postgres@", f"postgresql://postgres:{DB_PASSWORD}@")
    # Redis here has no password; redis-py then ignores the one it is given, so the URL still works.
    broker_url = redis_url.replace("redis://", f"redis://:{BROKER_PASSWORD}@")
    env = orch_env(
        tmp_path,
        ANTHROPIC_API_KEY=API_KEY,
        ORCH_DATABASE_URL=database_url,
        ORCH_BROKER_URL=broker_url,
        ORCH_LOG_LEVEL="DEBUG",
        ORCH_RETRY_BACKOFF_BASE="0.2",
    )
    run = run_orch(["run", str(plan)], tmp_path, env, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    status = run_orch(["status", "logged", "--json"], tmp_path, env)
    assert status.returncode == 0, status.stderr
    plan_id = json.loads(status.stdout)["plan"]["id"]

    files = [p for p in (tmp_path / ".orch").rglob("*") if p.is_file()]
    worker_logs = [p for p in files if p.name.startswith("worker-")]
    assert len(worker_logs) == 1 and any(p.name == "leak.1.log" for p in files), files
    outputs = {"orch run stdout": run.stdout, "orch run stderr": run.stderr, "orch status": status.stdout}
    outputs.update({str(p): p.read_text(errors="replace") for p in files})
    for where, text in outputs.items():
        for secret in SECRETS:
            assert secret not in text, f"a secret leaked into {where}"

    worker_log = worker_logs[0].read_text()
    assert not [line for line in worker_log.splitlines() if CELERY_FORMAT.match(line)], "a line bypassed orch's handler"
    entries = json_lines(worker_log)  # every line that starts like JSON parses
    assert len(entries) > 20
    assert all({"event", "level", "timestamp", "logger"} <= entry.keys() for entry in entries)

    about_tasks = [entry for entry in entries if "task" in entry]
    assert all(entry["plan_id"] == plan_id and isinstance(entry["attempt"], int) for entry in about_tasks)
    started = {(e["task"], e["attempt"]) for e in about_tasks if e["event"] == "attempt started"}
    assert started == {("leak", 1), ("leak", 2), ("after-leak", 1), ("alone", 1)}
    finished = {(e["task"], e["attempt"]): e for e in about_tasks if e["event"] == "attempt finished"}
    assert "[redacted ANTHROPIC_API_KEY] [redacted ORCH_DATABASE_URL]" in str(finished[("leak", 1)]["error"])
    loggers = {entry["logger"] for entry in about_tasks}
    # Celery's own line about a task's end, and the dispatcher's line about sending it, carry the ids too.
    assert {"celery.app.trace", "orch.dispatch.reconcile", "workers.runner"} <= loggers, loggers
    succeeded = [e for e in about_tasks if e["logger"] == "celery.app.trace" and "succeeded in" in e["event"]]
    assert {(e["task"], e["attempt"]) for e in succeeded} == started
