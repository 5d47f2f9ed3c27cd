"""After an agent reports success: the scope check (`scope: strict`) and the task's `verify:` command.

"Done" is checked, not trusted: either failing turns the attempt into a failure whose reason (and, for verify,
output) the next attempt's prompt carries.
"""

from __future__ import annotations

from dataclasses import replace

from orch.executors import ExecutorName
from orch.failures import FailureClass
from orch.records import AttemptResult
from workers.executors.base import AttemptContext
from workers.executors.shell import ShellExecutor
from workers.workspace import in_scope


def check_scope(
    result: AttemptResult, files: tuple[str, ...] | list[str], scope: str, known_before: bool = False
) -> AttemptResult:
    """`scope: strict` fails an attempt that changed files outside its `files`, or whose changes cannot be known
    in a workspace that is a git repository (`known_before`): an agent, this one or an earlier one, could otherwise
    hide its edits by breaking the repository."""
    if scope != "strict" or not result.succeeded:
        return result
    if result.files_changed is None:
        if not known_before:
            return result
        return replace(
            result,
            succeeded=False,
            failure_class=FailureClass.SCOPE_VIOLATION,
            error="scope: strict, and what it changed cannot be known: its workspace's git repository cannot be read "
            "(it was broken, by this attempt or an earlier one)",
        )
    outside = [path for path in result.files_changed if not in_scope(path, files)]
    if not outside:
        return result
    return replace(
        result,
        succeeded=False,
        failure_class=FailureClass.SCOPE_VIOLATION,
        error=f"scope: strict, and it changed files outside its declared files: {', '.join(outside[:20])}",
    )


def run_verify(result: AttemptResult, ctx: AttemptContext, verify: str | None) -> AttemptResult:
    """The task's `verify:` command, as a shell agent in the same sandbox, with none of the agent type's secrets (a
    test command has no use for a model's key); its log is masked like the agent's, granted secrets included."""
    if not verify or not result.succeeded:
        return result
    check = replace(
        ctx,
        task=replace(ctx.task, command=verify, executor=ExecutorName.SHELL),
        log_path=ctx.log_path.with_suffix(".verify.log"),
        secrets={},
        masked=ctx.masked | frozenset(ctx.secrets),
        env={},
    )
    outcome = ShellExecutor().run(check)
    if outcome.succeeded:
        return replace(result, verified=True)
    return replace(
        result,
        succeeded=False,
        verified=False,
        failure_class=FailureClass.VERIFICATION_FAILED,
        error=f"verify `{verify}` failed: " + (outcome.error or "").removeprefix("command failed: "),
        output_tail=outcome.output_tail,
    )
