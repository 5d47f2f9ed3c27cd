"""`orch plan`: a goal in, a validated plan file out (written by the planner agent type, repaired until valid),
shown as a table with its estimate; `--run` runs it as `orch run` does. And the estimate `orch validate --estimate`
prints for any plan."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from orch.cli.common import (
    check_workdir_here,
    err,
    handle_errors,
    out,
    read_plan,
    registry,
    repository_bases,
)
from orch.decisions.plan_shape import DEFAULT_MAX_STAGES, DEFAULT_MAX_TASKS
from orch.errors import OrchError, UserError
from orch.settings import get_settings

if TYPE_CHECKING:
    from rich.console import Console

    from orch.decisions.estimate import AgentHistory, HistoryKey, PlanEstimate
    from orch.intake.plan import Plan

MAX_GOAL_CHARS = 20_000
INTERRUPTED = 130  # as orch run: 128 + SIGINT
# Characters a YAML reader folds or drops in a plain or block scalar (line breaks of its own, a byte-order mark):
# a string holding one is written double-quoted, where they are escapes.
_FOLDED = frozenset("\r\x85\u2028\u2029\ufeff")


# --- the estimate (orch plan, orch validate --estimate) -----------------------------------------------------------


def store_history(keys: set[HistoryKey]) -> tuple[dict[HistoryKey, AgentHistory], str | None]:
    """Medians per (agent type, executor) from the store where the settings point, if there is one (never created
    here); and a note when it could not be read."""
    # lazy (start-up cost): the store loads SQLAlchemy
    from sqlalchemy.exc import SQLAlchemyError

    from orch.errors import StoreMissing
    from orch.store.creation import existing_store_only
    from orch.store.db import read_session, store_name
    from orch.store.history import agent_histories

    try:
        with existing_store_only(), read_session() as session:
            return agent_histories(session, keys), None
    except StoreMissing:
        return {}, None
    except (OrchError, SQLAlchemyError) as exc:
        where = store_name(get_settings().resolved_database_url)
        return {}, f"no history read from the {where}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"


def plan_estimate(plan: Plan) -> tuple[PlanEstimate, str | None]:
    """The plan's estimate, from the store's history where it has some; and a note when the store could not be read."""
    from orch.decisions.estimate import EstimatedTask, estimate_plan
    from orch.decisions.plan_shape import ShapedTask

    tasks = [
        EstimatedTask(
            ShapedTask(task.key, task.after, task.agent, task.files, task.success),
            task.agent,
            task.estimate,
            task.executor.value,
        )
        for task in plan.tasks
    ]
    history, note = store_history({task.history_key for task in tasks})
    return estimate_plan(tasks, history), note


def print_estimate(plan: Plan, console: Console) -> None:
    """`estimate:` and its lines (task ids and agent types inert), a note on stderr if the store was unreadable."""
    from orch.decisions.estimate import estimate_lines
    from orch.views.format import line

    estimate, note = plan_estimate(plan)
    if note:
        err.print(line(f"orch: note: {note}"), highlight=False)
    console.print("estimate:", highlight=False, markup=False)
    for text in estimate_lines(estimate):
        console.print(line(f"  {text}"), highlight=False)


# --- the plan as a table ------------------------------------------------------------------------------------------


def print_plan_table(plan: Plan, console: Console) -> None:
    """The plan's tasks: id, title, agent, after, files, success, verify (and command, for tasks that have one)."""
    from rich.table import Table

    from orch.views.format import counted, line, show_table

    commands = any(task.command for task in plan.tasks)
    table = Table(title=line(f"plan {plan.name} ({counted(len(plan.tasks), 'task')})"), title_justify="left")
    columns = ["id", "title", "agent", "after", "files", "success", "verify", *(["command"] if commands else [])]
    for column in columns:
        table.add_column(column, overflow="fold")
    for task in plan.tasks:
        cells = [
            task.key, task.title, task.agent, ", ".join(task.after), ", ".join(task.files), task.success,
            task.verify or "",
        ]  # fmt: skip
        if commands:
            cells.append(task.command or "")
        table.add_row(*(line(cell) for cell in cells))
    show_table(console, table)


# --- writing the plan ---------------------------------------------------------------------------------------------


def is_json_path(path: Path) -> bool:
    return path.suffix.lower() == ".json"


def plan_text(path: Path, document: Any, header: str) -> str:
    """The plan file's text: JSON for a `.json` file (JSON has no comments: no header), readable YAML otherwise."""
    if is_json_path(path):
        return json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    return plan_yaml(document, header)


