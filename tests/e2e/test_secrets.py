"""A canary secret, printed by agents on stdout, stderr, in a failure and in a model's reply, reaches no sink:
not the store, not the attempt logs, not the worker's log, not `orch run`'s or `orch status`'s output."""

from __future__ import annotations

import textwrap
from pathlib import Path

from tests.e2e.conftest import orch_env, run_orch
from tests.fakes.messages_api import MessagesAPI, Reply

CANARY = "sk-ant-CANARY-3f9a1c7e55d2"


def test_a_canary_secret_reaches_no_sink(tmp_path: Path) -> None:
    plan = tmp_path / "leaky.yaml"
    plan.write_text(
        textwrap.dedent(
            """\
            name: leaky
            tasks:
              - id: shout
                title: print the key everywhere
                agent: general-purpose
                retries: 1
                command: |
                  echo "stdout key=$ANTHROPIC_API_KEY"
                  echo "stderr key=$ANTHROPIC_API_KEY" >&2
                  if [ "$ORCH_ATTEMPT" -lt 2 ]; then echo "failing with $ANTHROPIC_API_KEY"; exit 1; fi
              - id: echo-model
                title: ask the model
                agent: general-purpose
                executor: anthropic
            """
        )
    )
    with MessagesAPI(default=Reply(text=f"Your key is {CANARY}, keep it safe.")) as api:
        env = orch_env(tmp_path, ANTHROPIC_API_KEY=CANARY, ANTHROPIC_BASE_URL=api.url, ORCH_RETRY_BACKOFF_BASE="0.2")
        run = run_orch(["run", str(plan)], tmp_path, env, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
    status = run_orch(["status", "leaky", "--json"], tmp_path, env)
    assert "[redacted ANTHROPIC_API_KEY]" in status.stdout or "redacted" in run.stdout + run.stderr
    for text, where in [
        (run.stdout, "orch run stdout"),
        (run.stderr, "orch run stderr"),
        (status.stdout, "orch status --json"),
    ]:
        assert CANARY not in text, f"the secret leaked into {where}"  # fmt: skip
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "leaky.yaml"]
    assert any(p.suffix == ".log" for p in files) and any(p.name == "orch.db" for p in files)
    for path in files:
        assert CANARY.encode() not in path.read_bytes(), f"the secret leaked into {path}"
    logs = "".join(p.read_text(errors="replace") for p in files if p.suffix == ".log" and "shout" in p.name)
    assert "stdout key=[redacted ANTHROPIC_API_KEY]" in logs and "stderr key=[redacted ANTHROPIC_API_KEY]" in logs
