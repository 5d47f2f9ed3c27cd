"""Follow-up tasks, as an attempt hands them over: a file the worker creates empty in the attempt's own folder and
names in $ORCH_FOLLOWUPS (shell and python tasks write JSON there), or the last ```orch-followups block of an agent's
final message. The worker only carries the text (AttemptResult.followups); the store checks it when it records the
result (orch.decisions.followups)."""

from __future__ import annotations

import os
import stat
from dataclasses import replace
from pathlib import Path

from orch.decisions.followups import MAX_FOLLOWUPS_BYTES, last_block
from orch.executors import PROMPTED
from orch.records import AttemptResult
from workers.executors.base import AttemptContext
from workers.sandbox.grant import give_to_agent

FOLLOWUPS_FILE = "followups.json"
FOLLOWUPS_ENV = "ORCH_FOLLOWUPS"


def offer_followups(ctx: AttemptContext) -> AttemptContext:
    """`ctx` with $ORCH_FOLLOWUPS naming an empty file of the agent's in its attempt folder (written by the worker,
    in the worker's own folder, so no agent can put a link in its place)."""
    if ctx.scratch is None:
        return ctx
    path = ctx.scratch / FOLLOWUPS_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    give_to_agent(path, ctx.settings)
    return replace(ctx, env={**ctx.env, FOLLOWUPS_ENV: str(path)})


def collect_followups(ctx: AttemptContext, result: AttemptResult) -> AttemptResult:
    """`result` with the follow-ups its attempt wrote: the file if it is not empty, else (for an agent) the last
    block of its final message; an attempt that failed adds none."""
    if not result.succeeded:
        return result
    text = read_followups(ctx.scratch / FOLLOWUPS_FILE) if ctx.scratch is not None else None
    if text is None and ctx.task.executor in PROMPTED:
        text = last_block(result.result)
    return result if text is None else replace(result, followups=text)


def read_followups(path: Path) -> str | None:
    """The file's text (None: empty or absent), never through a link, at most MAX_FOLLOWUPS_BYTES (one more is
    read, so a longer file is refused whole when it is checked)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return '"[orch: $ORCH_FOLLOWUPS is not a regular file]"'
        data = handle.read(MAX_FOLLOWUPS_BYTES + 1)
    text = data.decode("utf-8", errors="replace")
    return text if text.strip() else None
