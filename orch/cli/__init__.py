"""The `orch` command line."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from orch.durations import format_duration
from orch.errors import OrchError, PlanInvalid
from orch.intake.agents import AgentRegistry, load_agents
from orch.intake.plan import Plan
from orch.intake.plan_validation import load_plan
from orch.intake.routing import route
from orch.redaction import safe_url
from orch.settings import get_settings
from orch.states import PlanStatus

F = TypeVar("F", bound=Callable[..., Any])

out = Console()
err = Console(stderr=True)


def now_utc() -> datetime:
    return datetime.now(UTC)


def handle_errors(func: F) -> F:
    """Errors a user can cause: their message (one line per problem) on stderr and the error's exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except PlanInvalid as exc:
            for problem in exc.problems:
                click.echo(problem, err=True)
            sys.exit(exc.exit_code)
        except OrchError as exc:
            click.echo(f"orch: {exc}", err=True)
            sys.exit(exc.exit_code)
        except Exception as exc:
            unusable = _store_problem(exc)
            if unusable is None:
                raise
            click.echo(f"orch: {unusable}", err=True)
            sys.exit(unusable.exit_code)

    return wrapper  # type: ignore[return-value]


def _store_problem(exc: Exception) -> OrchError | None:
    """A driver error the store layer did not translate (a module with an engine of its own) that says the store
    is full, read-only or corrupt."""
    if "sqlalchemy" not in sys.modules:
        return None
    from sqlalchemy.exc import DBAPIError

    from orch.store.db import store_problem

    return store_problem(exc, get_settings().resolved_database_url) if isinstance(exc, DBAPIError) else None


def registry() -> AgentRegistry:
    return load_agents(get_settings().config_dir)


def read_plan(path: str) -> Plan:
    return load_plan(Path(path), registry(), roots=get_settings().workdir_root_paths)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="orch")
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Read ORCH_* settings from this file (as ORCH_ENV_FILE does); a .env in the current folder is never read.",
)
def main(env_file: str | None) -> None:
    """orch runs plans — DAGs of AI coding-agent tasks — on Celery workers, with an SQL store as the truth."""
    import os

    from orch.log import configure_logging
    from orch.services.hardening import harden_process
    from orch.settings import ENV_FILE_VARIABLE

    harden_process()
    if env_file is not None:
        os.environ[ENV_FILE_VARIABLE] = str(Path(env_file).resolve())  # the workers `orch run` starts read it too
        get_settings.cache_clear()
    configure_logging()  # log lines (not the commands' own output) as JSON or console text on stderr, redacted


@main.command()
@click.argument("plan_file", type=click.Path(dir_okay=False))
@handle_errors
def validate(plan_file: str) -> None:
    """Check PLAN_FILE: fields, ids, dependencies, cycles, agent types, file patterns, limits."""
    plan = read_plan(plan_file)
    edges = sum(len(t.after) for t in plan.tasks)
    agents = sorted({t.agent for t in plan.tasks})
    click.echo(
        f"{plan_file}: ok — plan {plan.name!r}: {len(plan.tasks)} tasks, {edges} dependencies, "
        f"agent types: {', '.join(agents)}"
    )


@main.command()
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


@main.command("route")
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


@main.command()
@click.argument("plan_file", type=click.Path(dir_okay=False))
@handle_errors
def submit(plan_file: str) -> None:
    """Store PLAN_FILE for a running deployment (its beat dispatches it); prints the plan id."""
    from orch.services.local_run import cancel_dead_runs
    from orch.store import plans
    from orch.store.db import write_session

    plan = read_plan(plan_file)
    cancel_dead_runs()
    with write_session() as session:
        plan_id = plans.submit_plan(session, plan, now_utc())
    click.echo(plan_id)


@main.command()
@click.argument("plan_ref", required=False)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def status(plan_ref: str | None, as_json: bool) -> None:
    """Show recent plans, or one plan's tasks (PLAN_REF: a plan id, or a name for its latest plan)."""
    from orch.services.local_run import cancel_dead_runs
    from orch.store import plans
    from orch.store.db import read_session
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
                out.print(plans_table(session, recent) if recent else "no plans yet")
            return
        snapshot = PlanSnapshot.load(session, plans.find_plan(session, plan_ref), now_utc())
    if as_json:
        click.echo(json.dumps(snapshot.as_json(), indent=2))
    else:
        out.print(summary_line(snapshot))
        out.print(tasks_table(snapshot, now_utc()))


