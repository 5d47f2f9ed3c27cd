"""`orch validate`, `agents`, `route`, `submit` and `run`: a plan and the configuration, before and as it starts
(submitted to a deployment, or run here)."""

from __future__ import annotations

import sys

import click
from rich.table import Table

from orch.cli.common import err, handle_errors, now_utc, out, read_plan, registry
from orch.durations import format_duration
from orch.intake.routing import route
from orch.settings import get_settings


@click.command()
@click.argument("plan_file", type=click.Path(dir_okay=False))
@handle_errors
def validate(plan_file: str) -> None:
    """Check PLAN_FILE: fields, ids, dependencies, cycles, agent types, file patterns, limits."""
    # lazy (start-up cost): rich's text and the prices model, for one line
    from orch.views.format import counted

    plan = read_plan(plan_file)
    edges = sum(len(t.after) for t in plan.tasks)
    agents = sorted({t.agent for t in plan.tasks})
    tasks, dependencies = counted(len(plan.tasks), "task"), counted(edges, "dependency", "dependencies")
    click.echo(f"{plan_file}: ok — plan {plan.name!r}: {tasks}, {dependencies}, agent types: {', '.join(agents)}")


@click.command()
@handle_errors
def agents() -> None:
    """List the agent types (config/agents.yaml) with their queues and limits."""
    table = Table(title=f"agent types ({get_settings().config_dir / 'agents.yaml'})", title_justify="left")
    for column in ("type", "queue", "executor", "cap", "timeout", "retries", "keywords"):
        table.add_column(column, overflow="fold")
    for agent in registry():
        table.add_row(
            agent.name,
            agent.queue,
            agent.executor,
            str(agent.concurrency),
            format_duration(agent.timeout),
            str(agent.retries),
            ", ".join(agent.keywords) or "(fallback)",
        )
    out.print(table)


@click.command("route")
@click.argument("text", nargs=-1, required=True)
@handle_errors
def route_command(text: tuple[str, ...]) -> None:
    """Print the agent type keyword routing picks for TEXT (first line), then why."""
    reg = registry()
    decision = route(" ".join(text), reg)
    click.echo(decision.agent)
    click.echo(f"why: {decision.reason}")
    for name, score, hits in decision.scores[1:4]:
        click.echo(f"also matched: {name} (score {score}: {', '.join(sorted(hits))})")


@click.command()
@click.argument("plan_file", type=click.Path(dir_okay=False))
@handle_errors
def submit(plan_file: str) -> None:
    """Store PLAN_FILE for a running deployment (its beat dispatches it); prints the plan id, then (on stderr) the
    store it went to, whether a beat serves that store, and any of its queues no worker reads."""
    # lazy (start-up cost): the store loads SQLAlchemy
    from orch.cli.serving import submitted_notes
    from orch.services.local_run import cancel_dead_runs
    from orch.store import plans
    from orch.store.db import read_session, write_session

    plan = read_plan(plan_file)
    cancel_dead_runs()
    with write_session() as session:
        plan_id = plans.submit_plan(session, plan, now_utc())
    click.echo(plan_id)
    with read_session() as session:  # where it went, and whether anything will run it (stderr: stdout is the id)
        for note in submitted_notes(session, plan_id):
            click.echo(f"orch submit: {note}", err=True)


@click.command()
@click.argument("plan_file", type=click.Path(dir_okay=False))
@click.option("--concurrency", type=int, default=None, help="Worker processes (default ORCH_EMBEDDED_CONCURRENCY).")
@handle_errors
def run(plan_file: str, concurrency: int | None) -> None:
    """Run PLAN_FILE here: private Redis, SQLite store, a worker and the beat tick; exit 0 if it succeeded.

    ORCH_BROKER_URL / ORCH_DATABASE_URL use real servers instead."""
    # lazy (start-up cost): orch run's services load the store, and with it SQLAlchemy
    from orch.services.local_run import check_agent_isolation, run_embedded

    plan = read_plan(plan_file)  # bad input: exit 2 before anything starts or is written
    check_agent_isolation(plan, err)
    code = run_embedded(plan, concurrency or get_settings().embedded_concurrency, out, err)
    sys.exit(code)
