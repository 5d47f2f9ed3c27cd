"""The routes of a plan's tasks without `agent:`, as `orch validate` and `orch run` show them before anything
runs: per task the agent type keyword routing picked and why, the weak ones (a single keyword, a tie) flagged, so
the route that would strand a task on the wrong queue is seen, and pinned with `agent:`, first."""

from __future__ import annotations

from orch.executors import ExecutorName
from orch.intake.plan import Plan
from orch.views.format import counted
from orch.views.terminal import inert

ROUTES_SHOWN = 20  # route lines at most: a big plan's weak routes first, the rest counted


def route_lines(plan: Plan, limit: int = ROUTES_SHOWN) -> list[str]:
    """A heading, then a line per routed task that will run (`  id  type  why[  — weak: …]`), weak ones first, at
    most `limit`, then how many more; nothing when every task names its `agent:`."""
    # a task done in its list never runs, and a group (noop) runs nothing: their routes do not matter
    routed = [task for task in plan.tasks if task.routed and not task.done and task.executor is not ExecutorName.NOOP]
    if not routed:
        return []
    weak = [task for task in routed if task.route_weakness]
    heading = f"{counted(len(routed), 'routed task')} (no agent:), {len(weak)} weak"
    if weak:
        heading += "; a weak route may not be the type you mean: pin it with agent: in the plan"
    shown = [*weak, *(task for task in routed if not task.route_weakness)][:limit]
    id_width = max(len(task.key) for task in shown)
    agent_width = max(len(task.agent) for task in shown)
    lines = [heading]
    for task in sorted(shown, key=lambda task: (task.route_weakness is None, task.seq)):
        weakness = task.route_weakness
        note = "" if weakness is None else "  — weak" if weakness in task.route_reason else f"  — weak: {weakness}"
        lines.append(inert(f"  {task.key:<{id_width}}  {task.agent:<{agent_width}}  {task.route_reason}{note}"))
    hidden = len(routed) - len(shown)
    if hidden:
        hidden_weak = len(weak) - sum(1 for task in shown if task.route_weakness)
        lines.append(f"... and {counted(hidden, 'more routed task')} ({hidden_weak} weak)")
    return lines