@main.command()
@click.argument("plan_ref")
@click.argument("task_id")
@click.option("--attempt", "number", type=int, default=None, help="Attempt number (default: the latest).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing output until the attempt ends.")
@click.option(
    "--raw", is_flag=True, help="The log's bytes unchanged, escape sequences included (default: shown as escapes)."
)
@handle_errors
def logs(plan_ref: str, task_id: str, number: int | None, follow: bool, raw: bool) -> None:
    """Print a task attempt's output (its log file on this host, else the tail kept in the store). The agent's
    control and escape sequences are shown as visible escapes (\\x1b…), unless --raw."""
    from orch.errors import UserError
    from orch.states import AttemptStatus
    from orch.store import plans
    from orch.store.db import read_session
    from orch.views.terminal import InertDecoder, inert

    def load() -> tuple[str, Any]:
        with read_session() as session:
            plan = plans.find_plan(session, plan_ref)
            task = next((t for t in plans.plan_tasks(session, plan.id) if t.key == task_id), None)
            if task is None:
                raise UserError(f"plan {plan.id} has no task {task_id!r}")
            attempts = plans.task_attempts(session, task.pk)
        if not attempts:
            raise UserError(f"task {task_id!r} of plan {plan.id} has not started yet")
        chosen = attempts[-1] if number is None else next((a for a in attempts if a.number == number), None)
        if chosen is None:
            raise UserError(f"task {task_id!r} has no attempt {number} (it has {len(attempts)})")
        return plan.id, chosen

    decoder = InertDecoder()

    def write(data: bytes, final: bool = False) -> None:
        sys.stdout.buffer.write(data if raw else decoder.feed(data, final).encode("utf-8"))
        sys.stdout.flush()

    def copy_from(path: Path, offset: int) -> int:
        """Print the log from `offset` to its current end, a bounded chunk at a time; returns the new end."""
        with path.open("rb") as log:
            log.seek(offset)
            while chunk := log.read(LOG_CHUNK_BYTES):
                offset += len(chunk)
                write(chunk)
        return offset

    plan_id, attempt = load()
    # An attempt's log path is stored when it ends; while it runs, its log is where this host's workers write it.
    path = Path(attempt.log_path or get_settings().logs_dir.resolve() / plan_id / f"{task_id}.{attempt.number}.log")
    if not path.exists():
        click.echo(
            f"[log file not on this host ({inert(attempt.worker)}); the last output kept in the store:]", err=True
        )
        write(attempt.output_tail.encode("utf-8"), final=True)
        return
    offset = 0
    finished = not follow or attempt.status is not AttemptStatus.RUNNING
    while True:
        offset = copy_from(path, offset)
        if finished:
            write(b"", final=True)  # bytes of a character the log ends inside of: U+FFFD
            return
        time.sleep(0.25)
        _, attempt = load()
        finished = attempt.status is not AttemptStatus.RUNNING  # one more read after it ended


LOG_CHUNK_BYTES = 64 * 1024  # what `orch logs` reads and prints at a time, however large the log


# --- operator commands: each changes the store (compare-and-set) and prints what it changed -----------------

_STOP_NOTE = "their agents are stopped at their next heartbeat (ORCH_HEARTBEAT_SECONDS)"


def _plan_id(session: Any, plan_ref: str) -> str:
    from orch.store import plans

    return str(plans.find_plan(session, plan_ref).id)


@main.command()
@click.argument("plan_ref")
@click.argument("task_id", required=False)
@handle_errors
def cancel(plan_ref: str, task_id: str | None) -> None:
    """Cancel a plan (every unfinished task), or one TASK_ID of it (its dependants become upstream_failed).

    Nothing more is dispatched; running agents are killed, process group and all, on whichever host runs them."""
    from orch.services.local_run import cancel_dead_runs
    from orch.states import TaskStatus
    from orch.store import operator
    from orch.store.db import db_now, write_session

    cancel_dead_runs()
    with write_session() as session:
        plan_id = _plan_id(session, plan_ref)
        now = db_now(session)
        if task_id is not None:
            task = operator.cancel_task(session, plan_id, task_id, now, "cancelled by orch cancel")
            click.echo(f"plan {plan_id}: task {task_id} {task.status} -> cancelled")
            if task.status is TaskStatus.RUNNING:
                click.echo(f"its running agent ({task.attempt}. attempt): {_STOP_NOTE}")
            return
        counts = operator.cancel_plan(session, plan_id, now, "cancelled by orch cancel")
    if not counts:
        click.echo(f"plan {plan_id}: no unfinished task; plan cancelled")
        return
    changed = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    click.echo(f"plan {plan_id} cancelled: {sum(counts.values())} tasks -> cancelled ({changed})")
    if counts.get(TaskStatus.RUNNING):
        click.echo(f"{counts[TaskStatus.RUNNING]} were running: {_STOP_NOTE}")


