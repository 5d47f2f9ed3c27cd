"""What every task-list reader shares: its options, and how it reports problems (one line each, `FILE:LINE: …`)."""

from __future__ import annotations

from dataclasses import dataclass

from orch.errors import PlanInvalid

MAX_PROBLEMS_SHOWN = 50
MAX_LIST_TASKS = 100_000  # as many as a plan may hold (orch.intake.plan.MAX_TASKS)


@dataclass(frozen=True)
class ReadOptions:
    """How to read a list: `tag`, task-master's tag to take (None: the file's current tag, else `master`);
    `include_optional`, whether Kiro's optional tasks (`- [ ]*`) are run."""

    tag: str | None = None
    include_optional: bool = False


class ListProblems:
    """The problems found in one list file, each `FILE:LINE: problem` (or `FILE: problem` without a line); the first
    MAX_PROBLEMS_SHOWN kept, the rest counted."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.lines: list[str] = []
        self.hidden = 0

    def add(self, line: int | None, problem: str) -> None:
        if len(self.lines) >= MAX_PROBLEMS_SHOWN:
            self.hidden += 1
            return
        where = self.source if line is None else f"{self.source}:{line}"
        self.lines.append(f"{where}: {problem}")

    def __bool__(self) -> bool:
        return bool(self.lines)

    def raise_if_any(self) -> None:
        """PlanInvalid with every problem (exit 2), if there is one."""
        if self.lines:
            more = [f"{self.source}: … and {self.hidden:,} more problems"] if self.hidden else []
            raise PlanInvalid(self.source, [*self.lines, *more])


def refuse(source: str, line: int | None, problem: str) -> PlanInvalid:
    """One problem as the PlanInvalid to raise."""
    problems = ListProblems(source)
    problems.add(line, problem)
    return PlanInvalid(source, problems.lines)
