"""`orch status`, `logs`, `watch`, `report` and `graph`: what the store holds of a plan, read-only (the plans of
an `orch run` that died on this host are cancelled first where a command says so)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from orch.cli.common import handle_errors, now_utc, out, plan_input_options, read_plan
from orch.intake.tasklists.importing import PlanInput
from orch.settings import get_settings


@click.command()
@click.argument("plan_ref", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def status(plan_ref: str | None, as_json: bool) -> None:
    """Show recent plans, or one plan's tasks (PLAN_REF: a plan id, or a name for its latest plan)."""
    # lazy (start-up cost): the views read the store, which loads SQLAlchemy
    from orch.cli.serving import plan_notes
    from orch.services.local_run import cancel_dead_runs
    from orch.store import plans
    from orch.store.db import read_session
    from orch.views.format import line, show_table
    from orch.views.status import PlanSnapshot, plans_table, summary_line, tasks_table

    cancel_dead_runs()
    with read_session() as session:
        if plan_ref is None:
            recent = plans.list_plans(session)
            if as_json:
                click.echo(
                    json.dumps(
                        {"plans": [{"id": p.id, "name": p.name, "status": p.status.value} for p in recent]},
                        indent=2,
                    )
                )
            else:
                if recent:
                    show_table(out, plans_table(session, recent))
                else:
                    out.print("no plans yet")
            return
        snapshot = PlanSnapshot.load(session, plans.find_plan(session, plan_ref), now_utc())
        notes = plan_notes(session, snapshot.plan)  # no beat, a queue nobody reads: said, not left to guess
    if as_json:
        click.echo(json.dumps({**snapshot.as_json(), "notes": notes}, indent=2))
    else:
        out.print(summary_line(snapshot))
        for note in notes:
            out.print(line(note), style="yellow", soft_wrap=True)  # a note never folds
        show_table(out, tasks_table(snapshot, now_utc()))


@click.command()
@click.argument("plan_ref")
@click.argument("task_id")
@click.option("--attempt", "number", type=int, default=None, help="Attempt number (default: the latest).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing output until the attempt ends.")
@click.option(
    "--raw", is_flag=True, help="The log's bytes unchanged, escape sequences included (default: shown as escapes)."
)
@handle_errors
def logs(plan_ref: str, task_id: str, number: int | None, follow: bool, raw: bool) -> None:
    """Print a task attempt's output (its log file on this host, else the tail kept in the store once it ended);
    --follow prints a running attempt's log as it grows, then how the attempt ended. Exits 2 when there is no log
    to show (not started, never ran, running on another host's worker). The agent's control and escape sequences
    are shown as visible escapes (\\x1b…), unless --raw."""
    # lazy (start-up cost): the views read the store, which loads SQLAlchemy
    from orch.views.logs import print_log

    print_log(plan_ref, task_id, number, follow, raw, get_settings().logs_dir)


@click.command()
@click.argument("plan_ref")
@click.option(
    "--interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True, help="Seconds between reads."
)
@handle_errors
def watch(plan_ref: str, interval: float) -> None:
    """Live progress of PLAN_REF until it ends: a bar per agent type and overall, the running tasks and their time
    so far, and why it cannot move if no beat serves its store or no worker reads a queue of its queued tasks.
    Reads the store (and asks the broker which queues have readers). Exits 0 if the plan succeeded, 1 if not, 130
    on Ctrl-C (the plan runs on)."""
    # lazy (start-up cost): the views read the store, which loads SQLAlchemy
    from orch.cli.serving import plan_notes
    from orch.services.local_run import cancel_dead_runs
    from orch.views.progress import follow

    cancel_dead_runs()
    sys.exit(follow(plan_ref, out, interval, notes=plan_notes))


@click.command()
@click.argument("plan_ref")
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md", show_default=True)
@click.option(
    "--max-tasks",
    type=click.IntRange(min=1),
    default=500,
    show_default=True,
    help="Rows per Markdown section; JSON has every task.",
)
@handle_errors
def report(plan_ref: str, fmt: str, max_tasks: int) -> None:
    """PLAN_REF's completion report: per task its status, agent type, attempts, durations, tokens, cost,
    verification, files changed and failure reasons, then the totals. Markdown (for an issue) or JSON."""
    # lazy (start-up cost): the views read the store, which loads SQLAlchemy
    from orch.store.db import read_session
    from orch.views.report import load_report
    from orch.views.report_markdown import render_markdown
    from orch.views.terminal import inert_json

    with read_session() as session:
        completion = load_report(session, plan_ref)
    if fmt == "json":
        click.echo(inert_json(completion.as_json()))
    else:
        click.echo(render_markdown(completion, max_tasks), nl=False)


@click.command()
@click.argument("plan", metavar="PLAN|FILE")
@click.option(
    "--max-nodes", type=click.IntRange(min=2), default=200, show_default=True, help="More tasks: one node per stage."
)
@click.option("--fenced", is_flag=True, help="Wrap it in a ```mermaid block for Markdown.")
@plan_input_options
@handle_errors
def graph(plan: str, max_nodes: int, fenced: bool, how: PlanInput) -> None:
    """Print a plan's DAG as a Mermaid flowchart, one subgraph per stage: a stored plan (id or name) coloured by
    its tasks' states, or a plan FILE (validated first) uncoloured."""
    # lazy (start-up cost): the views read the store, which loads SQLAlchemy
    from orch.store.db import read_session
    from orch.views import mermaid

    path = Path(plan)
    # a folder named like the plan (its repository, say) is not a plan file: the stored plan wins
    if path.is_file() or (not path.is_dir() and path.suffix.lower() in (".yaml", ".yml", ".json", ".md")):
        validated = read_plan(plan, how)
        chart = mermaid.render(mermaid.nodes_of_plan(validated), f"plan file {plan}: {validated.name}", max_nodes)
    else:
        with read_session() as session:
            stored, nodes = mermaid.load_nodes(session, plan)
        chart = mermaid.render(nodes, f"plan {stored.id}: {stored.status.value}", max_nodes)
    if chart.note:
        click.echo(f"orch graph: {chart.note}", err=True)
    click.echo(mermaid.fenced(chart.text) if fenced else chart.text, nl=False)
