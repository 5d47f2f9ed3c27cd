"""The shell executor: runs a task's `command` in its workdir, in its own process group, stdin closed, isolated
as workers.sandbox decides (its granted environment only, its agent user, bubblewrap).

Output (stdout and stderr together) goes to a log file up to a size cap; its tail is kept for the store.
The time limit, and the end of the command itself, end the whole process group.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from typing import IO

from orch.durations import format_duration
from orch.errors import OrchError
from orch.executors import ExecutorName
from orch.failures import FailureClass
from orch.records import AttemptResult
from orch.services.isolation import IsolationUnavailable
from workers.executors.base import AttemptContext, with_scratch
from workers.executors.output import OutputSink
from workers.sandbox.launch import start_agent
from workers.sandbox.workdir import UnsafeWorkdir, WorkdirNotWritable
from workers.supervision import end_agent

_CHUNK = 65536
_POLL_SECONDS = 0.1  # how soon a stop request (cancel, lost lease, shutdown) reaches a running agent


def isolation_failure(exc: OrchError) -> AttemptResult:
    """An agent that could not be started isolated as it must be: failed at once, with the reason and the fix."""
    failure_class = FailureClass.EXECUTOR_UNAVAILABLE
    if isinstance(exc, UnsafeWorkdir):
        failure_class = FailureClass.UNSAFE_WORKDIR
    elif isinstance(exc, WorkdirNotWritable):
        failure_class = FailureClass.WORKDIR_NOT_WRITABLE
    return AttemptResult(False, failure_class=failure_class, error=str(exc))


ISOLATION_ERRORS = (IsolationUnavailable, UnsafeWorkdir, WorkdirNotWritable)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


class ShellExecutor:
    name = ExecutorName.SHELL

    def run(self, ctx: AttemptContext) -> AttemptResult:
        if not ctx.task.command:
            return AttemptResult(
                False, failure_class=FailureClass.INVALID_TASK, error="shell executor: task has no command"
            )
        if not ctx.workdir.is_dir():
            return AttemptResult(
                False,
                failure_class=FailureClass.WORKDIR_MISSING,
                error=f"workdir {ctx.workdir} does not exist on this host",
            )
        ctx.log_path.parent.mkdir(parents=True, exist_ok=True)
        with with_scratch(ctx) as ctx, ctx.log_path.open("wb", buffering=0) as log:
            sink = OutputSink(log, ctx.settings.log_max_bytes, ctx.settings.output_tail_bytes, ctx.redactor())
            try:
                code, ended_by = self._run_process(ctx, sink)
            except ISOLATION_ERRORS as exc:
                return isolation_failure(exc)
            finally:
                sink.close()
        tail = sink.tail
        if ended_by == "stop" and (stop := ctx.control.stop_request) is not None:
            return AttemptResult(
                False,
                exit_code=code,
                failure_class=stop.failure_class,
                error=f"{stop.message}; its process group was killed",
                output_tail=tail,
                log_path=str(ctx.log_path),
            )
        if ended_by == "timeout":
            return AttemptResult(
                False,
                exit_code=code,
                failure_class=FailureClass.TIMEOUT,
                error=f"timed out after {format_duration(ctx.task.timeout)}; its process group was killed",
                output_tail=tail,
                log_path=str(ctx.log_path),
            )
        if code != 0:
            detail = last_line(tail)
            return AttemptResult(
                False,
                exit_code=code,
                failure_class=FailureClass.EXIT_STATUS,
                error=f"command failed: {describe_exit(code)}" + (f": {detail}" if detail else ""),
                output_tail=tail,
                log_path=str(ctx.log_path),
            )
        return AttemptResult(True, exit_code=0, output_tail=tail, log_path=str(ctx.log_path))

    def _run_process(self, ctx: AttemptContext, sink: OutputSink) -> tuple[int, str | None]:
        """Run the command to its end, its time limit or a stop request; returns its exit code and what
        ended it early ("timeout", "stop") if anything did."""
        assert ctx.task.command is not None
        launch = ctx.launch(["/bin/sh", "-c", ctx.task.command])
        process = start_agent(launch, ctx.settings, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        pgid = process.pid
        assert process.stdout is not None
        reader = threading.Thread(target=_pump, args=(process.stdout, sink), daemon=True)
        reader.start()
        ended_by = None
        deadline = time.monotonic() + ctx.task.timeout
        try:
            ended_by = wait_for_exit(process, deadline, ctx)
        finally:
            # The command is over (or out of time): nothing it started may outlive the attempt.
            end_agent(pgid, ctx.settings.kill_grace_seconds, process)
        reader.join(timeout=ctx.settings.kill_grace_seconds + 5)
        return process.returncode, ended_by


def wait_for_exit(process: subprocess.Popen[bytes], deadline: float, ctx: AttemptContext) -> str | None:
    """Wait for the agent to exit; None if it did, else "timeout" or "stop" (the attempt was told to stop)."""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout"
        try:
            process.wait(timeout=min(remaining, _POLL_SECONDS))
            return None
        except subprocess.TimeoutExpired:
            if ctx.control.stop_request is not None:
                return "stop"


def _pump(stream: IO[bytes], sink: OutputSink) -> None:
    with stream:
        while chunk := stream.read1(_CHUNK):  # type: ignore[attr-defined]
            sink.write(chunk)