@main.command()
@click.argument("plan_ref")
@handle_errors
def pause(plan_ref: str) -> None:
    """Stop dispatching PLAN's tasks; running ones finish. `orch resume` undoes it."""
    from orch.errors import TaskStateConflict
    from orch.states import TaskStatus
    from orch.store import operator, plans, reads
    from orch.store.db import db_now, write_session

    with write_session() as session:
        plan = plans.find_plan(session, plan_ref)
        if not operator.hold_plan(session, plan.id, PlanStatus.PAUSED, "paused by orch pause", db_now(session)):
            raise TaskStateConflict(f"plan {plan.id} is {plan.status}; only a running plan can be paused")
        running = reads.count_by_status(session, plan.id)
    click.echo(f"plan {plan.id}: running -> paused; nothing new is dispatched")
    if running.get(TaskStatus.RUNNING):
        click.echo(f"{running[TaskStatus.RUNNING]} running tasks finish on their own")


@main.command()
@click.argument("plan_ref")
@click.option("--budget-usd", type=click.FloatRange(min=0, min_open=True), help="A new budget in dollars.")
@click.option("--budget-tokens", type=click.IntRange(min=1), help="A new budget in tokens.")
@handle_errors
def resume(plan_ref: str, budget_usd: float | None, budget_tokens: int | None) -> None:
    """Dispatch a paused (or budget_exhausted) PLAN again, with a higher budget if given."""
    from orch.budget import Budget, describe
    from orch.store import operator, plans, spend
    from orch.store.db import db_now, write_session

    budget = Budget(budget_usd, budget_tokens) if budget_usd or budget_tokens else None
    with write_session() as session:
        plan = plans.find_plan(session, plan_ref)
        old = operator.resume_plan(session, plan.id, db_now(session), budget)
        spent = describe(spend.plan_spend(session, plan.id), spend.plan_budget(plan))
    click.echo(f"plan {plan.id}: {old} -> running" + (f"; budget now {spent}" if spent else ""))


@main.command()
@click.argument("plan_ref")
@click.argument("task_id")
@handle_errors
def retry(plan_ref: str, task_id: str) -> None:
    """Run a failed, upstream_failed or cancelled TASK_ID again, with its unfinished descendants (fresh retries)."""
    from orch.store import operator
    from orch.store.db import db_now, write_session

    with write_session() as session:
        plan_id = _plan_id(session, plan_ref)
        reopened = operator.retry_task(session, plan_id, task_id, db_now(session))
    click.echo(f"plan {plan_id}: {len(reopened)} tasks -> pending: {', '.join(reopened)}")


@main.command()
@click.argument("plan_ref")
@click.argument("task_id")
@handle_errors
def skip(plan_ref: str, task_id: str) -> None:
    """Mark TASK_ID done without running it (a running agent is stopped), so its dependants may run."""
    from orch.store import operator
    from orch.store.db import db_now, write_session

    with write_session() as session:
        plan_id = _plan_id(session, plan_ref)
        changed = operator.skip_task(session, plan_id, task_id, db_now(session))
    click.echo(f"plan {plan_id}: task {task_id} -> succeeded (skipped)")
    if changed[1:]:
        click.echo(f"{len(changed) - 1} dependants it had doomed -> pending: {', '.join(changed[1:])}")


@main.group()
def db() -> None:
    """The store's schema."""


@db.command("upgrade")
@handle_errors
def db_upgrade() -> None:
    """Apply the store's Alembic migrations (workers, beat and the CLI also do this at start)."""
    from orch.store.db import current_revision, ensure_schema

    engine = ensure_schema()
    click.echo(f"{safe_url(engine.url.render_as_string(hide_password=False))}: at revision {current_revision(engine)}")


@main.command()
@click.argument("plan_file", type=click.Path(dir_okay=False))
@click.option("--concurrency", type=int, default=None, help="Worker processes (default ORCH_EMBEDDED_CONCURRENCY).")
@handle_errors
def run(plan_file: str, concurrency: int | None) -> None:
    """Run PLAN_FILE here: private Redis, SQLite store, a worker and the beat tick; exit 0 if it succeeded.

    ORCH_BROKER_URL / ORCH_DATABASE_URL use real servers instead."""
    from orch.services.local_run import check_agent_isolation, run_embedded

    plan = read_plan(plan_file)  # bad input: exit 2 before anything starts or is written
    check_agent_isolation(plan, err)
    code = run_embedded(plan, concurrency or get_settings().embedded_concurrency, out, err)
    sys.exit(code)


