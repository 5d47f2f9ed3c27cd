"""`orch validate`, `agents`, `route`, `submit` and `run`: a plan and the configuration, before and as it starts
(submitted to a deployment, or run here)."""

from __future__ import annotations

import sys

import click
from rich.table import Table

from orch.cli.common import (
    check_workdir_here,
    err,
    follow_options,
    handle_errors,
    now_utc,
    out,
    plan_input_options,
    read_plan,
    registry,
    repository_bases,
)
from orch.durations import format_duration
from orch.intake.routing import route, weakness
from orch.intake.tasklists.importing import PlanInput
from orch.settings import get_settings


@click.command()
@click.argument("plan_file", type=click.Path(dir_okay=False))
@plan_input_options
@click.option(
    "--estimate",
    is_flag=True,
    help="Then its estimate: tasks, stages, critical path, width, agent types; tokens, cost and duration from the "
    "store's history per agent type, else the plan's estimates.",
)
@handle_errors
def validate(plan_file: str, how: PlanInput, estimate: bool) -> None:
    """Check PLAN_FILE (a plan, or a task list: spec-kit, task-master, Kiro, Markdown checklist): fields, ids,
    dependencies, cycles, agent types, file patterns, limits, and that its workdir is a folder on this host; then
    show the route of each task without `agent:` (weak ones flagged), and with --estimate what it should take."""
    # lazy (start-up cost): rich's text and the prices model, for a few lines
    from orch.views.format import counted
    from orch.views.routes import route_lines

    plan = read_plan(plan_file, how)
    check_workdir_here(plan)
    edges = sum(len(t.after) for t in plan.tasks)
    agents = sorted({t.agent for t in plan.tasks})
    tasks, dependencies = counted(len(plan.tasks), "task"), counted(edges, "dependency", "dependencies")
    click.echo(f"{plan_file}: ok — plan {plan.name!r}: {tasks}, {dependencies}, agent types: {', '.join(agents)}")
    for line in route_lines(plan):
        click.echo(line)
    if estimate:
        from orch.cli.planning import print_estimate

        print_estimate(plan, out)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def agents(as_json: bool) -> None:
    """List the agent types (config/agents.yaml) with their queues and limits."""
    # lazy (start-up cost): rich's text and the prices model
    from orch.views.format import line, show_table
    from orch.views.terminal import inert_json

    path = get_settings().config_dir / "agents.yaml"
    reg = registry()
    if as_json:
        types = [
            {
                "type": agent.name,
                "description": agent.description,
                "queue": agent.queue,
                "executor": agent.executor.value,
                "concurrency": agent.concurrency,
                "timeout_seconds": agent.timeout,
                "retries": agent.retries,
                "keywords": list(agent.keywords),
            }
            for agent in reg
        ]
        click.echo(inert_json({"config": str(path), "fallback": reg.fallback, "agent_types": types}))
        return
    table = Table(title=line(f"agent types ({path})"), title_justify="left")
    for column in ("type", "queue", "executor", "cap", "timeout", "retries", "keywords"):
        table.add_column(column, overflow="fold")
    for agent in reg:
        table.add_row(
            line(agent.name),
            line(agent.queue),
            agent.executor,
            str(agent.concurrency),
            format_duration(agent.timeout),
            str(agent.retries),
            line(", ".join(agent.keywords) or "(fallback)"),
        )
    show_table(out, table)


@click.command("route")
@click.argument("text", nargs=-1, required=True)
@handle_errors
def route_command(text: tuple[str, ...]) -> None:
    """Print the agent type keyword routing picks for TEXT (first line), then why."""
    reg = registry()
    decision = route(" ".join(text), reg)
    click.echo(decision.agent)
    click.echo(f"why: {decision.reason}")
    weak = weakness(decision)
    if weak is not None:
        click.echo(f"weak: {weak}; pin it with agent: in the plan if it is not the type you mean")
    for name, score, hits in decision.scores[1:4]:
        click.echo(f"also matched: {name} (score {score}: {', '.join(sorted(hits))})")


@click.command()
@click.argument("plan_file", type=click.Path(dir_okay=False))
@plan_input_options
@handle_errors
def submit(plan_file: str, how: PlanInput) -> None:
    """Store PLAN_FILE (a plan or a task list) for a running deployment (its beat dispatches it); prints the plan
    id, then (on stderr) the store it went to, whether a beat serves that store, and any of its queues no worker
    reads. `orch sync` keeps a task list and its plan in sync."""
    # lazy (start-up cost): the store loads SQLAlchemy
    from orch.cli.serving import submitted_notes
    from orch.services.local_run import cancel_dead_runs
    from orch.store import plans
    from orch.store.db import read_session, write_session

    plan = read_plan(plan_file, how)
    bases = repository_bases(plan)
    cancel_dead_runs()
    with write_session() as session:
        plan_id = plans.submit_plan(session, plan, now_utc(), bases)
    click.echo(plan_id)
    with read_session() as session:  # where it went, and whether anything will run it (stderr: stdout is the id)
        for note in submitted_notes(session, plan_id):
            click.echo(f"orch submit: {note}", err=True)


@click.command()
@click.argument("plan_file", type=click.Path(dir_okay=False))
@click.option("--concurrency", type=int, default=None, help="Worker processes (default ORCH_EMBEDDED_CONCURRENCY).")
@click.option("--json", "as_json", is_flag=True, help="End with `orch status --json`'s document instead of the table.")
@plan_input_options
@click.option(
    "--watch", is_flag=True, help="A task list: apply its saved edits as the plan runs, and go on until Ctrl-C."
)
@follow_options
@handle_errors
def run(
    plan_file: str,
    concurrency: int | None,
    as_json: bool,
    how: PlanInput,
    watch: bool,
    debounce: float,
    mark_running: bool | None,
) -> None:
    """Run PLAN_FILE (a plan, or a task list whose boxes are ticked as its tasks succeed) here: private Redis,
    SQLite store, a worker and the beat tick; exit 0 if it succeeded.

    ORCH_BROKER_URL / ORCH_DATABASE_URL use real servers instead."""
    # lazy (start-up cost): orch run's services load the store, and with it SQLAlchemy
    from orch.cli.tasklists import list_run
    from orch.services.local_run import check_agent_isolation, run_embedded

    plan = read_plan(plan_file, how)  # bad input: exit 2 before anything starts or is written
    tasklist = list_run(plan, how, watch, debounce, mark_running)
    check_workdir_here(plan)
    check_agent_isolation(plan, err)
    bases = repository_bases(plan)
    concurrency = concurrency or get_settings().embedded_concurrency
    sys.exit(run_embedded(plan, concurrency, out, err, as_json, bases, tasklist))
