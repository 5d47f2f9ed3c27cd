"""What every `orch` command shares: its consoles, its error handling, and reading the agent types and a plan."""

from __future__ import annotations

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from orch.errors import OrchError, PlanInvalid
from orch.intake.agents import AgentRegistry, load_agents
from orch.intake.plan import Plan, quoted
from orch.intake.plan_validation import load_plan
from orch.intake.tasklists.importing import FORMAT_CHOICES, PlanInput
from orch.settings import get_settings

F = TypeVar("F", bound=Callable[..., Any])

out = Console()
err = Console(stderr=True)
for _console in (out, err):
    # piped (a log, `| cat`): a line printed is one line, whatever its length; tables are laid out plain
    # (orch.views.format.show_table). On a terminal, rich fits text to the window.
    _console.soft_wrap = not _console.is_terminal


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
    # lazy (start-up cost): SQLAlchemy, loaded by now only if a command used the store
    from sqlalchemy.exc import DBAPIError

    from orch.store.db import store_problem

    return store_problem(exc, get_settings().resolved_database_url) if isinstance(exc, DBAPIError) else None


def registry() -> AgentRegistry:
    return load_agents(get_settings().config_dir)


def planner_queue() -> str:
    """The queue re-plan attempts go to: the planner agent type's."""
    from orch.dispatch.reconcile import replan_route  # lazy (start-up cost): the dispatcher loads the store

    return replan_route(registry()).queue


def read_plan(path: str, how: PlanInput | None = None) -> Plan:
    """A plan file, or a task list read as one (`how`: its format, the list's options, a dry run's executor)."""
    # lazy (start-up cost): config/targets.yaml, read for the plans that name a target
    from orch.intake.targets import load_targets

    settings = get_settings()
    targets = load_targets(settings.config_dir)
    if how is None or (how.format == "plan" and how.executor is None):
        return load_plan(Path(path), registry(), roots=settings.workdir_root_paths, targets=targets)
    from orch.intake.tasklists.importing import load_any_plan

    return load_any_plan(Path(path), registry(), settings.workdir_root_paths, targets=targets, how=how)


def plan_input_options(func: F) -> F:
    """`--format`, `--tag`, `--include-optional` and `--executor`: how a command reads a plan file or task list; the
    command gets them as one `how` (a PlanInput)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from orch.intake.tasklists.reading import ReadOptions

        options = ReadOptions(tag=kwargs.pop("tag"), include_optional=kwargs.pop("include_optional"))
        kwargs["how"] = PlanInput(format=kwargs.pop("list_format"), options=options, executor=kwargs.pop("executor"))
        return func(*args, **kwargs)

    decorated: Any = wrapper
    for option in reversed(_PLAN_INPUT_OPTIONS):
        decorated = option(decorated)
    return decorated  # type: ignore[no-any-return]


def follow_options(func: F) -> F:
    """`--debounce` and `--mark-running/--no-mark-running`: how `orch run --watch` and `orch sync` follow a list."""
    func = click.option(
        "--mark-running/--no-mark-running",
        default=None,
        help="Mark running tasks in progress ([-]); default where the format has the mark (Kiro, task-master).",
    )(func)
    return click.option(
        "--debounce",
        type=click.FloatRange(min=0.1, max=600),
        default=2.0,
        show_default=True,
        help="Seconds a followed list must stay unchanged before its edits are applied.",
    )(func)


_PLAN_INPUT_OPTIONS = (
    click.option(
        "--format",
        "list_format",
        type=click.Choice(FORMAT_CHOICES),
        default="auto",
        show_default=True,
        help="What the file is: an orch plan or a task list (spec-kit, task-master, Kiro, Markdown checklist); auto "
        "tells from its content.",
    ),
    click.option("--tag", default=None, help="task-master: the tag to read (default: the current tag, else master)."),
    click.option("--include-optional", is_flag=True, help="Kiro: run the optional tasks (`- [ ]*`) too."),
    click.option(
        "--executor",
        type=click.Choice(["noop", "shell"]),
        default=None,
        help="A task list's dry run: every task runs with this executor instead of its agent type's.",
    ),
)


def repository_bases(plan: Plan) -> dict[str, str]:
    """Each repository's base commit, read from its remote (exit 2 naming an unreachable one or a missing base),
    and a note on stderr about a local checkout orch will not touch."""
    if not plan.repositories:
        return {}
    # lazy (start-up cost): git, for plans with a repository
    from orch.services.repositories import base_commits, checkout_notes

    bases = base_commits(plan, get_settings())
    for note in checkout_notes(plan, bases):
        click.echo(f"orch: note: {note}", err=True)
    return bases


def check_workdir_here(plan: Plan) -> None:
    """`orch validate` and `orch run`: the plan's workdir must be a folder on this host, else PlanInvalid (exit 2)
    naming it and the tasks it would fail (a worker would fail each, spending a retry and dooming its dependants).
    `orch submit` does not check: the plan may be meant for workers on other hosts."""
    if plan.workdir.is_dir():
        return
    # lazy (start-up cost): rich's text, for one line
    from orch.views.format import counted

    written = plan.document.get("workdir", ".")
    what = "is not a folder" if plan.workdir.exists() else "does not exist on this host"
    keys = [task.key for task in plan.tasks]
    shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5:,} more" if len(keys) > 5 else "")
    raise PlanInvalid(
        plan.source,
        [
            f"{plan.source}: workdir {quoted(written)} is {plan.workdir}, which {what}; its "
            f"{counted(len(keys), 'task')} ({shown}) would fail there"
        ],
    )
