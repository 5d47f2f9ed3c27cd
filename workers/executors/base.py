"""The executor interface: run one attempt of one task in its workspace and report what happened."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from orch.redaction import Redactor, secret_values, settings_secrets
from orch.settings import get_settings
from orch.store.repo import AttemptResult
from workers.control import AttemptControl


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
    env: dict[str, str] = field(default_factory=dict)  # extra variables for the agent
    secrets: dict[str, str] = field(default_factory=dict, repr=False)  # the agent type's secrets, by name
    hidden: frozenset[str] = frozenset()  # variables no agent of this type may see (others' secrets, ORCH_*)
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
        """Masks this attempt's secrets (and the worker's, orch's own passwords among them) in whatever the agent
        prints."""
        return Redactor({**settings_secrets(get_settings()), **secret_values(self.hidden), **self.secrets})


class Executor(Protocol):
    name: str

    def run(self, ctx: AttemptContext) -> AttemptResult: ...
