"""The executor interface: run one attempt of one task in its workspace and report what happened."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from orch.executors import ExecutorName
from orch.intake.agents import AgentType
from orch.records import AttemptResult, ClaimedTask
from orch.redaction import Redactor, secret_values, settings_secrets
from orch.settings import Settings
from workers.control import AttemptControl
from workers.sandbox.grant import Grant, Scratch, attempt_scratch
from workers.sandbox.launch import Launch


@dataclass(frozen=True)
class AttemptContext:
    """Everything an executor may know of the attempt it runs: the claimed task (read from the store by id), its
    agent type, the worker's settings, and what is this attempt's own."""

    task: ClaimedTask
    agent: AgentType  # the task's type (a type no longer declared: the file's defaults, under its name)
    settings: Settings = field(compare=False, repr=False)  # the worker's, passed by the runner: limits, isolation
    plan_id: str
    attempt: int
    log_path: Path
    # "host" or "none": decided once from the agent type's `network:` and the task's executor (verify's shell too)
    network: str
    lease: str = ""  # the attempt's lease token (ORCH_LEASE for the agent: an execution ledger may record it)
    env: dict[str, str] = field(default_factory=dict)  # extra variables the executor gives its agent
    secrets: dict[str, str] = field(default_factory=dict, repr=False)  # the agent type's secrets, by name
    masked: frozenset[str] = frozenset()  # every agent type's secret names: their values are masked in output
    scratch: Path | None = None  # the attempt's own folder (its agent's HOME and TMPDIR), outside the workdir
    git_readable: tuple[Path, ...] = ()  # a worktree attempt's repository cache, shown read-only in the sandbox
    git_writable: tuple[Path, ...] = ()  # its worktree's admin folder (HEAD, index)
    prompt: str = ""
    system_prompt: str = ""
    control: AttemptControl = field(default_factory=AttemptControl, compare=False, repr=False)

    @property
    def workdir(self) -> Path:
        return Path(self.task.workdir)

    def redactor(self) -> Redactor:
        """Masks every secret this worker knows (every agent type's, orch's own passwords) in whatever the agent
        prints, whether or not this attempt was given it."""
        return Redactor({**settings_secrets(self.settings), **secret_values(self.masked), **self.secrets})

    def grant(self) -> Grant:
        """What the agent process gets: its ids, its type's secrets and `env:` variables, its own folders."""
        ids = {
            "ORCH_PLAN_ID": self.plan_id,
            "ORCH_TASK_ID": self.task.key,
            "ORCH_ATTEMPT": str(self.attempt),
            "ORCH_LEASE": self.lease,
            "ORCH_WORKDIR": str(self.workdir),
            "ORCH_AGENT": self.agent.name,
        }
        scratch = Scratch(self.scratch) if self.scratch is not None else None
        return Grant(
            attempt_ids=ids,
            secrets=self.secrets,
            passthrough=self.agent.env,
            extra=self.env,
            home=scratch.home if scratch else None,
            tmp=scratch.tmp if scratch else None,
            network="none" if self.network == "none" else "host",
        )

    def launch(self, argv: list[str], programs: tuple[Path, ...] = ()) -> Launch:
        return Launch(
            argv,
            self.workdir,
            self.grant(),
            scratch=self.scratch,
            programs=programs,
            git_readable=self.git_readable,
            git_writable=self.git_writable,
        )


@contextlib.contextmanager
def with_scratch(ctx: AttemptContext) -> Iterator[AttemptContext]:
    """`ctx` with its own attempt folder: the runner's, or a fresh one for an executor called on its own."""
    if ctx.scratch is not None:
        yield ctx
        return
    with attempt_scratch(ctx.settings) as scratch:
        yield replace(ctx, scratch=scratch.root)


class Executor(Protocol):
    name: ExecutorName

    def run(self, ctx: AttemptContext) -> AttemptResult: ...
