"""The `orch` command line: the `orch` group and its commands, one module per group of them. The commands import
the store, the views and the services when they run, not here: `orch --help` would pay for SQLAlchemy."""

from __future__ import annotations

import os
from pathlib import Path

import click

from orch.cli import operator, planning, plans, repositories, scaffold, services, tasklists, views
from orch.settings import ENV_FILE_VARIABLE, get_settings
from orch.store.creation import existing_store_only


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="orch")
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Read ORCH_* settings from this file (as ORCH_ENV_FILE does); a .env in the current folder is never read.",
)
@click.pass_context
def main(ctx: click.Context, env_file: str | None) -> None:
    """orch runs plans — DAGs of AI coding-agent tasks — on Celery workers, with an SQL store as the truth."""
    # lazy (start-up cost): structlog, which `orch --help` need not load
    from orch.hardening import harden_process
    from orch.log import configure_logging

    harden_process()
    if env_file is not None:
        os.environ[ENV_FILE_VARIABLE] = str(Path(env_file).resolve())  # the workers `orch run` starts read it too
        get_settings.cache_clear()
    configure_logging()  # log lines (not the commands' own output) as JSON or console text on stderr, redacted
    if ctx.invoked_subcommand not in STORE_CREATORS:
        # the others open the store that is there, or name the place they looked: never an empty one in the
        # current folder, or a typo's folders
        ctx.with_resource(existing_store_only())


# The commands that may create the store (`db` is `orch db upgrade`).
# `plan` runs what it writes with --run (it reads the store's history only where there is one).
STORE_CREATORS = frozenset({"run", "submit", "db", "sync", "inbox", "plan"})


for command in (
    scaffold.init,
    plans.validate,
    plans.agents,
    plans.route_command,
    plans.submit,
    plans.run,
    planning.plan_command,
    tasklists.import_command,
    tasklists.sync_command,
    tasklists.inbox_command,
    views.status,
    views.logs,
    views.watch,
    views.report,
    views.graph,
    operator.cancel,
    operator.pause,
    operator.resume,
    operator.retry,
    operator.skip,
    repositories.mq,
    repositories.land,
    repositories.worktrees,
    services.db,
    services.exporter,
    services.flower_command,
    services.check_command,
):
    main.add_command(command)

__all__ = ["main"]
