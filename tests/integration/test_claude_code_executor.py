"""The `claude-code` executor with a fake `claude` (tests/fakes/fake_claude.py): results, limits, the prompt on
stdin (never in argv), and that no process of an attempt is ever left behind."""

from __future__ import annotations

import json
import resource
import secrets
from pathlib import Path
from typing import Any

import pytest

from orch.failures import FailureClass
from tests.helpers import attempt_context, fake_claude_wrapper, marked_processes, wait_for
from workers.executors.base import AttemptContext
from workers.executors.claude_code import ClaudeCodeExecutor, claude_arguments

MARKER = f"fake-claude-{secrets.token_hex(6)}"


@pytest.fixture
def fake_claude(tmp_path: Path) -> Path:
    # The pid file lies in the workdir: an agent writes nowhere else.
    (tmp_path / "work").mkdir()
    pids = tmp_path / "work" / ".pids"
    return fake_claude_wrapper(tmp_path / "bin" / "claude", FAKE_CLAUDE_PIDS=str(pids), FAKE_CLAUDE_MARKER=MARKER)


def context(
    tmp_path: Path,
    claude: Path,
    mode: str = "success",
    task: dict[str, Any] | None = None,
    agent: dict[str, Any] | None = None,
    settings: dict[str, Any] | None = None,
    **attempt: Any,
) -> AttemptContext:
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    return attempt_context(
        tmp_path,
        task={"key": "build", "title": "Build it", "timeout": 60.0, "agent": "backend-development",
              "executor": "claude-code", "workdir": str(workdir), **(task or {})},
        agent={"model": "claude-sonnet-4-6", "idle_timeout": 30.0, "max_turns": 7, "permission_mode": "acceptEdits",
               "allowed_tools": ("Read", "Write"), "disallowed_tools": ("WebFetch",), **(agent or {})},
        settings={"output_tail_bytes": 4096, "log_max_bytes": 1 << 20, "kill_grace_seconds": 0.5,
                  "claude_bin": str(claude), **(settings or {})},
        **{"prompt": f"Build the API FAKE:{mode}", "system_prompt": "You are the backend agent.",
           "secrets": {"ANTHROPIC_API_KEY": "sk-canary"},
           "masked": frozenset({"ANTHROPIC_API_KEY", "GITHUB_TOKEN"}), **attempt},
    )  # fmt: skip


def pids_left(tmp_path: Path) -> list[int]:
    """Processes of the fake CLI still alive anywhere on the host (found by its marker, whatever pid namespace
    they ran in)."""
    return marked_processes(MARKER)


def pid_lines(tmp_path: Path) -> list[str]:
    return (tmp_path / "work" / ".pids").read_text().split()


def test_a_successful_run_reports_result_usage_cost_and_model(tmp_path: Path, fake_claude: Path) -> None:
    ctx = context(tmp_path, fake_claude)
    result = ClaudeCodeExecutor().run(ctx)
    assert result.succeeded, result.error
    assert result.result == "did: Build the API FAKE:success"
    assert result.cost_usd == pytest.approx(0.0123)
    assert (result.usage.input_tokens, result.usage.output_tokens) == (1000, 200)
    assert (result.usage.cache_creation_tokens, result.usage.cache_read_tokens) == (30, 40)
    assert result.model == "claude-sonnet-4-6"
    init = json.loads(ctx.log_path.read_text().splitlines()[0])
    assert init["cwd"] == str(ctx.workdir)
    assert init["prompt_from"] == "stdin" and init["prompt_bytes"] == len(ctx.prompt.encode())
    args = init["args"]
    assert ctx.prompt not in args
    for flag, value in [
        ("--output-format", "stream-json"),
        ("--model", "claude-sonnet-4-6"),
        ("--max-turns", "7"),
        ("--permission-mode", "acceptEdits"),
        ("--allowedTools", "Read,Write"),
        ("--disallowedTools", "WebFetch"),
        ("--append-system-prompt", "You are the backend agent."),
    ]:
        assert args[args.index(flag) + 1] == value  # fmt: skip
    assert "--verbose" in args
    assert not pids_left(tmp_path)


