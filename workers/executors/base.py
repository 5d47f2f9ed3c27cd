"""The executor interface: run one attempt of one task in its workspace and report what happened."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from orch.records import AttemptResult
from orch.redaction import Redactor, secret_values, settings_secrets
from orch.settings import get_settings
from workers.control import AttemptControl
from workers.sandbox import Grant, Launch, Scratch, attempt_scratch


@dataclass(frozen=True)
class AttemptContext:
    """Everything an executor may know of the attempt it runs (read from the store by id)."""

    plan_id: str
    task_key: str
    attempt: int
    title: str
    description: str
    success: str
    command: str | None
    workdir: Path
    files: tuple[str, ...]
    timeout: float
    agent: str
    executor: str
    log_path: Path
    output_tail_bytes: int
    log_max_bytes: int
    kill_grace_seconds: float
    env: dict[str, str] = field(default_factory=dict)  # extra variables the executor gives its agent
    secrets: dict[str, str] = field(default_factory=dict, repr=False)  # the agent type's secrets, by name
    masked: frozenset[str] = frozenset()  # every agent type's secret names: their values are masked in output
    passthrough: tuple[str, ...] = ()  # the worker's variables the agent type's `env:` grants its agents
    network: str = "host"  # "host" or "none" (decided from the agent type's `network:` and the executor)
    scratch: Path | None = None  # the attempt's own folder (its agent's HOME and TMPDIR), outside the workdir
    prompt: str = ""
    system_prompt: str = ""
    model: str = ""
    max_tokens: int = 8000
    idle_timeout: float = 300.0
    max_turns: int = 30
    permission_mode: str = "acceptEdits"
    allowed_tools: tuple[str, ...] = ()
    disallowed_tools: tuple[str, ...] = ()
    claude_bin: str = "claude"
    call: str | None = None  # python executor: "package.module:function"
    verify: str | None = None  # checked by the runner after the executor reports success
    scope: str = "loose"
    control: AttemptControl = field(default_factory=AttemptControl, compare=False, repr=False)
    lease: str = ""  # the attempt's lease token (ORCH_LEASE for the agent: an execution ledger may record it)

    def redactor(self) -> Redactor:
        """Masks every secret this worker knows (every agent type's, orch's own passwords) in whatever the agent
        prints, whether or not this attempt was given it."""
        return Redactor({**settings_secrets(get_settings()), **secret_values(self.masked), **self.secrets})

    def grant(self) -> Grant:
        """What the agent process gets: its ids, its type's secrets and `env:` variables, its own folders."""
        ids = {
            "ORCH_PLAN_ID": self.plan_id,
            "ORCH_TASK_ID": self.task_key,
            "ORCH_ATTEMPT": str(self.attempt),
            "ORCH_LEASE": self.lease,
            "ORCH_WORKDIR": str(self.workdir),
            "ORCH_AGENT": self.agent,
        }
        scratch = Scratch(self.scratch) if self.scratch is not None else None
        return Grant(
            attempt_ids=ids,
            secrets=self.secrets,
            passthrough=self.passthrough,
            extra=self.env,
            home=scratch.home if scratch else None,
            tmp=scratch.tmp if scratch else None,
            network="none" if self.network == "none" else "host",
        )

    def launch(self, argv: list[str], programs: tuple[Path, ...] = ()) -> Launch:
        return Launch(argv, self.workdir, self.grant(), scratch=self.scratch, programs=programs)


@contextlib.contextmanager
def with_scratch(ctx: AttemptContext) -> Iterator[AttemptContext]:
    """`ctx` with its own attempt folder: the runner's, or a fresh one for an executor called on its own."""
    if ctx.scratch is not None:
        yield ctx
        return
    with attempt_scratch(get_settings()) as scratch:
        yield replace(ctx, scratch=scratch.root)


class Executor(Protocol):
    name: str

    def run(self, ctx: AttemptContext) -> AttemptResult: ...
