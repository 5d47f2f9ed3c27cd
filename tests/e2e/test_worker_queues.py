"""A worker started with a typo'd `-Q` (or `-X`) queue name (issue 14, point 10): one line naming the name, the
closest known queue and the known ones, exit 2, before it connects to anything. Before: Celery's traceback, ending
with advice to turn on task_create_missing_queues, which orch turns off on purpose."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orch.intake.agents import load_agents
from tests.conftest import CONFIG_DIR
from tests.e2e.conftest import orch_env

QUEUES = ", ".join(load_agents(CONFIG_DIR).queues)


@pytest.mark.parametrize(
    ("option", "names", "typo", "close"),
    [
        ("-Q", "agent.bakend-developer", "agent.bakend-developer", "agent.backend-development"),
        ("-Q", "agent.devops-engineer,agent.testing-specialst", "agent.testing-specialst", "agent.testing-specialist"),
        ("-X", "agent.docs", "agent.docs", None),
    ],
)
def test_a_worker_with_an_unknown_queue_name_refuses_in_one_line(
    option: str, names: str, typo: str, close: str | None, tmp_path: Path
) -> None:
    env = orch_env(tmp_path, ORCH_BROKER_URL="redis://127.0.0.1:1/0")  # never reached: it refuses first
    worker = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "orch", "worker", option, names, "--without-gossip", "-c", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert worker.returncode == 2, worker.stderr
    hint = f"did you mean {close}? " if close else ""
    assert worker.stderr.splitlines() == [
        f"orch: celery worker {option} {typo}: no such queue ({hint}the agent types' queues: {QUEUES})"
    ], worker.stderr
    assert "task_create_missing_queues" not in worker.stderr + worker.stdout
