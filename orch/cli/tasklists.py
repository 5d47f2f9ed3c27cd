"""`orch import`, `orch sync` and `orch inbox`: the task lists people keep (spec-kit, task-master, Kiro, Markdown
checklists) as orch plans — printed, kept in sync with a deployment both ways, or dropped into a folder."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml

from orch.cli.common import (
    err,
    follow_options,
    handle_errors,
    now_utc,
    plan_input_options,
    read_plan,
    registry,
    repository_bases,
)
from orch.errors import OrchError, PlanInvalid, UserError
from orch.intake.plan import Plan
from orch.intake.tasklists.importing import (
    PlanInput,
    conflicting_input,
    explain,
    format_name,
    plan_document,
    read_tasklist,
    stored_input,
)
from orch.settings import get_settings

if TYPE_CHECKING:
    from orch.services.local_run import ListRun
    from orch.services.tasklist_sync import ListSpec


def _list_spec(plan: Plan, how: PlanInput, mark_running: bool | None) -> ListSpec:
    # lazy (start-up cost): the sync service loads the store
    from orch.intake.targets import load_targets
    from orch.services.tasklist_sync import ListSpec

    assert plan.origin is not None
    settings = get_settings()
    return ListSpec(
        path=Path(plan.origin.file),
        format=plan.origin.format,  # type: ignore[arg-type]
        options=how.options,
        registry=registry(),
        roots=settings.workdir_root_paths,
        targets=load_targets(settings.config_dir),
        executor=how.executor,
        mark_running=mark_running,
    )


def _ids_to_follow(plan: Plan) -> None:
    """A followed list's tasks need ids of their own: a checklist item without one is named by its line, which an
    edit above it moves (a running task would look removed, and be added again)."""
    for task in plan.tasks:
        line = task.source.get("line") if task.source else None
        if plan.origin is not None and plan.origin.format == "checklist" and task.key == f"L{line}":
            raise UserError(
                f"{plan.source}:{line}: this item has no id (orch calls it {task.key}, after its line); give every "
                "item an id (`- [ ] T001 …`) to follow the list"
            )


def list_run(plan: Plan, how: PlanInput, watch: bool, debounce: float, mark_running: bool | None) -> ListRun | None:
    """How `orch run` follows the list `plan` was read from (None: a plan file, which is not followed)."""
    from orch.services.local_run import ListRun

    if plan.origin is None:
        if watch or mark_running is not None:
            flag = "--watch" if watch else "--mark-running"
            raise UserError(f"{flag} follows a task list; {plan.source} is an orch plan")
        return None
    if watch:
        _ids_to_follow(plan)
    spec = _list_spec(plan, how, mark_running)
    return ListRun(spec, plan.origin.text, watch, debounce)


# --- orch import ----------------------------------------------------------------------------------------------


@click.command("import")
@click.argument("list_file", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write the plan here.")
@click.option(
    "--explain", "explain_edges", is_flag=True, help="Say why each dependency is there (phase barrier, order, …)."
)
@plan_input_options
@handle_errors
def import_command(list_file: str, output: str | None, explain_edges: bool, how: PlanInput) -> None:
    """Print the orch plan a task list stands for (spec-kit tasks.md, task-master tasks.json, Kiro tasks.md, a
    Markdown checklist), validated like any plan; with --explain each dependency carries its reason."""
    from orch.intake.tasklists.importing import plan_of_list, resolve_format

    path = Path(list_file)
    if output is not None and Path(output).resolve() == path.resolve():
        raise UserError(f"-o {output} is the list itself; write the plan to another file")
    format = resolve_format(path, how.format, list_file)
    if format == "plan":
        raise PlanInvalid(list_file, [f"{list_file}: is an orch plan already, not a task list (--format names one)"])
    read = read_tasklist(path, format, how.options, list_file)
    settings = get_settings()
    plan = plan_of_list(read, registry(), settings.workdir_root_paths, executor=how.executor)  # exit 2 if bad
    workdir = str(read.project)
    if output is not None:
        workdir = os.path.relpath(read.project, Path(output).resolve().parent)
    document = plan_document(read, how.executor, workdir)
    # each task's agent type as routed on its own words (the plan's descriptions add the feature's documents)
    agent_of = {task.key: task.agent for task in plan.tasks}
    for task in document["tasks"]:
        task.setdefault("agent", agent_of[task["id"]])
    text = _plan_yaml(document, read.tasks, list_file, explain_edges)
    if output is None:
        click.echo(text, nl=False)
    else:
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot write {output}: {exc.strerror or exc}") from None
        err.print(f"orch import: wrote {output} ({len(document['tasks'])} tasks)", markup=False, highlight=False)


class _PlanDumper(yaml.SafeDumper):
    """Multi-line text as a literal block (`|`), as a person writes it."""


def _text_scalar(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_PlanDumper.add_representer(str, _text_scalar)


def _dump(value: Any) -> str:
    return yaml.dump(value, Dumper=_PlanDumper, sort_keys=False, allow_unicode=True, width=100)


def _comment(text: str) -> str:
    from orch.views.terminal import inert

    return "# " + " ".join(inert(text).split())


def _plan_yaml(document: dict[str, Any], listed: Any, source: str, with_reasons: bool) -> str:
    """The plan as YAML; `with_reasons`: each dependency with its reason as a comment."""
    tasks = document["tasks"]
    done = sum(1 for task in tasks if task.get("done"))
    edges = sum(len(task.get("after", ())) for task in tasks)
    lines = [
        _comment(f"orch plan from {source} ({format_name(listed.format)}): {len(tasks)} tasks, {done} done, "
                 f"{edges} dependencies"),
    ]  # fmt: skip
    lines += [_comment(f"note: {note}") for note in listed.notes]
    header = {key: value for key, value in document.items() if key != "tasks"}
    lines.append(_dump(header).rstrip("\n"))
    lines.append("tasks:")
    reasons = explain(listed) if with_reasons else {}
    for task in tasks:
        after = task.get("after", [])
        body = {key: value for key, value in task.items() if key != "after"}
        dumped = _dump([body]).rstrip("\n").splitlines()
        lines.append(dumped[0])
        cut = 2 if len(dumped) > 1 else 1  # after the id and the title
        lines += dumped[1:cut]
        if after:
            lines.append("  after:")
            why = dict(reasons.get(task["id"], []))
            lines += [f"  - {json.dumps(dep)}" + (f"  # {why[dep]}" if dep in why else "") for dep in after]
        lines += dumped[cut:]
    return "\n".join(lines) + "\n"


def _stop_on_signals() -> None:
    """SIGINT and SIGTERM end a long-running follower cleanly (KeyboardInterrupt), even where it was started with
    SIGINT ignored (a background job of a shell, a service manager) or is stopped with SIGTERM."""
    import signal

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)


# --- orch sync ------------------------------------------------------------------------------------------------


@click.command("sync")
@click.argument("list_file", type=click.Path(dir_okay=False))
@plan_input_options
@click.option("--once", is_flag=True, help="Apply the list's edits and write states back once, then exit.")
@follow_options
@handle_errors
def sync_command(list_file: str, how: PlanInput, once: bool, debounce: float, mark_running: bool | None) -> None:
    """Keep LIST_FILE and its plan in a deployment's store in sync, both ways: the list is submitted if no plan
    follows it yet; its saved edits become plan revisions (added tasks join, edited pending ones change, removed
    pending ones are cancelled, a box ticked by hand is `orch skip`); tasks' states are written back as marks.
    Runs until Ctrl-C (or once, --once)."""
    from orch.services.tasklist_sync import FileWatch, Follower, dispatch_ready, followed_plan
    from orch.store import plans
    from orch.store.db import write_session

    followed = followed_plan(Path(list_file))
    if followed is not None and followed.list_format is not None:  # read as its plan was, whatever the flags say
        stored = stored_input(followed.list_format, followed.list_options)
        conflict = conflicting_input(how, stored)
        if conflict is not None:
            raise UserError(f"plan {followed.id} follows {list_file}, read otherwise than {conflict}")
        how = stored
    plan = read_plan(list_file, how)
    if plan.origin is None:
        raise UserError(f"orch sync follows a task list; {list_file} is an orch plan (orch submit stores it)")
    _ids_to_follow(plan)
    spec = _list_spec(plan, how, mark_running)

    def say(text: str) -> None:
        from orch.views.terminal import inert

        click.echo(f"orch sync: {inert(text)}", err=True)

    # beside a deployment's broker, what a revision makes ready is sent at once (else at the beat's next tick)
    dispatch = dispatch_ready(spec.registry) if get_settings().broker_url is not None else None
    if followed is None:
        bases = repository_bases(plan)
        with write_session() as session:
            plan_id = plans.submit_plan(session, plan, now_utc(), bases)
        click.echo(plan_id)
        follower = Follower(spec, plan_id, plan.origin.text, say, watching=True, debounce=debounce, dispatch=dispatch)
    else:
        plan_id = followed.id
        click.echo(plan_id)
        say(f"following plan {plan_id} (revision {followed.revision}, {followed.status})")
        # "": compared with the store, not with a text
        follower = Follower(spec, plan_id, "", say, watching=True, debounce=debounce, dispatch=dispatch)
        follower.sync_now()
    follower.write_back(force=True)
    if once:
        sys.exit(2 if follower.last_problem else 0)
    _stop_on_signals()
    with FileWatch(spec.path, follower.file_changed):
        try:
            while not _cancelled(plan_id):
                follower.tick()
                time.sleep(0.2)
        except KeyboardInterrupt:
            follower.write_back(force=True)
            sys.exit(130)
    say(f"plan {plan_id} was cancelled; stopped following {list_file}")


def _cancelled(plan_id: str) -> bool:
    from sqlalchemy.exc import DBAPIError

    from orch.states import PlanStatus
    from orch.store.db import read_session
    from orch.store.plans import get_plan

    try:
        with read_session() as session:
            plan = get_plan(session, plan_id)
            return plan is None or plan.status is PlanStatus.CANCELLED
    except (DBAPIError, OrchError):  # the store is away for now: the follower says so, and the loop goes on
        return False


# --- orch inbox -----------------------------------------------------------------------------------------------

INBOX_SUFFIXES = (".yaml", ".yml", ".json", ".md", ".markdown")
SETTLE_SECONDS = 1.0  # a dropped file unchanged this long is complete


@click.command("inbox")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--once", is_flag=True, help="Submit what is there now, then exit.")
@handle_errors
def inbox_command(folder: str, once: bool) -> None:
    """Submit each plan file or task list dropped into FOLDER once, then move it to FOLDER/submitted/ (or to
    FOLDER/rejected/, its problems beside it in NAME.error). A file submitted before (the same content) is only
    moved: a restart never submits it twice. Runs until Ctrl-C (or once, --once)."""
    inbox = Path(folder)
    if not inbox.is_dir():
        raise UserError(f"inbox {folder} is not a folder")
    for sub in ("submitted", "rejected"):
        (inbox / sub).mkdir(exist_ok=True)
    if once:
        _drain(inbox, settle=0.0)
        return
    import watchfiles

    _stop_on_signals()
    try:
        for _changes in watchfiles.watch(inbox, recursive=False, rust_timeout=1000, yield_on_timeout=True):
            _drain(inbox, settle=SETTLE_SECONDS)
    except KeyboardInterrupt:
        sys.exit(130)


def _drain(inbox: Path, settle: float) -> None:
    for path in sorted(inbox.iterdir()):
        if path.name.startswith(".") or path.suffix.lower() not in INBOX_SUFFIXES:
            continue
        if path.is_symlink():
            _reject(inbox, path, ["a symbolic link: orch inbox takes only files dropped into it, never follows one"])
            continue
        if not path.is_file() or (settle and time.time() - path.stat().st_mtime < settle):
            continue  # a folder, or still being written
        _take(inbox, path)


def _say(text: str) -> None:
    from orch.views.terminal import inert

    click.echo(f"orch inbox: {inert(text)}", err=True)


def _take(inbox: Path, path: Path) -> None:
    from orch.errors import StoreUnusable
    from orch.intake.plan_document import read_plan_text
    from orch.store import plans
    from orch.store.db import read_session, write_session
    from orch.store.models import PlanRow

    try:
        text = read_plan_text(path)  # bounded, a regular file only: what is hashed is what is read
    except PlanInvalid as exc:
        _reject(inbox, path, exc.problems)
        return
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    source = f"{path.name} (inbox {inbox.resolve()}, sha256 {digest[:16]})"
    with read_session() as session:
        earlier = session.query(PlanRow.id).filter(PlanRow.source == source).first()
    if earlier is not None:
        _move(path, inbox / "submitted")
        _say(f"{path.name} was submitted before as {earlier[0]}; moved to submitted/")
        return
    target = _free_name(inbox / "submitted", path.name)
    try:
        plan = read_plan(str(path), PlanInput())
        plan = replace(plan, source=source)
        if plan.origin is not None:  # the list is followed where it is kept from now on
            plan = replace(plan, origin=replace(plan.origin, file=str(target.resolve())))
        bases = repository_bases(plan)
        with write_session() as session:
            plan_id = plans.submit_plan(session, plan, now_utc(), bases)
    except OrchError as exc:
        if isinstance(exc, UserError) and not isinstance(exc, StoreUnusable):
            _reject(inbox, path, exc.problems if isinstance(exc, PlanInvalid) else [str(exc)])
        else:  # the store or a service, not the file: it stays, and is taken next time
            _say(f"{path.name} left in the inbox for now: {exc}")
        return
    os.replace(path, target)
    click.echo(plan_id)
    _say(f"{path.name} submitted as {plan_id}")


def _reject(inbox: Path, path: Path, problems: list[str]) -> None:
    moved = _move(path, inbox / "rejected")
    moved.with_name(moved.name + ".error").write_text("\n".join(problems) + "\n", encoding="utf-8")
    _say(f"{path.name} rejected: {problems[0]}")


def _free_name(folder: Path, name: str) -> Path:
    """`folder/name`, or with `-2`, `-3`… before its suffix where that is taken."""
    target = folder / name
    stem, suffix = Path(name).stem, Path(name).suffix
    number = 2
    while target.exists() or target.is_symlink():
        target = folder / f"{stem}-{number}{suffix}"
        number += 1
    return target


def _move(path: Path, folder: Path) -> Path:
    """Move `path` into `folder`, never over a file there."""
    target = _free_name(folder, path.name)
    os.replace(path, target)
    return target
