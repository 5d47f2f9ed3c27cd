"""One Messages API call whose answer is a forced tool call (`tool_choice: {"type": "tool", "name": …}`): how a
planner submits a plan, and a re-plan its replacement. The caller validates the tool's input; this only fetches it.

The SDK's own retries are off: a planner's caller decides what a failure means (`orch plan` reports it, a re-plan
attempt retries by orch's policy).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import anthropic

from orch.errors import OrchError
from orch.intake.prices import Usage


class ModelCallFailed(OrchError):
    """The Messages API could not be reached or refused the call; `retryable`: a later call may succeed."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


@dataclass(frozen=True)
class ToolAnswer:
    """The forced tool call's input (not validated), and what the call cost."""

    input: Mapping[str, Any]
    usage: Usage
    model: str
    tool_use_id: str = ""  # the call's id: a reply to it (a tool_result) names it


@dataclass(frozen=True)
class ModelAccess:
    """How to reach the model: the key never leaves this process (no argv, no store, no log)."""

    api_key: str
    model: str
    max_tokens: int
    timeout: float = 600.0
    base_url: str | None = None  # None: the SDK's own (ANTHROPIC_BASE_URL, else Anthropic's)


def forced_tool_call(
    access: ModelAccess, system: str, messages: Sequence[Mapping[str, Any]], tool: Mapping[str, Any]
) -> ToolAnswer:
    """Call the model, forced to answer with `tool`; raises ModelCallFailed naming what went wrong."""
    name = str(tool["name"])
    try:
        with anthropic.Anthropic(
            api_key=access.api_key, base_url=access.base_url, max_retries=0, timeout=access.timeout
        ) as client:
            message = client.messages.create(
                model=access.model,
                max_tokens=access.max_tokens,
                system=system,
                messages=cast(Any, list(messages)),
                tools=cast(Any, [dict(tool)]),
                tool_choice={"type": "tool", "name": name},
            )
    except anthropic.APIStatusError as exc:
        status = exc.status_code
        retryable = status in (408, 409, 429, 529) or status >= 500
        raise ModelCallFailed(_describe(exc), retryable=retryable, status=status) from None
    except (anthropic.APIConnectionError, anthropic.APITimeoutError) as exc:
        raise ModelCallFailed(f"cannot reach the Anthropic API: {exc.__cause__ or exc}", retryable=True) from None
    usage = Usage(
        input_tokens=message.usage.input_tokens or 0,
        output_tokens=message.usage.output_tokens or 0,
        cache_creation_tokens=message.usage.cache_creation_input_tokens or 0,
        cache_read_tokens=message.usage.cache_read_input_tokens or 0,
    )
    for block in message.content:
        if block.type == "tool_use" and block.name == name and isinstance(block.input, dict):
            return ToolAnswer(block.input, usage, message.model or access.model, block.id)
    raise ModelCallFailed(
        f"the model answered without calling {name} (stop reason {message.stop_reason}); a call that forces the "
        "tool always gets one, so the endpoint is not the Messages API it claims to be",
        retryable=False,
    )


def _describe(exc: anthropic.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body)
    error = error if isinstance(error, dict) else {}
    return f"Anthropic API {exc.status_code} {error.get('type', 'error')}: {error.get('message') or exc.message}"
