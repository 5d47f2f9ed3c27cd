"""The benchmark's rows and targets, from the parts' raw results: one number per row and store, a table for the
terminal and a Markdown one for the README."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.sizes import Size

STORE_TITLES = {"sqlite": "embedded: SQLite + private Redis", "postgres": "PostgreSQL + Redis"}


def _get(data: Any, *path: str) -> Any:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def _ratio(top: Any, bottom: Any) -> float | None:
    if top is None or bottom is None or not bottom:
        return None
    return float(top) / float(bottom)


@dataclass(frozen=True)
class Row:
    id: str
    label: Callable[[Size], str]
    unit: str
    value: Callable[[dict[str, Any]], Any]
    sign: str = "positive"  # what a sane value is: "positive" (> 0) or "any" (finite)


def _n(value: int) -> str:
    return f"{value:,}"


def _runs(size: Size) -> str:
    return f" x {size.repeats} runs" if size.repeats > 1 else ""


def _deep(size: Size) -> str:
    return f"orch deep ({_n(size.deep)}-task chain{_runs(size)})"


def _worktree(size: Size) -> str:
    return f"worktree ({_n(size.worktree_files)} files, {_n(size.worktree_tasks)} tasks)"


_WORKTREE_STEPS = (
    ("prepare", "fetch + worktree add"),
    ("commit", "commit + push branch and archive ref"),
    ("scope", "changed paths (scope)"),
    ("remove", "worktree remove"),
    ("merge fast-forward", "merge, fast-forward + CAS push"),
    ("merge 3-way", "merge, 3-way + CAS push"),
)


def _tasklist(size: Size) -> str:
    return f"task list ({_n(size.tasklist_tasks)}-task spec-kit tasks.md)"


def _edits(size: Size) -> str:
    return f"{_tasklist(size)}: saved edit → new task queued (debounce {size.tasklist_debounce:g} s)"


def _worktree_step(step: str, what: str, q: str) -> Row:
    return Row(
        f"worktree.{step.replace(' ', '_')}_{q}",
        lambda s: f"{_worktree(s)}: {what}, {q}",
        "ms",
        lambda r: _get(r, "worktree", "steps", step, "ms", q),
    )


ROWS: list[Row] = [
    # raw Celery
    Row("raw.enqueue_p50", lambda s: "raw Celery: apply_async → task start, p50", "ms",
        lambda r: _get(r, "raw", "enqueue_to_start_ms", "p50")),
    Row("raw.enqueue_p99", lambda s: "raw Celery: apply_async → task start, p99", "ms",
        lambda r: _get(r, "raw", "enqueue_to_start_ms", "p99")),
    Row("raw.drain", lambda s: f"raw Celery: drain {_n(s.raw_drain)} no-op tasks", "tasks/s",
        lambda r: _get(r, "raw", "drain", "tasks_per_s")),
    Row("raw.hop_p50", lambda s: f"raw Celery: chain of {_n(s.raw_chain)}{_runs(s)}, hop p50", "ms",
        lambda r: _get(r, "raw", "chain", "hop_ms", "p50")),
    Row("raw.hop_p99", lambda s: f"raw Celery: chain of {_n(s.raw_chain)}{_runs(s)}, hop p99", "ms",
        lambda r: _get(r, "raw", "chain", "hop_ms", "p99")),
    Row("raw.chain_per_task", lambda s: f"raw Celery: chain of {_n(s.raw_chain)}{_runs(s)}, per task", "ms",
        lambda r: _get(r, "raw", "chain", "ms_per_task")),
    Row("raw.memory_growth", lambda s: "raw Celery: worker memory growth over the drain, per 1,000 tasks", "KiB",
        lambda r: _get(r, "raw", "memory", "growth_kib_per_1000_tasks"), "any"),
    Row("raw.idle_cpu", lambda s: "raw Celery: idle worker CPU", "% core",
        lambda r: _get(r, "raw", "idle_cpu_percent"), "any"),
    # orch, noop executor
    Row("orch.deep_hop_p50", lambda s: f"{_deep(s)}: parent finished → child started, p50",
        "ms", lambda r: _get(r, "orch", "deep", "hop_ms", "p50"), "any"),
    Row("orch.deep_hop_p99", lambda s: f"{_deep(s)}: parent finished → child started, p99",
        "ms", lambda r: _get(r, "orch", "deep", "hop_ms", "p99")),
    Row("orch.deep_per_task", lambda s: f"{_deep(s)}: per task", "ms",
        lambda r: _get(r, "orch", "deep", "ms_per_task")),
    Row("orch.fan_out_first", lambda s: f"orch fan 1 → {_n(s.fan)} → 1: root finished → first child started", "ms",
        lambda r: _get(r, "orch", "fan", "fan_out_first_ms"), "any"),
    Row("orch.fan_out_last", lambda s: f"orch fan 1 → {_n(s.fan)} → 1: root finished → last child started", "ms",
        lambda r: _get(r, "orch", "fan", "fan_out_last_ms")),
    Row("orch.fan_in", lambda s: f"orch fan 1 → {_n(s.fan)} → 1: last of {_n(s.fan)} finished → sink started", "ms",
        lambda r: _get(r, "orch", "fan", "fan_in_ms"), "any"),
    Row("orch.fan_throughput", lambda s: f"orch fan 1 → {_n(s.fan)} → 1: middle layer throughput", "tasks/s",
        lambda r: _get(r, "orch", "fan", "middle_tasks_per_s")),
    Row("orch.wide", lambda s: f"orch wide ({_n(s.wide)} tasks): throughput, first start → last finish", "tasks/s",
        lambda r: _get(r, "orch", "wide", "tasks_per_s")),
    Row("orch.wide_wall", lambda s: f"orch wide ({_n(s.wide)} tasks): submit → plan final", "s",
        lambda r: _get(r, "orch", "wide", "submit_to_final_s")),
    Row("orch.idle_worker", lambda s: "orch idle: worker CPU (main + pool)", "% core",
        lambda r: _get(r, "orch", "idle_cpu_percent", "worker"), "any"),
    Row("orch.idle_beat", lambda s: "orch idle: beat CPU", "% core",
        lambda r: _get(r, "orch", "idle_cpu_percent", "beat"), "any"),
    Row("orch.rss_before", lambda s: f"orch worker memory (PSS, main + pool) before {_n(s.wide)} tasks", "MiB",
        lambda r: _get(r, "orch", "memory", "before_mib")),
    Row("orch.rss_after", lambda s: f"orch worker memory (PSS, main + pool) after {_n(s.wide)} tasks", "MiB",
        lambda r: _get(r, "orch", "memory", "after_mib")),
    Row("orch.memory_growth", lambda s: "orch worker memory growth per 1,000 tasks, after the first 10%", "KiB",
        lambda r: _get(r, "orch", "memory", "growth_kib_per_1000_tasks_after_first_10_percent"), "any"),
    Row("orch.path_deep", lambda s: f"orch worker path per task, in-process, {_n(s.deep)}-task chain, p50", "ms",
        lambda r: _get(r, "worker_path", "deep", "ms", "p50")),
    Row("orch.path_wide", lambda s: f"orch worker path per task, in-process, {_n(s.wide)} queued, p50", "ms",
        lambda r: _get(r, "worker_path", "wide", "ms", "p50")),
    # ratios
    Row("ratio.throughput", lambda s: "ratio: orch wide throughput ÷ raw Celery drain", "x",
        lambda r: _ratio(_get(r, "orch", "wide", "tasks_per_s"), _get(r, "raw", "drain", "tasks_per_s"))),
    Row("ratio.hop", lambda s: "ratio: orch hop p50 ÷ raw Celery chain hop p50", "x",
        lambda r: _ratio(_get(r, "orch", "deep", "hop_ms", "p50"), _get(r, "raw", "chain", "hop_ms", "p50")), "any"),
    Row("ratio.rss", lambda s: f"ratio: orch worker memory after ÷ before {_n(s.wide)} tasks", "x",
        lambda r: _ratio(_get(r, "orch", "memory", "after_mib"), _get(r, "orch", "memory", "before_mib"))),
    # a task in its own git worktree, in-process (bench/worktree_cost.py)
    *[_worktree_step(step, what, q) for step, what in _WORKTREE_STEPS for q in ("p50", "p90")],
    Row("worktree.per_task_p50", lambda s: f"{_worktree(s)}: added cost per task, all steps, p50", "ms",
        lambda r: _get(r, "worktree", "per_task_ms", "p50")),
    Row("worktree.per_task_p90", lambda s: f"{_worktree(s)}: added cost per task, all steps, p90", "ms",
        lambda r: _get(r, "worktree", "per_task_ms", "p90")),
    Row("worktree.git_processes", lambda s: f"{_worktree(s)}: git processes per task", "",
        lambda r: _get(r, "worktree", "git_processes_per_task")),
    Row("worktree.plain_add", lambda s: f"{_worktree(s)}: a bare `git worktree add` of the same commit, p50", "ms",
        lambda r: _get(r, "worktree", "plain_worktree_add_ms", "p50")),
    Row("worktree.run_git", lambda s: "git: one process doing nothing through orch's run_git, p50", "ms",
        lambda r: _get(r, "worktree", "git_floor", "run_git_ms", "p50")),
    Row("worktree.bare_git", lambda s: "git: one bare process doing nothing, p50", "ms",
        lambda r: _get(r, "worktree", "git_floor", "bare_ms", "p50")),
    Row("ratio.worktree_hop", lambda s: "ratio: worktree added cost per task p50 ÷ orch hop p50", "x",
        lambda r: _ratio(_get(r, "worktree", "per_task_ms", "p50"), _get(r, "orch", "deep", "hop_ms", "p50"))),
    Row("ratio.worktree_add", lambda s: "ratio: orch's fetch + worktree add ÷ a bare `git worktree add`, p50", "x",
        lambda r: _ratio(_get(r, "worktree", "steps", "prepare", "ms", "p50"),
                         _get(r, "worktree", "plain_worktree_add_ms", "p50"))),
    # scale, in-process
    Row("scale.parse", lambda s: f"scale: read {_n(s.scale_big)}-task JSON plan", "s",
        lambda r: _get(r, "scale", "big", "submit", "parse_s")),
    Row("scale.validate", lambda s: f"scale: validate {_n(s.scale_big)}-task plan", "s",
        lambda r: _get(r, "scale", "big", "submit", "validate_s")),
    Row("scale.submit", lambda s: f"scale: store {_n(s.scale_big)}-task plan", "s",
        lambda r: _get(r, "scale", "big", "submit", "submit_s")),
    Row("scale.validate_submit", lambda s: f"scale: read + validate + store {_n(s.scale_big)}-task plan", "s",
        lambda r: _get(r, "scale", "big", "submit", "total_s")),
    Row("scale.readiness_small", lambda s: f"scale: readiness per completion, {_n(s.scale_small)}-task plan, p50",
        "ms", lambda r: _get(r, "scale", "small", "readiness", "readiness_ms", "p50")),
    Row("scale.readiness_big", lambda s: f"scale: readiness per completion, {_n(s.scale_big)}-task plan, p50",
        "ms", lambda r: _get(r, "scale", "big", "readiness", "readiness_ms", "p50")),
    Row("scale.readiness_ratio", lambda s: f"scale: readiness cost, {_n(s.scale_big)} ÷ {_n(s.scale_small)} tasks",
        "x", lambda r: _ratio(_get(r, "scale", "big", "readiness", "readiness_ms", "p50"),
                              _get(r, "scale", "small", "readiness", "readiness_ms", "p50"))),
    Row("scale.completion_small", lambda s: f"scale: completion transaction, {_n(s.scale_small)}-task plan, p50",
        "ms", lambda r: _get(r, "scale", "small", "readiness", "transaction_ms", "p50")),
    Row("scale.completion_big", lambda s: f"scale: completion transaction, {_n(s.scale_big)}-task plan, p50",
        "ms", lambda r: _get(r, "scale", "big", "readiness", "transaction_ms", "p50")),
    Row("scale.tick_small", lambda s: f"scale: beat tick (full reconcile pass), {_n(s.scale_small)}-task plan, p50",
        "ms", lambda r: _get(r, "scale", "small", "tick", "tick_ms", "p50")),
    Row("scale.tick_big", lambda s: f"scale: beat tick (full reconcile pass), {_n(s.scale_big)}-task plan, p50",
        "ms", lambda r: _get(r, "scale", "big", "tick", "tick_ms", "p50")),
    # task lists (bench/tasklists.py)
    Row("tasklists.import_best", lambda s: f"{_tasklist(s)}: import (load_any_plan), best of {s.tasklist_runs}", "s",
        lambda r: _get(r, "tasklists", "import", "load_any_plan_s", "best")),
    Row("tasklists.import_median", lambda s: f"{_tasklist(s)}: import (load_any_plan), median", "s",
        lambda r: _get(r, "tasklists", "import", "load_any_plan_s", "median")),
    Row("tasklists.read_median", lambda s: f"{_tasklist(s)}: the reader alone (read_tasklist), median", "s",
        lambda r: _get(r, "tasklists", "import", "read_tasklist_s", "median")),
    Row("tasklists.validation_share", lambda s: f"{_tasklist(s)}: validation's share of the import (plan_of_list)",
        "%", lambda r: _get(r, "tasklists", "import", "validation_share_percent")),
    Row("tasklists.sync", lambda s: f"{_tasklist(s)}: follower's sync of one edit (read, validate, revise), p50",
        "ms", lambda r: _get(r, "tasklists", "edit", "sync_ms", "p50")),
    Row("tasklists.edit_median", lambda s: f"{_edits(s)}, median of {s.tasklist_edits}", "s",
        lambda r: _get(r, "tasklists", "edit", "save_to_queued_s", "median")),
    Row("tasklists.edit_max", lambda s: f"{_edits(s)}, max", "s",
        lambda r: _get(r, "tasklists", "edit", "save_to_queued_s", "max")),
    Row("tasklists.edit_over_debounce", lambda s: f"{_edits(s)}, max beyond the debounce", "s",
        lambda r: _get(r, "tasklists", "edit", "over_debounce_max_s")),
]  # fmt: skip


@dataclass(frozen=True)
class Target:
    id: str
    label: str
    row: str  # the row whose value is compared
    op: str  # "<=" or ">=" or "<"
    bound: float
    unit: str


TARGETS = [
    Target("hop_p50", "parent finished → child started p50 ≤ 1.5 x raw Celery chain hop", "ratio.hop", "<=", 1.5, "x"),
    Target("hop_p99", "parent finished → child started p99 ≤ 10 ms", "orch.deep_hop_p99", "<=", 10.0, "ms"),
    Target("wide", "wide throughput ≥ 60% of raw Celery no-op throughput", "ratio.throughput", ">=", 0.60, "x"),
    Target("readiness", "readiness cost, large plan ≤ 1.2 x small plan", "scale.readiness_ratio", "<=", 1.2, "x"),
    Target("tick", "full reconcile pass of the large plan ≤ 30 ms", "scale.tick_big", "<=", 30.0, "ms"),
    Target("submit", "validate + submit the large plan ≤ 3 s", "scale.validate_submit", "<=", 3.0, "s"),
    Target("idle_worker", "idle worker < 1% of a core", "orch.idle_worker", "<", 1.0, "% core"),
    Target("idle_beat", "idle beat < 1% of a core", "orch.idle_beat", "<", 1.0, "% core"),
    Target("worktree", "worktree added cost per task p50 ≤ 150 ms", "worktree.per_task_p50", "<=", 150.0, "ms"),
    Target("memory", "worker memory flat: PSS after ≤ 1.1 x before the wide plan", "ratio.rss", "<=", 1.1, "x"),
    Target("tasklist_import", "import a 1,000-task spec-kit tasks.md ≤ 1 s (median)", "tasklists.import_median",
           "<=", 1.0, "s"),
    Target("tasklist_edit", "saved edit → new task queued ≤ debounce + 1 s (max)", "tasklists.edit_over_debounce",
           "<=", 1.0, "s"),
]  # fmt: skip


def _check(op: str, value: float, bound: float) -> bool:
    return {"<=": value <= bound, ">=": value >= bound, "<": value < bound}[op]


def build(stores: dict[str, dict[str, Any]], size: Size) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    rows = []
    values: dict[str, dict[str, float | None]] = {}
    for row in ROWS:
        per_store: dict[str, float | None] = {}
        for name, result in stores.items():
            value = row.value(result)
            per_store[name] = None if value is None or not math.isfinite(float(value)) else float(value)
        values[row.id] = per_store
        rows.append({"id": row.id, "label": row.label(size), "unit": row.unit, "sign": row.sign, "values": per_store})
    targets = []
    for target in TARGETS:
        for name in stores:
            measured = values[target.row][name]
            targets.append(
                {
                    "id": target.id,
                    "label": target.label,
                    "store": name,
                    "row": target.row,
                    "measured": measured,
                    "op": target.op,
                    "bound": target.bound,
                    "unit": target.unit,
                    "pass": None if measured is None else _check(target.op, measured, target.bound),
                }
            )
    return rows, targets


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    elif abs(value) >= 1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3f}"
    return f"{text} {unit}".strip() if unit not in ("", "x") else f"{text}{unit}"


def markdown(rows: list[dict[str, Any]], targets: list[dict[str, Any]], stores: list[str]) -> str:
    lines = ["| measure | " + " | ".join(STORE_TITLES[s] for s in stores) + " |", "|---|" + "---|" * len(stores)]
    for row in rows:
        lines.append(f"| {row['label']} | " + " | ".join(fmt(row["values"].get(s), row["unit"]) for s in stores) + " |")
    lines += ["", "| target | " + " | ".join(STORE_TITLES[s] for s in stores) + " |", "|---|" + "---|" * len(stores)]
    for target in TARGETS:
        cells = []
        for store in stores:
            (entry,) = [t for t in targets if t["id"] == target.id and t["store"] == store]
            verdict = {True: "met", False: "**not met**", None: "not measured"}[entry["pass"]]
            cells.append(f"{fmt(entry['measured'], target.unit)}: {verdict}")
        lines.append(f"| {target.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def print_tables(rows: list[dict[str, Any]], targets: list[dict[str, Any]], stores: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=160)
    table = Table(title="orch benchmark")
    table.add_column("measure")
    for store in stores:
        table.add_column(STORE_TITLES[store], justify="right")
    for row in rows:
        table.add_row(row["label"], *(fmt(row["values"].get(s), row["unit"]) for s in stores))
    console.print(table)
    verdicts = Table(title="targets")
    verdicts.add_column("target")
    for store in stores:
        verdicts.add_column(STORE_TITLES[store], justify="right")
    for target in TARGETS:
        cells = []
        for store in stores:
            (entry,) = [t for t in targets if t["id"] == target.id and t["store"] == store]
            mark = {True: "[green]met[/]", False: "[red]not met[/]", None: "[yellow]not measured[/]"}[entry["pass"]]
            cells.append(f"{fmt(entry['measured'], target.unit)} {mark}")
        verdicts.add_row(target.label, *cells)
    console.print(verdicts)
