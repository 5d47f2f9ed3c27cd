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

MAX_SERVER_MESSAGE = 300  # characters of a server's error message quoted (an HTML 500 page is not echoed whole)
CUT_OFF = "max_tokens"  # the stop reason of an answer cut off at the call's max_tokens
REFUSED = "refusal"


class ModelCallFailed(OrchError):
    """The Messages API could not be reached or refused the call; `retryable`: a later call may succeed;
    `stop_reason`: the answer's, when it came and stopped short (max_tokens, refusal)."""

    def __init__(
        self, message: str, *, retryable: bool, status: int | None = None, stop_reason: str | None = None
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.stop_reason = stop_reason


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
    except (anthropic.APIResponseValidationError, ValueError, RecursionError) as exc:  # a 200 whose body is no JSON
        raise _not_a_message(type(exc).__name__) from None
    try:
        return _tool_answer(message, name, access)
    except (AttributeError, TypeError, ValueError, KeyError, RecursionError) as exc:
        raise _not_a_message(type(exc).__name__) from None


def _tool_answer(message: Any, name: str, access: ModelAccess) -> ToolAnswer:
    """The forced call's input from a Messages API message; ModelCallFailed when the answer stopped short. Reads a
    malformed message with AttributeError, TypeError or ValueError (the caller's to report)."""
    stop_reason = message.stop_reason
    if stop_reason == CUT_OFF:
        raise ModelCallFailed(
            f"the answer was cut off at max_tokens ({access.max_tokens:,}) before it was complete",
            retryable=False,
            stop_reason=CUT_OFF,
        )
    if stop_reason == REFUSED:
        raise ModelCallFailed("the model refused to answer (stop reason refusal)", retryable=False, stop_reason=REFUSED)
    usage = Usage(
        input_tokens=_count(message.usage.input_tokens),
        output_tokens=_count(message.usage.output_tokens),
        cache_creation_tokens=_count(message.usage.cache_creation_input_tokens),
        cache_read_tokens=_count(message.usage.cache_read_input_tokens),
    )
    if not isinstance(message.content, list):
        raise TypeError("content is not a list")
    for block in message.content:
        if block.type == "tool_use" and block.name == name and isinstance(block.input, dict):
            return ToolAnswer(block.input, usage, str(message.model or access.model), str(block.id))
    raise ModelCallFailed(
        f"the model answered without calling {name} (stop reason {_clip(str(stop_reason))}); a call that forces the "
        "tool always gets one, so the endpoint is not the Messages API it claims to be",
        retryable=False,
    )


def _count(value: Any) -> int:
    """A token count of the usage (None: not reported, 0); TypeError for anything but a whole number."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("a token count is not a number")
    return value


def _not_a_message(what: str) -> ModelCallFailed:
    return ModelCallFailed(
        f"the endpoint's answer is not a Messages API message ({what} reading it): is ANTHROPIC_BASE_URL the "
        "Messages API?",
        retryable=False,
    )


def _clip(text: str, limit: int = MAX_SERVER_MESSAGE) -> str:
    """A server's text on one line, at most `limit` characters (the caller shows it inert)."""
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= limit else one_line[:limit] + "…"


def _describe(exc: anthropic.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    error = body.get("error", body)
    error = error if isinstance(error, dict) else {}
    kind, said = error.get("type", "error"), error.get("message") or exc.message
    return f"Anthropic API {exc.status_code} {_clip(str(kind), 60)}: {_clip(str(said))}"
