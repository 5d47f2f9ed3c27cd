"""`orch graph`: a plan's DAG as a Mermaid flowchart (renders in a GitHub README, issue or pull request).

Tasks are grouped by stage, their dependency depth (a task's stage is one more than its deepest dependency's),
one subgraph per stage; a stored plan's tasks are coloured by state. A plan too large for a chart anyone can read
(or for GitHub's renderer, which stops at 500 edges) is drawn as one node per stage with its tasks' states
counted, and says so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from orch.dag import Dag
from orch.intake.plan import Plan
from orch.states import TaskStatus
from orch.store import plans, reads
from orch.store.models import PlanRow
from orch.views.format import counted
from orch.views.terminal import inert

MAX_NODES = 200  # more tasks than this: one node per stage
MAX_EDGES = 500  # Mermaid's own default limit
TITLE_CHARS = 60
SKIPPED = "skipped"  # succeeded by `orch skip`: a state of the drawing, not of the store

CLASS_STYLES = {
    TaskStatus.PENDING.value: "fill:#f4f4f5,stroke:#a1a1aa,color:#3f3f46",
    TaskStatus.QUEUED.value: "fill:#e0f2fe,stroke:#0284c7,color:#0c4a6e",
    TaskStatus.RUNNING.value: "fill:#dbeafe,stroke:#2563eb,color:#1e3a8a,stroke-width:3px",
    TaskStatus.MERGING.value: "fill:#ccfbf1,stroke:#0d9488,color:#134e4a",
    TaskStatus.SUCCEEDED.value: "fill:#dcfce7,stroke:#16a34a,color:#14532d",
    TaskStatus.FAILED.value: "fill:#fee2e2,stroke:#dc2626,color:#7f1d1d,stroke-width:3px",
    TaskStatus.RETRY_WAIT.value: "fill:#fef9c3,stroke:#ca8a04,color:#713f12",
    TaskStatus.UPSTREAM_FAILED.value: "fill:#ffedd5,stroke:#ea580c,color:#7c2d12,stroke-dasharray:5 3",
    TaskStatus.CANCELLED.value: "fill:#f3e8ff,stroke:#9333ea,color:#581c87,stroke-dasharray:5 3",
    TaskStatus.REPLACED.value: "fill:#ecfeff,stroke:#0891b2,color:#164e63,stroke-dasharray:5 3",
    SKIPPED: "fill:#f0fdf4,stroke:#86efac,color:#166534,stroke-dasharray:5 3",
}
# A stage drawn as one node takes the colour of its most telling state, in this order.
STAGE_STATE_ORDER = (
    TaskStatus.FAILED.value,
    TaskStatus.RUNNING.value,
    TaskStatus.MERGING.value,
    TaskStatus.RETRY_WAIT.value,
    TaskStatus.QUEUED.value,
    TaskStatus.UPSTREAM_FAILED.value,
    TaskStatus.CANCELLED.value,
    TaskStatus.PENDING.value,
    TaskStatus.REPLACED.value,
    SKIPPED,
    TaskStatus.SUCCEEDED.value,
)


@dataclass(frozen=True)
class Node:
    key: str
    title: str
    after: tuple[str, ...]
    state: str | None = None  # a TaskStatus value or "skipped"; None: not run (drawn from a plan file)


@dataclass(frozen=True)
class Chart:
    text: str
    note: str | None  # set when the plan was condensed to fit


def nodes_of_plan(plan: Plan) -> list[Node]:
    return [Node(t.key, t.title, t.after) for t in plan.tasks]


def escape(text: str, limit: int | None = None) -> str:
    """Text for a quoted Mermaid label: one line, cut to `limit`, control and bidi characters as visible escapes
    (the chart is printed to a terminal), and what Mermaid or HTML would read as syntax written as Mermaid's
    entity codes (`#35;` is "#", so "#" goes first)."""
    flat = " ".join(text.split())
    if limit is not None and len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    flat = inert(flat).replace("#", "#35;")
    for char, code in (("&", "#amp;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;"), ("`", "#96;"), ("%", "#37;")):
        flat = flat.replace(char, code)
    return flat


def render(nodes: Sequence[Node], title: str, max_nodes: int = MAX_NODES) -> Chart:
    """The Mermaid flowchart of `nodes`; beyond `max_nodes` tasks (or MAX_EDGES edges), one node per stage."""
    depth = Dag({n.key: n.after for n in nodes}).depths()  # the DAG was validated acyclic
    edges = sum(len(n.after) for n in nodes)
    colour = any(n.state is not None for n in nodes)
    if len(nodes) <= max_nodes and edges <= MAX_EDGES:
        return Chart(_task_chart(nodes, depth, title, colour), None)
    note = (
        f"{len(nodes):,} tasks and {edges:,} dependencies are more than a readable chart holds "
        f"(--max-nodes {max_nodes}, at most {MAX_EDGES} edges): drawn as one node per stage"
    )
    return Chart(_stage_chart(nodes, depth, title, colour, note, max(max_nodes, 2)), note)


def _comment(text: str) -> str:
    return "    %% " + inert(" ".join(text.split()))


def _header(title: str, colour: bool) -> list[str]:
    lines = ["flowchart TD", _comment(title)]
    if colour:
        lines += [f"    classDef {name} {style}" for name, style in CLASS_STYLES.items()]
    return lines


def _class_lines(ids_by_state: dict[str, list[str]]) -> list[str]:
    return [f"    class {','.join(ids_by_state[state])} {state}" for state in CLASS_STYLES if ids_by_state.get(state)]


def _task_chart(nodes: Sequence[Node], depth: dict[str, int], title: str, colour: bool) -> str:
    node_id = {n.key: f"n{i}" for i, n in enumerate(nodes)}
    by_stage: dict[int, list[Node]] = {}
    for node in nodes:
        by_stage.setdefault(depth[node.key], []).append(node)
    lines = _header(title, colour)
    for stage in sorted(by_stage):
        members = by_stage[stage]
        lines.append(f'    subgraph stage{stage} ["stage {stage + 1} · {counted(len(members), "task")}"]')
        lines += [f'        {node_id[n.key]}["{escape(n.key)}<br/>{escape(n.title, TITLE_CHARS)}"]' for n in members]
        lines.append("    end")
    lines += [f"    {node_id[dep]} --> {node_id[n.key]}" for n in nodes for dep in n.after]
    if colour:
        ids_by_state: dict[str, list[str]] = {}
        for node in nodes:
            if node.state is not None:
                ids_by_state.setdefault(node.state, []).append(node_id[node.key])
        lines += _class_lines(ids_by_state)
    return "\n".join(lines) + "\n"


def _stage_chart(
    nodes: Sequence[Node], depth: dict[str, int], title: str, colour: bool, note: str, max_nodes: int
) -> str:
    """One node per stage, in a chain (each stage's tasks depend on some of the stage before); past
    `max_nodes` stages, the rest share one last node."""
    groups: dict[int, Counter[str]] = {}
    for node in nodes:
        stage = min(depth[node.key], max_nodes - 1)
        groups.setdefault(stage, Counter())[node.state or ""] += 1
    last_stage = max(depth.values(), default=0)
    lines = _header(title, colour)
    lines.append(_comment(note))
    ids_by_state: dict[str, list[str]] = {}
    for stage, states in sorted(groups.items()):
        capped = stage == max_nodes - 1 and last_stage > stage
        name = f"stages {stage + 1} to {last_stage + 1}" if capped else f"stage {stage + 1}"
        label = f"{name} · {counted(states.total(), 'task')}"
        by_state = _state_counts(states)
        lines.append(f'    s{stage}["{escape(label)}' + (f"<br/>{escape(by_state)}" if by_state else "") + '"]')
        if stage:
            lines.append(f"    s{stage - 1} --> s{stage}")
        telling = next((s for s in STAGE_STATE_ORDER if states[s]), None)
        if telling is not None:
            ids_by_state.setdefault(telling, []).append(f"s{stage}")
    if colour:
        lines += _class_lines(ids_by_state)
    return "\n".join(lines) + "\n"


def _state_counts(states: Counter[str]) -> str:
    return " · ".join(f"{states[s]:,} {s}" for s in STAGE_STATE_ORDER if states[s])


def fenced(text: str) -> str:
    """The chart as a Markdown code block GitHub renders."""
    return f"```mermaid\n{text}```\n"


def load_nodes(session: Session, plan_ref: str) -> tuple[PlanRow, list[Node]]:
    """A stored plan's tasks as nodes coloured by state, each task's dependencies in plan order."""
    plan = plans.find_plan(session, plan_ref)
    tasks = reads.task_summaries(session, plan.id)
    position = {t.pk: i for i, t in enumerate(tasks)}
    dag = Dag.from_edges(plans.plan_dependencies(session, plan.id))
    nodes = [
        Node(
            t.key,
            t.title,
            tuple(tasks[position[d]].key for d in sorted(dag.dependencies(t.pk), key=position.__getitem__)),
            SKIPPED if t.skipped else t.status.value,
        )
        for t in tasks
    ]
    return plan, nodes
