"""The `anthropic` executor: one streaming Messages API call through the anthropic SDK.

The SDK's own retries are off: orch's retry policy governs, and a provider's `retry-after` is honoured by it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import anthropic
import httpx2  # the anthropic SDK's HTTP client: mid-stream read errors surface as its exceptions

from orch.durations import format_duration
from orch.executors import ExecutorName
from orch.failures import FailureClass
from orch.intake.prices import Usage
from orch.records import AttemptResult
from workers.executors.base import AttemptContext
from workers.executors.output import OutputSink

API_KEY = "ANTHROPIC_API_KEY"
_SPEND_LIMIT_HINTS = ("spend limit", "spend_limit", "usage limit", "usage_limit", "credit balance")


class _Stopped(Exception):
    pass


class _DeadlineExceeded(Exception):
    pass


class AnthropicExecutor:
    name = ExecutorName.ANTHROPIC

    def run(self, ctx: AttemptContext) -> AttemptResult:
        key = ctx.secrets.get(API_KEY)
        if not key:
            return AttemptResult(
                False,
                failure_class=FailureClass.MISSING_CREDENTIALS,
                error=(
                    f"{API_KEY} is not set for agent type {ctx.agent.name!r} on worker {socket.gethostname()}: "
                    f"export it in the worker's environment and list it under `secrets:` of the type in "
                    f"config/agents.yaml"
                ),
            )
        ctx.log_path.parent.mkdir(parents=True, exist_ok=True)
        timeout = anthropic.Timeout(connect=30.0, read=ctx.agent.idle_timeout, write=60.0, pool=30.0)
        # Closed with the attempt: its pooled connection would otherwise stay open until the client is collected.
        with (
            ctx.log_path.open("wb", buffering=0) as log,
            anthropic.Anthropic(api_key=key, max_retries=0, timeout=timeout) as client,
        ):
            sink = OutputSink(log, ctx.settings.log_max_bytes, ctx.settings.output_tail_bytes, ctx.redactor())
            try:
                return self._call(ctx, client, sink)
            finally:
                sink.close()

    def _call(self, ctx: AttemptContext, client: anthropic.Anthropic, sink: OutputSink) -> AttemptResult:
        deadline = time.monotonic() + ctx.task.timeout
        common: dict[str, Any] = {"log_path": str(ctx.log_path), "model": ctx.agent.model}
        try:
            with client.messages.stream(
                model=ctx.agent.model,
                max_tokens=ctx.agent.max_tokens,
                system=ctx.system_prompt,
                messages=[{"role": "user", "content": ctx.prompt}],
            ) as stream:
                for event in stream:
                    if event.type == "text":
                        sink.write(event.text.encode())
                    elif event.type in ("message_start", "message_delta"):
                        ctx.control.report_usage(_usage(stream.current_message_snapshot.usage), ctx.agent.model)
                    if time.monotonic() > deadline:
                        raise _DeadlineExceeded
                    if ctx.control.stop_request is not None:
                        raise _Stopped
                final = stream.get_final_message()
        except _Stopped:
            stop = ctx.control.stop_request
            assert stop is not None
            usage = _usage(stream.current_message_snapshot.usage)
            return AttemptResult(
                False, failure_class=stop.failure_class, output_tail=sink.tail, usage=usage,
                error=f"{stop.message}; the stream was closed", **common,
            )  # fmt: skip
        except _DeadlineExceeded:
            return AttemptResult(
                False, failure_class=FailureClass.TIMEOUT, output_tail=sink.tail,
                error=f"timed out after {format_duration(ctx.task.timeout)}; the stream was closed", **common,
            )  # fmt: skip
        except (anthropic.APITimeoutError, httpx2.TimeoutException):
            return AttemptResult(
                False, failure_class=FailureClass.IDLE_TIMEOUT, output_tail=sink.tail,
                error=f"no response from the API for {format_duration(ctx.agent.idle_timeout)} (idle_timeout)",
                **common,
            )  # fmt: skip
        except (anthropic.APIConnectionError, httpx2.TransportError) as exc:
            return AttemptResult(
                False, failure_class=FailureClass.CONNECTION_ERROR, output_tail=sink.tail,
                error=f"cannot reach the Anthropic API: {exc.__cause__ or exc}", **common,
            )  # fmt: skip
        except anthropic.APIStatusError as exc:
            failure_class, retry_after = classify_status(exc)
            return AttemptResult(
                False, failure_class=failure_class, retry_after=retry_after, output_tail=sink.tail,
                error=describe_status(exc), **common,
            )  # fmt: skip
        text = "".join(block.text for block in final.content if block.type == "text")
        usage = _usage(final.usage)
        return AttemptResult(
            True, exit_code=0, output_tail=sink.tail, result=text, usage=usage,
            log_path=str(ctx.log_path), model=final.model or ctx.agent.model,
        )  # fmt: skip


def _usage(usage: anthropic.types.Usage) -> Usage:
    return Usage(
        input_tokens=usage.input_tokens or 0,
        output_tokens=usage.output_tokens or 0,
        cache_creation_tokens=usage.cache_creation_input_tokens or 0,
        cache_read_tokens=usage.cache_read_input_tokens or 0,
    )


def _error_body(exc: anthropic.APIStatusError) -> dict[str, Any]:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body)
    return error if isinstance(error, dict) else {}


def is_spend_limit(exc: anthropic.APIStatusError) -> bool:
    error = _error_body(exc)
    details = error.get("details") if isinstance(error.get("details"), dict) else {}
    code = str(getattr(exc, "error_code", "") or (details or {}).get("error_code", ""))
    text = f"{code} {error.get('message', '')} {type(exc).__name__}".lower()
    return any(hint in text for hint in _SPEND_LIMIT_HINTS) or "spendlimit" in text


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, moment.timestamp() - time.time())


def classify_status(exc: anthropic.APIStatusError) -> tuple[FailureClass, float | None]:
    status = exc.status_code
    if status == 429:
        if is_spend_limit(exc):
            return FailureClass.SPEND_LIMIT, None
        return FailureClass.RATE_LIMITED, retry_after_seconds(exc.response.headers)
    if status == 529:
        return FailureClass.OVERLOADED, retry_after_seconds(exc.response.headers)
    if status >= 500 or status in (408, 409):
        return FailureClass.SERVER_ERROR, retry_after_seconds(exc.response.headers)
    if status in (401, 403):
        return FailureClass.AUTH_ERROR, None
    if is_spend_limit(exc):
        return FailureClass.SPEND_LIMIT, None
    return FailureClass.BAD_REQUEST, None


def describe_status(exc: anthropic.APIStatusError) -> str:
    error = _error_body(exc)
    kind = error.get("type", "error")
    message = error.get("message") or exc.message
    return f"Anthropic API {exc.status_code} {kind}: {message}"
