"""The executor interface: run one attempt of one task in its workspace and report what happened."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from orch.store.repo import AttemptResult


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
    env: dict[str, str] = field(default_factory=dict)


class Executor(Protocol):
    name: str

    def run(self, ctx: AttemptContext) -> AttemptResult: ...