def test_the_agent_gets_its_secrets_and_not_orchs_settings_or_others_secrets(
    tmp_path: Path, fake_claude: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCH_DATABASE_URL", "postgresql://orch:pw@db/orch")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp-not-for-this-type")
    result = ClaudeCodeExecutor().run(context(tmp_path, fake_claude, "env"))
    names = json.loads(result.result or "[]")
    assert "ANTHROPIC_API_KEY" in names and "ORCH_TASK_ID" in names
    assert "ORCH_DATABASE_URL" not in names and "GITHUB_TOKEN" not in names


def test_silence_past_the_idle_limit_kills_the_agent(tmp_path: Path, fake_claude: Path) -> None:
    result = ClaudeCodeExecutor().run(context(tmp_path, fake_claude, "hang", agent={"idle_timeout": 1.0}))
    assert result.failure_class == FailureClass.IDLE_TIMEOUT and "idle_timeout" in (result.error or "")
    assert not pids_left(tmp_path)


def test_an_agent_that_ignores_sigterm_and_forks_is_killed_whole_at_the_time_limit(
    tmp_path: Path, fake_claude: Path
) -> None:
    result = ClaudeCodeExecutor().run(context(tmp_path, fake_claude, "ignore-term", task={"timeout": 1.5}))
    assert result.failure_class == FailureClass.TIMEOUT
    assert len(pid_lines(tmp_path)) == 3  # the CLI and its two grandchildren
    wait_for(lambda: not pids_left(tmp_path), 5, "every process of the attempt to be gone")


def test_a_flood_of_output_is_capped_on_disk_and_in_memory(tmp_path: Path, fake_claude: Path) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    ctx = context(tmp_path, fake_claude, "flood", settings={"log_max_bytes": 1 << 20, "output_tail_bytes": 8192})
    result = ClaudeCodeExecutor().run(ctx)
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert result.succeeded and result.result == "flooded and done"  # 1 GiB went by, the result still counts
    assert ctx.log_path.stat().st_size < (1 << 20) + 200
    assert "truncated" in ctx.log_path.read_text(errors="replace")[-200:]
    assert len(result.output_tail) <= 8192
    assert grown_mib < 200, f"the executor's memory grew by {grown_mib:.0f} MiB for 1 GiB of output"
    assert not pids_left(tmp_path)


def test_an_exit_mid_stream_is_a_failure_that_says_so(tmp_path: Path, fake_claude: Path) -> None:
    result = ClaudeCodeExecutor().run(context(tmp_path, fake_claude, "exit-mid"))
    assert result.failure_class == FailureClass.EXIT_STATUS
    assert "ended without a result (exit status 3)" in (result.error or "")
    assert not pids_left(tmp_path)


def test_an_auth_error_from_the_cli_is_permanent(tmp_path: Path, fake_claude: Path) -> None:
    result = ClaudeCodeExecutor().run(context(tmp_path, fake_claude, "error"))
    assert result.failure_class == FailureClass.AUTH_ERROR and "Invalid API key" in (result.error or "")
    assert not pids_left(tmp_path)


def test_a_usage_limit_reports_the_wait_until_its_reset(tmp_path: Path, fake_claude: Path) -> None:
    result = ClaudeCodeExecutor().run(context(tmp_path, fake_claude, "usage-limit"))
    assert result.failure_class == FailureClass.USAGE_LIMIT
    assert result.retry_after is not None and 0 < result.retry_after <= 2
    assert not pids_left(tmp_path)


def test_a_missing_cli_is_a_clear_permanent_failure(tmp_path: Path) -> None:
    result = ClaudeCodeExecutor().run(context(tmp_path, tmp_path / "no-such-claude"))
    assert result.failure_class == FailureClass.EXECUTOR_UNAVAILABLE
    assert "npm install -g @anthropic-ai/claude-code" in (result.error or "")


def test_the_prompt_never_passes_through_a_shell_nor_argv(tmp_path: Path, fake_claude: Path) -> None:
    hostile = "$(touch pwned); `rm -rf /`; 'quoted' \"double\" FAKE:success"
    args = claude_arguments("claude", context(tmp_path, fake_claude, prompt=hostile))
    assert hostile not in args and args[args.index("-p") + 1].startswith("--")
    result = ClaudeCodeExecutor().run(context(tmp_path, fake_claude, prompt=hostile))
    assert result.succeeded and not (tmp_path / "work" / "pwned").exists()
    assert result.result == f"did: {hostile}"


def test_a_prompt_over_argvs_128_kib_limit_reaches_the_cli_whole(tmp_path: Path, fake_claude: Path) -> None:
    prompt = "é" * 100_000 + " FAKE:success"  # 200 KB of UTF-8: E2BIG as one argument (the review's finding 5)
    ctx = context(tmp_path, fake_claude, prompt=prompt)
    result = ClaudeCodeExecutor().run(ctx)
    assert result.succeeded, result.error
    init = json.loads(ctx.log_path.read_text().splitlines()[0])
    assert init["prompt_bytes"] == len(prompt.encode())


def test_error_results_are_classified() -> None:
    from workers.executors.claude_code import classify_error, seconds_until_reset

    assert classify_error({"api_error_status": 401, "result": "Invalid API key"}) == FailureClass.AUTH_ERROR
    assert classify_error({"api_error_status": 529, "result": "Overloaded"}) == FailureClass.OVERLOADED
    assert classify_error({"api_error_status": 503, "result": "Unavailable"}) == FailureClass.SERVER_ERROR
    assert classify_error({"api_error_status": 429, "result": "Rate limited"}) == FailureClass.RATE_LIMITED
    assert classify_error({"result": "Claude AI usage limit reached|1900000000"}) == FailureClass.USAGE_LIMIT
    assert classify_error({"subtype": "error_max_turns", "result": ""}) == FailureClass.AGENT_ERROR
    assert seconds_until_reset("Claude AI usage limit reached|1900000000", 1899999990.0) == 10.0
    assert seconds_until_reset("usage limit reached, resets at 1900000000", 1899999000.0) == 1000.0
    assert seconds_until_reset("usage limit reached", 0.0) is None