def plan_yaml(document: Any, header: str) -> str:
    """`document` as readable YAML: fields in their order, multi-line text as `|` blocks, a string a YAML reader
    would change (a line break of its own, a byte-order mark) double-quoted; `header` as comments."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style: str | None = None
        if not _FOLDED.isdisjoint(value):
            style = '"'
        elif "\n" in value and _block_safe(value):
            style = "|"
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    body = yaml.dump(document, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=120, default_flow_style=False)
    comments = "".join(f"# {part}\n" for part in header.splitlines())
    return comments + body


def _block_safe(value: str) -> bool:
    """Whether a multi-line string can be a `|` block: no other control characters, no trailing spaces on a line."""
    return all((char.isprintable() or char == "\n") for char in value) and not any(
        part.endswith((" ", "\t")) for part in value.split("\n")
    )


def _write_new(path: Path, text: str, force: bool) -> None:
    """`text` into `path`; an existing file only with `force` (else UserError naming it)."""
    try:
        with path.open("w" if force else "x", encoding="utf-8") as file:
            file.write(text)
    except FileExistsError:
        raise UserError(f"{path} exists: pass --force to overwrite it, or -o another file") from None
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None


def draft_path(path: Path) -> Path:
    """Where a rejected draft goes: beside the plan file, `plan.yaml` → `plan.draft.yaml` (then -2, -3… if taken,
    a dangling link too)."""
    suffix = path.suffix or ".yaml"
    candidate = path.with_name(f"{path.stem}.draft{suffix}")
    number = 2
    while os.path.lexists(candidate):
        candidate = path.with_name(f"{path.stem}.draft-{number}{suffix}")
        number += 1
    return candidate


def _read_prd(path: str | None) -> tuple[str | None, str | None]:
    """The requirements document: a regular file (a FIFO would block, a device never end), UTF-8, bounded."""
    if path is None:
        return None, None
    from orch.services.planner import MAX_PRD_CHARS

    try:
        # O_NONBLOCK: a FIFO put in the file's place is opened without waiting for a writer, then refused
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except (OSError, ValueError) as exc:
        raise UserError(f"--from {path}: cannot read it: {getattr(exc, 'strerror', None) or exc}") from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UserError(f"--from {path}: not a regular file")
        try:
            data = file.read(4 * MAX_PRD_CHARS + 1)  # UTF-8: at most 4 bytes a character
        except OSError as exc:
            raise UserError(f"--from {path}: cannot read it: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"--from {path}: not UTF-8 text") from None
    if len(text) > MAX_PRD_CHARS:
        raise UserError(f"--from {path}: more than {MAX_PRD_CHARS:,} characters; give the part the goal needs")
    return text, os.path.basename(path)


def _confirmed(tasks: int, yes: bool) -> bool:
    """Whether to run a plan of `tasks` tasks: yes below ORCH_CONFIRM_ABOVE or with --yes, else the user's answer on
    a terminal (no terminal: UserError)."""
    above = get_settings().confirm_above
    if yes or tasks <= above:
        return True
    if not sys.stdin.isatty():
        raise UserError(
            f"the plan has {tasks} tasks, more than ORCH_CONFIRM_ABOVE ({above}): run it from a terminal to confirm, "
            "or pass --yes"
        )
    return click.confirm(f"Run its {tasks} tasks now?", default=False, err=True)


def _rounds(n: int) -> str:
    return f"{n} round" if n == 1 else f"{n} rounds"


def _run_written(path: Path) -> None:
    """Run the written plan file as `orch run FILE` does (read again from the file: what runs is what was written)."""
    from orch.services.local_run import check_agent_isolation, run_embedded

    plan = read_plan(str(path))
    check_workdir_here(plan)
    check_agent_isolation(plan, err)
    bases = repository_bases(plan)
    sys.exit(run_embedded(plan, get_settings().embedded_concurrency, out, err, False, bases, None))


def _rejected(rejected: Any, path: Path) -> None:
    """A draft that never became valid: its problems, and the draft saved beside the plan file; exit 2."""
    from orch.services.planner import DraftRejected, shown_problems
    from orch.views.terminal import inert

    assert isinstance(rejected, DraftRejected)
    for problem in shown_problems(rejected.problems):
        click.echo(inert(problem), err=True)
    rounds = _rounds(rejected.rounds)
    if rejected.draft is None:
        click.echo(f"orch plan: the planner gave no plan in {rounds}; nothing written", err=True)
        sys.exit(2)
    saved = draft_path(path)
    header = f"A draft of `orch plan` that still has problems after {rounds} (listed by orch plan): fix them, then\n"
    header += f"`orch validate {inert(saved.name)}`."
    _write_new(saved, plan_text(saved, rejected.draft, header), False)  # a new name: never follows a link
    click.echo(f"orch plan: the draft still has problems after {rounds}; it is in {inert(str(saved))}", err=True)
    sys.exit(2)


@click.command("plan")
@click.argument("goal")
@click.option("--from", "prd", type=click.Path(dir_okay=False), default=None, help="A requirements document (PRD).")
@click.option(
    "--repo",
    type=click.Path(file_okay=False),
    default=".",
    show_default=True,
    help="The repository the plan works in: the planner sees its layout; a git repository becomes the plan's "
    "repo: (tasks in worktrees), another folder its workdir:.",
)
@click.option("-o", "--output", "output", default="plan.yaml", show_default=True, help="The plan file to write.")
@click.option("--force", is_flag=True, help="Overwrite the plan file if it exists.")
@click.option(
    "--executor",
    type=click.Choice(["anthropic", "claude-code"]),
    default=None,
    help="How the planner runs (default: the planner agent type's executor). claude-code reads the repository first, "
    "with read-only tools.",
)
@click.option(
    "--max-tasks",
    type=click.IntRange(1, 1000),
    default=DEFAULT_MAX_TASKS,
    show_default=True,
    help="More tasks than this is a warning.",
)
@click.option(
    "--max-stages",
    type=click.IntRange(1, 1000),
    default=DEFAULT_MAX_STAGES,
    show_default=True,
    help="More stages than this is an error that asks to split the goal.",
)
@click.option(
    "--repair-rounds",
    type=click.IntRange(0, 10),
    default=3,
    show_default=True,
    help="Times a draft's problems go back to the planner.",
)
@click.option("--run", "run_it", is_flag=True, help="Then run the plan here, as `orch run` does.")
@click.option("--yes", is_flag=True, help="With --run: no confirmation, however many tasks.")
@handle_errors
def plan_command(
    goal: str,
    prd: str | None,
    repo: str,
    output: str,
    force: bool,
    executor: str | None,
    max_tasks: int,
    max_stages: int,
    repair_rounds: int,
    run_it: bool,
    yes: bool,
) -> None:
    """Write a plan for GOAL with the planner agent type, checked by orch's validator and seed 002's rules and sent
    back with its problems until valid; print it as a table with its estimate, and write it (-o). Exit 0, 2 for bad
    input or a draft never valid (saved beside -o as NAME.draft.yaml), 1 when the planner cannot be reached."""
    from orch.decisions.plan_shape import DraftLimits
    from orch.services.planner import DraftRejected, PlanRequest, planner_type, write_plan
    from orch.views.terminal import inert

    if not goal.strip():
        raise UserError('give a goal: orch plan "what the plan should achieve"')
    if len(goal) > MAX_GOAL_CHARS:
        raise UserError(f"the goal is longer than {MAX_GOAL_CHARS:,} characters; put the details in a file (--from)")
    path = Path(output)
    if path.is_dir():
        raise UserError(f"-o {output}: a folder; name the plan file to write")
    if os.path.lexists(path) and not force:
        raise UserError(f"{output} exists: pass --force to overwrite it, or -o another file")
    if not path.absolute().parent.is_dir():
        raise UserError(f"-o {output}: its folder {path.absolute().parent} does not exist")
    if not Path(repo).is_dir():
        raise UserError(f"--repo {repo}: not a folder")
    prd_text, prd_name = _read_prd(prd)
    settings = get_settings()
    if run_it and not yes and not sys.stdin.isatty():
        raise UserError(
            f"--run asks before it runs a plan of more than ORCH_CONFIRM_ABOVE ({settings.confirm_above}) tasks, and "
            "there is no terminal to ask on: pass --yes, or run from a terminal"
        )
    reg = registry()
    chosen = executor or planner_type(reg).executor.value
    if chosen not in ("anthropic", "claude-code"):
        raise UserError(f"the planner agent type's executor is {chosen!r}; `orch plan` runs anthropic or claude-code")
    request = PlanRequest(
        goal=goal,
        repo=Path(repo),
        out=path,
        executor=chosen,
        limits=DraftLimits(max_tasks=max_tasks, max_stages=max_stages),
        repair_rounds=repair_rounds,
        prd=prd_text,
        prd_name=prd_name,
        roots=tuple(settings.workdir_root_paths),
    )
    try:
        planned = write_plan(request, reg, dict(os.environ), settings.claude_bin)
    except KeyboardInterrupt:
        click.echo("orch plan: interrupted; nothing written", err=True)
        sys.exit(INTERRUPTED)
    except DraftRejected as rejected:
        _rejected(rejected, path)
        return
    except OrchError as exc:
        if not isinstance(exc, UserError):
            click.echo(inert(f"orch plan: {exc}"), err=True)
            sys.exit(exc.exit_code)
        raise
    model, name = inert(planner_type(reg).model), inert(path.name)  # one comment line each, whatever they hold
    header = (
        f"Written by `orch plan` (planner: {chosen}, {model}; {_rounds(planned.rounds)}). Review it before it runs:\n"
        f"`orch validate --estimate {name}`, then `orch run {name}`."
    )
    _write_new(path, plan_text(path, planned.document, header), force)
    print_plan_table(planned.plan, out)
    print_estimate(planned.plan, out)
    for warning in planned.warnings:
        click.echo(inert(f"orch plan: warning: {warning}"), err=True)
    tokens = f", {planned.usage.total:,} tokens" if planned.usage.total else ""
    click.echo(f"orch plan: wrote {inert(str(path))} ({_rounds(planned.rounds)}{tokens})", err=True)
    if not run_it:
        return
    if not _confirmed(len(planned.plan.tasks), yes):
        click.echo(f"orch plan: not run; `orch run {inert(str(path))}` runs it", err=True)
        return
    _run_written(path)
