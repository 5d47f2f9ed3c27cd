"""`orch init`: a commented plan to start from, written in the current folder."""

from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path

import click

from orch.cli.common import handle_errors, read_plan
from orch.errors import ConfigInvalid
from orch.intake.plan import quoted

TEMPLATE = "plan_template.yaml"
NAME_PLACEHOLDER = "__NAME__"


def plan_name_for(folder: Path) -> str:
    """A valid plan name from a folder's name (plan names are letters, digits, '.', '_' and '-')."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.name).strip("-.")[:64]
    return name or "my-plan"


def scaffold_text(name: str) -> str:
    template = files("orch.intake").joinpath(TEMPLATE).read_text(encoding="utf-8")
    return template.replace(NAME_PLACEHOLDER, name)


@click.command()
@click.argument("plan_file", type=click.Path(dir_okay=False), default="plan.yaml")
@click.option("--name", default=None, help="The plan's name (default: this folder's name).")
@click.option("--force", is_flag=True, help="Overwrite PLAN_FILE if it exists.")
@handle_errors
def init(plan_file: str, name: str | None, force: bool) -> None:
    """Write a commented example plan to PLAN_FILE (default plan.yaml) that `orch run` runs as it is."""
    path = Path(plan_file)
    if not path.parent.resolve().is_dir():
        raise ConfigInvalid(f"{plan_file}: folder {str(path.parent)!r} does not exist")
    plan_name = name if name is not None else plan_name_for(path.resolve().parent)
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", plan_name):
        raise ConfigInvalid(f"--name {quoted(plan_name)}: use 1 to 128 letters, digits, '.', '_' or '-'")
    try:
        with path.open("w" if force else "x", encoding="utf-8") as handle:
            handle.write(scaffold_text(plan_name))
    except FileExistsError:
        raise ConfigInvalid(f"{plan_file} already exists (--force overwrites it)") from None
    plan = read_plan(plan_file)  # the template validates; were it not to, this names the problem
    click.echo(f"wrote {plan_file}: plan {plan.name!r} with {len(plan.tasks)} shell tasks, commented")
    click.echo(f"next: orch validate {plan_file} && orch run {plan_file}")
