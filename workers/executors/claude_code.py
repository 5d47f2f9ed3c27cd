"""The `claude-code` executor: the Claude Code CLI run non-interactively in the task's workspace.

`claude -p --output-format stream-json --verbose` prints one JSON object per line as it works; any line (stdout or
stderr) counts as progress. The final `{"type": "result"}` line carries the outcome, the cost and the usage. The
prompt is the CLI's stdin: a 0600 file in the attempt's own folder, never an argument (argv is visible to every
local user in `ps`, and one argument is capped at 128 KiB). A regular file ends, so the CLI does not block on it as
it does on an open pipe. The CLI runs in its own process group, isolated as workers.sandbox decides; the task's
timeout and the agent type's idle limit both end the whole group (SIGTERM, grace, SIGKILL).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from orch.durations import format_duration
from orch.executors import ExecutorName
from orch.failures import FailureClass
from orch.intake.prices import Usage
from orch.records import AttemptResult
from orch.services.isolation import absolute_path
from workers.executors.base import AttemptContext, with_scratch
from workers.executors.output import OutputSink
from workers.executors.shell import ISOLATION_ERRORS, describe_exit, isolation_failure, last_line
from workers.sandbox.launch import start_agent
from workers.supervision import end_agent

MAX_LINE_BYTES = 4 * 1024 * 1024  # a longer line is cut (and then is not JSON): memory stays bounded
_QUEUED_LINES = 16  # at most this many lines wait between the readers and the executor
_LIMIT = re.compile(r"usage limit|limit reached|rate limit", re.IGNORECASE)
_RESET_EPOCH = re.compile(r"(?:\||resets? at\s*)(\d{10})\b", re.IGNORECASE)


def claude_arguments(binary: str, ctx: AttemptContext) -> list[str]:
    """The CLI's arguments: options from the agent type only (the prompt comes on stdin)."""
    args = [
        binary, "-p",
        "--output-format", "stream-json", "--verbose",
        "--model", ctx.agent.model,
        "--max-turns", str(ctx.agent.max_turns),
        "--permission-mode", ctx.agent.permission_mode,
    ]  # fmt: skip
    if ctx.system_prompt:
        args += ["--append-system-prompt", ctx.system_prompt]
    if ctx.agent.allowed_tools:
        args += ["--allowedTools", ",".join(ctx.agent.allowed_tools)]
    if ctx.agent.disallowed_tools:
        args += ["--disallowedTools", ",".join(ctx.agent.disallowed_tools)]
    return args


@dataclass
class StreamState:
    """What the CLI's output has told us so far."""

    final: dict[str, Any] | None = None
    model: str | None = None
    lines: int = 0
    last_activity: float = field(default_factory=time.monotonic)
    usage_by_message: dict[str, Usage] = field(default_factory=dict)  # one API response's usage, by its id

    def take(self, line: bytes) -> bool:
        """Note one output line; True when it told us more of the usage so far."""
        self.lines += 1
        self.last_activity = time.monotonic()
        text = line.strip()
        if not text.startswith(b"{"):
            return False
        try:
            message = json.loads(text)
        except ValueError:
            return False
        if not isinstance(message, dict):
            return False
        if message.get("type") == "result":
            self.final = message
        elif message.get("type") == "system" and isinstance(message.get("model"), str):
            self.model = message["model"]
        elif message.get("type") == "assistant" and isinstance(message.get("message"), dict):
            # Each content block of a response repeats that response's usage: keep one per response id.
            body = message["message"]
            if isinstance(body.get("usage"), dict):
                self.usage_by_message[str(body.get("id", len(self.usage_by_message)))] = _usage(body)
                return True
        return False

    def usage_so_far(self) -> Usage:
        return sum(self.usage_by_message.values(), Usage())