# --- views of a plan: live progress, the completion report, the DAG -------------------------------------------


@main.command()
@click.argument("plan_ref")
@click.option(
    "--interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True, help="Seconds between reads."
)
@handle_errors
def watch(plan_ref: str, interval: float) -> None:
    """Live progress of PLAN_REF until it ends: a bar per agent type and overall, the running tasks and their time
    so far. Reads the store only. Exits 0 if the plan succeeded, 1 if not, 130 on Ctrl-C (the plan runs on)."""
    from orch.services.local_run import cancel_dead_runs
    from orch.views.progress import follow

    cancel_dead_runs()
    sys.exit(follow(plan_ref, out, interval))


@main.command()
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


@main.command()
@click.argument("plan", metavar="PLAN|FILE")
@click.option(
    "--max-nodes", type=click.IntRange(min=2), default=200, show_default=True, help="More tasks: one node per stage."
)
@click.option("--fenced", is_flag=True, help="Wrap it in a ```mermaid block for Markdown.")
@handle_errors
def graph(plan: str, max_nodes: int, fenced: bool) -> None:
    """Print a plan's DAG as a Mermaid flowchart, one subgraph per stage: a stored plan (id or name) coloured by
    its tasks' states, or a plan FILE (validated first) uncoloured."""
    from orch.store.db import read_session
    from orch.views import mermaid

    path = Path(plan)
    if path.exists() or path.suffix.lower() in (".yaml", ".yml", ".json"):
        validated = read_plan(plan)
        chart = mermaid.render(mermaid.nodes_of_plan(validated), f"plan file {plan}: {validated.name}", max_nodes)
    else:
        with read_session() as session:
            stored, nodes = mermaid.load_nodes(session, plan)
        chart = mermaid.render(nodes, f"plan {stored.id}: {stored.status.value}", max_nodes)
    if chart.note:
        click.echo(f"orch graph: {chart.note}", err=True)
    click.echo(mermaid.fenced(chart.text) if fenced else chart.text, nl=False)


@main.command()
@click.option("--host", default=None, help="Address to listen on (default ORCH_EXPORTER_HOST: 127.0.0.1).")
@click.option(
    "--port", type=click.IntRange(0, 65535), default=None, help="Port (default ORCH_EXPORTER_PORT: 9808; 0: any free)."
)
@handle_errors
def exporter(host: str | None, port: int | None) -> None:
    """Serve Prometheus metrics at /metrics, computed from the store (and the broker's queues) at each scrape."""
    from orch.services.exporter.server import serve

    settings = get_settings()
    listen_port = settings.exporter_port if port is None else port
    serve(
        host or settings.exporter_host,
        listen_port,
        settings,
        lambda url: click.echo(f"orch exporter: serving {url}", err=True),
    )


@main.command("flower")
@click.option("--port", type=int, default=None, help="Port to serve on (Flower's default: 5555).")
@click.option(
    "--address", default=None, help="Address to bind (default: FLOWER_ADDRESS, else 127.0.0.1; 0.0.0.0: every one)."
)
@click.option("--no-auth", is_flag=True, help="Allow starting without ORCH_FLOWER_AUTH (prints a warning).")
@handle_errors
def flower_command(port: int | None, address: str | None, no_auth: bool) -> None:
    """Run Flower (`celery -A orch flower`) behind basic auth from ORCH_FLOWER_AUTH (user:password[,…], passwords of
    12 characters or more), listening on 127.0.0.1 unless --address (or FLOWER_ADDRESS) says otherwise."""
    from orch.services.flower import exec_flower

    exec_flower(port, address, no_auth, get_settings())


@main.command("check")
@click.option("--timeout", type=click.FloatRange(min=0.1), default=3.0, show_default=True, help="Seconds per server.")
@handle_errors
def check_command(timeout: float) -> None:
    """Check the store (reachable, migrations current), the broker, and a worker for every queue with queued
    tasks; one line per check, exit 0 if all are ok, 1 otherwise."""
    from orch.services.check import render, run_checks

    checks = run_checks(get_settings(), timeout)
    for line in render(checks):
        click.echo(line)
    sys.exit(0 if all(check.ok for check in checks) else 1)


__all__ = ["main"]
