"""The real Claude Code CLI (npm `@anthropic-ai/claude-code`, installed by this test's set-up) run by `orch run`
against the loopback Messages API server: the scripted model makes the CLI write a file with its Write tool,
`verify:` checks it, the next task gets the handoff, and the plan's cost and tokens add up."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from orch.intake.prices import Usage, cost_usd, load_prices
from tests.e2e.conftest import REPO, orch_env, run_orch
from tests.fakes.messages_api import MessagesAPI, Reply

CLAUDE_PACKAGE = "@anthropic-ai/claude-code@~2.1"
CACHE = REPO / ".cache" / "claude-code"


@pytest.fixture(scope="session")
def claude_cli() -> Path:
    """The CLI, installed once into .cache/ with npm (the registry is reachable here and in CI)."""
    binary = CACHE / "node_modules" / ".bin" / "claude"
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None:
        message = "npm is not installed, so the Claude Code CLI cannot be"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    CACHE.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(CACHE), CLAUDE_PACKAGE],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if done.returncode != 0 or not binary.exists():
        message = f"npm install {CLAUDE_PACKAGE} failed: {done.stderr[-500:]}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return binary


def test_orch_runs_the_real_claude_cli_which_writes_a_verified_file(claude_cli: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    guide = "# Authentication\n\nTokens are JWTs signed with RS256.\n"
    routes = {
        "Task write-doc:": [
            Reply(text="", tool_use={"name": "Write", "input": {"file_path": str(work / "docs" / "auth.md"),
                                                                 "content": guide}},
                  input_tokens=500, output_tokens=50),
            Reply(text="Wrote docs/auth.md describing JWT authentication.", input_tokens=600, output_tokens=20),
        ],
        "Task review:": [Reply(text="The guide is accurate.", input_tokens=700, output_tokens=30)],
    }  # fmt: skip
    plan = tmp_path / "cli.yaml"
    plan.write_text(
        textwrap.dedent(
            f"""\
            name: cli-e2e
            workdir: {work}
            tasks:
              - id: write-doc
                title: Write the authentication guide
                agent: documentation-writer
                files: [docs/auth.md]
                scope: strict
                verify: grep -q JWT docs/auth.md
                retries: 0
              - id: review
                title: Review the authentication guide
                agent: documentation-writer
                after: [write-doc]
                retries: 0
            """
        )
    )
    home = tmp_path / "home"
    home.mkdir()
    with MessagesAPI(routes=routes, default=Reply(text="ok", input_tokens=1, output_tokens=1)) as api:
        env = orch_env(
            tmp_path,
            ORCH_CLAUDE_BIN=str(claude_cli),
            ANTHROPIC_BASE_URL=api.url,
            ANTHROPIC_API_KEY="sk-ant-dummy-e2e",
            CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
            HOME=str(home),  # no user settings or credentials of this machine
        )
        result = run_orch(["run", str(plan)], tmp_path, env, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        review_prompt = api.texts("Task review:")[0]
    assert (work / "docs" / "auth.md").read_text() == guide  # the CLI's Write tool wrote it
    assert "Wrote docs/auth.md describing JWT authentication." in review_prompt  # the handoff
    assert "Files changed: docs/auth.md" in review_prompt

    report = json.loads(run_orch(["status", "cli-e2e", "--json"], tmp_path, env).stdout)
    tasks = {t["id"]: t for t in report["tasks"]}
    assert tasks["write-doc"]["tokens"] == {"input": 1100, "output": 70, "cache_creation": 0, "cache_read": 0,
                                            "total": 1170}  # fmt: skip
    assert tasks["review"]["tokens"]["total"] == 730
    price = load_prices(REPO / "config")["claude-sonnet-4-6"]
    expected = cost_usd(Usage(1100, 70), price) + cost_usd(Usage(700, 30), price)
    assert report["plan"]["cost_usd"] == pytest.approx(expected, rel=0.01)  # the CLI's figures, summed
    assert report["plan"]["tokens"]["total"] == 1900
