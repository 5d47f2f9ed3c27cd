"""The noop executor: succeeds at once. For dry runs and benchmarks of orch's own overhead."""

from __future__ import annotations

from orch.executors import ExecutorName
from orch.records import AttemptResult
from workers.executors.base import AttemptContext


class NoopExecutor:
    name = ExecutorName.NOOP

    def run(self, ctx: AttemptContext) -> AttemptResult:
        return AttemptResult(succeeded=True, exit_code=0)
