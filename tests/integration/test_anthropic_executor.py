"""The `anthropic` executor against a loopback Messages API server: results, usage, and every failure class."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orch.failures import FailureClass
from tests.fakes.messages_api import MessagesAPI, Reply
from tests.helpers import attempt_context
from workers.executors.anthropic_api import AnthropicExecutor
from workers.executors.base import AttemptContext

KEY = "sk-ant-test-canary-0001"


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[MessagesAPI]:
    with MessagesAPI() as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        yield server


def context(
    tmp_path: Path, task: dict[str, Any] | None = None, agent: dict[str, Any] | None = None, **attempt: Any
) -> AttemptContext:
    return attempt_context(
        tmp_path,
        task={"key": "design", "title": "Design it", "timeout": 30.0, "agent": "security-specialist",
              "executor": "anthropic", **(task or {})},
        agent={"model": "claude-sonnet-4-6", "max_tokens": 1234, "idle_timeout": 10.0, **(agent or {})},
        settings={"output_tail_bytes": 4096, "log_max_bytes": 1 << 20, "kill_grace_seconds": 1.0},
        **{"secrets": {"ANTHROPIC_API_KEY": KEY}, "prompt": "Design the JWT flow.",
           "system_prompt": "You are careful.", **attempt},
    )  # fmt: skip


def test_a_streamed_reply_becomes_the_result_with_its_usage(api: MessagesAPI, tmp_path: Path) -> None:
    api.add(Reply(text="Use short-lived JWTs with rotation.", input_tokens=321, output_tokens=45,
                  cache_creation_tokens=7, cache_read_tokens=11))  # fmt: skip
    ctx = context(tmp_path)
    result = AnthropicExecutor().run(ctx)
    assert result.succeeded, result.error
    assert result.result == "Use short-lived JWTs with rotation."
    assert (result.usage.input_tokens, result.usage.output_tokens) == (321, 45)
    assert (result.usage.cache_creation_tokens, result.usage.cache_read_tokens) == (7, 11)
    assert result.model == "claude-sonnet-4-6"
    assert ctx.log_path.read_text() == "Use short-lived JWTs with rotation."
    (request,) = api.requests
    assert request.body["model"] == "claude-sonnet-4-6" and request.body["max_tokens"] == 1234
    assert request.body["system"] == "You are careful." and request.body["stream"] is True
    assert request.body["messages"] == [{"role": "user", "content": "Design the JWT flow."}]
    assert KEY in (
        request.headers.get("x-api-key", ""),
        request.headers.get("authorization", "").removeprefix("Bearer "),
    )


@pytest.mark.parametrize(
    ("reply", "failure_class", "retry_after"),
    [
        (Reply.error(429, "rate_limit_error", "slow down", headers={"retry-after": "7"}), FailureClass.RATE_LIMITED, 7),
        (
            Reply.error(
                429,
                "rate_limit_error",
                "Your organization has reached its monthly spend limit",
                error_code="enforced_spend_limit_reached",
            ),
            FailureClass.SPEND_LIMIT,
            None,
        ),
        (Reply.error(529, "overloaded_error", "Overloaded"), FailureClass.OVERLOADED, None),
        (Reply.error(500, "api_error", "Internal server error"), FailureClass.SERVER_ERROR, None),
        (Reply.error(401, "authentication_error", "invalid x-api-key"), FailureClass.AUTH_ERROR, None),
        (Reply.error(400, "invalid_request_error", "max_tokens: too large"), FailureClass.BAD_REQUEST, None),
        (Reply.error(400, "invalid_request_error", "Your credit balance is too low"), FailureClass.SPEND_LIMIT, None),
    ],
)
def test_provider_errors_are_classified(
    api: MessagesAPI, tmp_path: Path, reply: Reply, failure_class: FailureClass, retry_after: float | None
) -> None:
    api.add(reply)
    result = AnthropicExecutor().run(context(tmp_path))
    assert not result.succeeded
    assert result.failure_class == failure_class
    assert result.retry_after == retry_after
    assert str(reply.status) in (result.error or "") and reply.error_message in (result.error or "")
    assert len(api.requests) == 1  # the SDK's own retries are off: orch's policy governs


def test_a_stream_that_goes_quiet_hits_the_idle_limit(api: MessagesAPI, tmp_path: Path) -> None:
    api.add(Reply(text="x" * 64, event_delay=1.5))
    result = AnthropicExecutor().run(context(tmp_path, agent={"idle_timeout": 0.5}))
    assert result.failure_class == FailureClass.IDLE_TIMEOUT and "idle_timeout" in (result.error or "")


def test_a_slow_but_steady_stream_hits_the_task_time_limit(api: MessagesAPI, tmp_path: Path) -> None:
    api.add(Reply(text="y" * 400, event_delay=0.2))
    result = AnthropicExecutor().run(context(tmp_path, task={"timeout": 1.0}))
    assert result.failure_class == FailureClass.TIMEOUT
    assert result.output_tail.startswith("y")  # what streamed before the limit is kept


def test_a_missing_key_is_a_clear_permanent_failure(api: MessagesAPI, tmp_path: Path) -> None:
    result = AnthropicExecutor().run(context(tmp_path, secrets={}))
    assert result.failure_class == FailureClass.MISSING_CREDENTIALS
    assert "ANTHROPIC_API_KEY is not set" in (result.error or "") and "security-specialist" in (result.error or "")
    assert api.requests == []


def test_an_unreachable_api_is_a_connection_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    result = AnthropicExecutor().run(context(tmp_path))
    assert result.failure_class == FailureClass.CONNECTION_ERROR