class ClaudeCodeExecutor:
    name = ExecutorName.CLAUDE_CODE

    def run(self, ctx: AttemptContext) -> AttemptResult:
        claude_bin = ctx.settings.claude_bin
        found = shutil.which(claude_bin, path=absolute_path(os.environ.get("PATH")))
        binary = os.path.realpath(found) if found else None  # the file itself: a link's folder may be hidden
        if binary is None:
            return AttemptResult(
                False,
                failure_class=FailureClass.EXECUTOR_UNAVAILABLE,
                error=(
                    f"the Claude Code CLI ({claude_bin!r}) is not installed on worker {socket.gethostname()}: "
                    f"`npm install -g @anthropic-ai/claude-code`, or point ORCH_CLAUDE_BIN at it"
                ),
            )
        if not ctx.workdir.is_dir():
            return AttemptResult(
                False, failure_class=FailureClass.WORKDIR_MISSING, error=f"workdir {ctx.workdir} does not exist"
            )
        ctx.log_path.parent.mkdir(parents=True, exist_ok=True)
        with with_scratch(ctx) as ctx, prompt_file(ctx) as prompt, ctx.log_path.open("wb", buffering=0) as log:
            sink = OutputSink(log, ctx.settings.log_max_bytes, ctx.settings.output_tail_bytes, ctx.redactor())
            state = StreamState()
            try:
                code, limit = self._run(binary, ctx, sink, state, prompt)
            except ISOLATION_ERRORS as exc:
                return isolation_failure(exc)
            finally:
                sink.close()
        return outcome(ctx, code, limit, state, sink.tail)

    def _run(
        self, binary: str, ctx: AttemptContext, sink: OutputSink, state: StreamState, prompt: IO[bytes]
    ) -> tuple[int, FailureClass | None]:
        launch = ctx.launch(claude_arguments(binary, ctx), programs=cli_folders(binary))
        process = start_agent(launch, ctx.settings, stdin=prompt, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lines: queue.Queue[bytes | None] = queue.Queue(maxsize=_QUEUED_LINES)
        readers = [
            threading.Thread(target=_read_lines, args=(stream, lines), daemon=True)
            for stream in (process.stdout, process.stderr)
        ]
        for reader in readers:
            reader.start()
        deadline = time.monotonic() + ctx.task.timeout
        open_streams = len(readers)
        limit: FailureClass | None = None
        try:
            while open_streams:
                now = time.monotonic()
                if now >= deadline:
                    limit = FailureClass.TIMEOUT
                    break
                if now - state.last_activity >= ctx.agent.idle_timeout:
                    limit = FailureClass.IDLE_TIMEOUT
                    break
                if ctx.control.stop_request is not None:
                    limit = ctx.control.stop_request.failure_class
                    break
                wait = min(deadline - now, ctx.agent.idle_timeout - (now - state.last_activity), 0.2)
                try:
                    line = lines.get(timeout=max(wait, 0.01))
                except queue.Empty:
                    continue
                if line is None:
                    open_streams -= 1
                    continue
                sink.write(line)
                if state.take(line):
                    ctx.control.report_usage(state.usage_so_far(), state.model)
        finally:
            end_agent(process.pid, ctx.settings.kill_grace_seconds, process)
            _drain(lines, readers)
        return process.returncode, limit


@contextlib.contextmanager
def prompt_file(ctx: AttemptContext) -> Iterator[IO[bytes]]:
    """The prompt in a 0600 file (unlinked: only this descriptor reaches it), open for reading from its start: the
    CLI's stdin."""
    with tempfile.TemporaryFile(dir=ctx.scratch, prefix="prompt-") as handle:
        handle.write(ctx.prompt.encode("utf-8"))
        handle.flush()
        handle.seek(0)
        yield handle


def cli_folders(binary: str) -> tuple[Path, ...]:
    """What the CLI needs when it lies where a sandbox hides (a home folder, /tmp): the command itself, and the
    folder it resolves into — for an npm install the whole `node_modules` (the command links into its package, whose
    native binary comes in a sibling package). Never a home folder whole: a CLI installed right in one shows only
    itself."""
    command = Path(binary)
    real = command.resolve()
    installed = next((folder for folder in real.parents if folder.name == "node_modules"), real.parent)
    home = Path(os.path.expanduser("~")).resolve()
    return (command, real) if installed == home or installed in home.parents else (command, installed)


def _read_lines(stream: IO[bytes] | None, lines: queue.Queue[bytes | None]) -> None:
    if stream is None:
        lines.put(None)
        return
    with stream:
        while line := stream.readline(MAX_LINE_BYTES):
            lines.put(line)
    lines.put(None)


def _drain(lines: queue.Queue[bytes | None], readers: list[threading.Thread]) -> None:
    """Unblock readers stuck on a full queue after we stopped consuming, then let them end."""
    deadline = time.monotonic() + 5
    while any(r.is_alive() for r in readers) and time.monotonic() < deadline:
        with contextlib.suppress(queue.Empty):
            lines.get(timeout=0.05)


def _usage(final: dict[str, Any]) -> Usage:
    usage = final.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return Usage(
        input_tokens=_tokens(usage.get("input_tokens")),
        output_tokens=_tokens(usage.get("output_tokens")),
        cache_creation_tokens=_tokens(usage.get("cache_creation_input_tokens")),
        cache_read_tokens=_tokens(usage.get("cache_read_input_tokens")),
    )


def _tokens(value: object) -> int:
    """A token count as reported; anything but a whole number from 0 to 10^12 counts 0."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0
    return value if 0 <= value <= 10**12 else 0


def _model(final: dict[str, Any], state: StreamState, ctx: AttemptContext) -> str:
    models = final.get("modelUsage")
    if isinstance(models, dict) and models:
        return str(max(models, key=lambda m: (models[m] or {}).get("costUSD") or 0))
    return state.model or ctx.agent.model


def outcome(ctx: AttemptContext, code: int, limit: FailureClass | None, state: StreamState, tail: str) -> AttemptResult:
    final = state.final or {}
    common: dict[str, Any] = {
        "exit_code": code,
        "output_tail": tail,
        "log_path": str(ctx.log_path),
        "usage": _usage(final) if final else state.usage_so_far(),  # a killed agent's spend still counts
        "cost_usd": reported_cost(final.get("total_cost_usd")),
        "model": _model(final, state, ctx) if final else ctx.agent.model,
        "result": final.get("result") if isinstance(final.get("result"), str) else None,
    }
    if limit is FailureClass.TIMEOUT:
        return AttemptResult(
            False, failure_class=limit, error=f"timed out after {format_duration(ctx.task.timeout)}; "
            f"its process group was killed", **common,
        )  # fmt: skip
    if limit is FailureClass.IDLE_TIMEOUT:
        return AttemptResult(
            False, failure_class=limit, error=f"no output for {format_duration(ctx.agent.idle_timeout)} "
            f"(idle_timeout); its process group was killed", **common,
        )  # fmt: skip
    stop = ctx.control.stop_request
    if stop is not None and limit is stop.failure_class:
        return AttemptResult(
            False, failure_class=limit, error=f"{stop.message}; its process group was killed", **common
        )
    if not final:
        detail = last_line(tail)
        return AttemptResult(
            False, failure_class=FailureClass.AGENT_ERROR if code == 0 else FailureClass.EXIT_STATUS,
            error=f"the CLI ended without a result ({describe_exit(code)})" + (f": {detail}" if detail else ""),
            **common,
        )  # fmt: skip
    if final.get("is_error") or final.get("subtype") != "success":
        failure_class = classify_error(final)
        message = str(final.get("result") or final.get("subtype") or "error")
        retry_after = None
        if failure_class is FailureClass.USAGE_LIMIT:
            retry_after = seconds_until_reset(message, time.time())
            if retry_after is None:  # no reset time to wait for: a limit waiting will not cure
                failure_class = FailureClass.SPEND_LIMIT
        return AttemptResult(
            False, failure_class=failure_class, error=f"claude: {message[:500]}", retry_after=retry_after, **common
        )
    return AttemptResult(True, **common)


def reported_cost(value: object) -> float | None:
    """The CLI's own cost figure when it is one (a finite, non-negative number: the agent can print lines that
    look like the CLI's, and a negative cost would give a budget back)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None


def classify_error(final: dict[str, Any]) -> FailureClass:
    status = final.get("api_error_status")
    text = str(final.get("result") or "")
    if status in (401, 403):
        return FailureClass.AUTH_ERROR
    if status == 400:
        return FailureClass.BAD_REQUEST
    if "usage limit" in text.lower():
        return FailureClass.USAGE_LIMIT
    if status == 429 or _LIMIT.search(text):
        return FailureClass.RATE_LIMITED
    if status == 529:
        return FailureClass.OVERLOADED
    if isinstance(status, int) and status >= 500:
        return FailureClass.SERVER_ERROR
    return FailureClass.AGENT_ERROR


def seconds_until_reset(text: str, now_epoch: float) -> float | None:
    """The wait until a usage limit resets, from "…usage limit reached|1750000000" or "resets at 1750000000"."""
    match = _RESET_EPOCH.search(text)
    if match is None:
        return None
    wait = int(match.group(1)) - now_epoch
    return wait if wait > 0 else None
