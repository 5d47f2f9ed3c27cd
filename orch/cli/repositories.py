"""`orch mq`, `orch land` and `orch worktrees`: a plan's merge queue and integration branches, landing a
succeeded plan's work on its base branch, and the attempt worktrees on this host."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from orch.cli.common import handle_errors, now_utc, out
from orch.errors import PlanInvalid
from orch.settings import get_settings

if TYPE_CHECKING:
    from orch.dispatch.worktrees import HostWorktree


@click.command()
@click.argument("plan_ref")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def mq(plan_ref: str, as_json: bool) -> None:
    """Show a plan's merge queue: its integration branches, and every merge request with its phase, how long it
    waited, its commit and what happened (conflicts, gate failures)."""
    # lazy (start-up cost): the views read the store, which loads SQLAlchemy
    from orch.store import plans
    from orch.store.db import read_session
    from orch.views.format import line, show_table
    from orch.views.merges import MergeQueueView

    with read_session() as session:
        view = MergeQueueView.load(session, plans.find_plan(session, plan_ref).id)
    now = now_utc()
    if as_json:
        click.echo(json.dumps(view.as_json(now), indent=2))
        return
    if not view.integrations:
        out.print(line(f"plan {view.plan_id} has no repository (`repo:`): its tasks share its workdir"))
        return
    for text in view.integration_lines(now):
        out.print(line(text), soft_wrap=True)
    if view.requests:
        show_table(out, view.table(now))
    else:
        out.print("no merge request yet")


@click.command()
@click.argument("plan_ref")
@handle_errors
def land(plan_ref: str) -> None:
    """Land a succeeded plan's work as its `land:` says (`base`: fast-forward the base branch to orch/<plan id>,
    never forced). Exit 1 when the base cannot be fast-forwarded (it is named, with why); 2 for a plan that did
    not succeed."""
    # lazy (start-up cost): the store and git
    from orch.dispatch.merge_queue import land as land_integration
    from orch.states import PlanStatus
    from orch.store import merges, plans
    from orch.store.db import read_session, write_session

    settings = get_settings()
    with read_session() as session:
        plan = plans.find_plan(session, plan_ref)
        integrations = merges.plan_integrations(session, plan.id)
    if plan.status is not PlanStatus.SUCCEEDED:
        raise PlanInvalid(plan.id, [f"plan {plan.id} is {plan.status}: only a succeeded plan's work lands"])
    if not integrations:
        raise PlanInvalid(plan.id, [f"plan {plan.id} has no repository (`repo:`): nothing to land"])
    refused = False
    for integration in integrations:
        outcome, detail = land_integration(integration, settings)
        with write_session() as session:
            merges.record_landing(session, integration.pk, outcome, detail)
        refused |= outcome == "refused"
        click.echo(f"{integration.repository}: {detail}", err=outcome == "refused")
    if refused:
        raise SystemExit(1)


@click.command()
@click.option("--prune", is_flag=True, help="Remove worktrees whose attempts are over (their leftovers kept first).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@handle_errors
def worktrees(prune: bool, as_json: bool) -> None:
    """List the attempt worktrees on this host (ORCH_WORKTREE_ROOT) with their size, age and attempt's state;
    --prune removes those whose attempts are over, after committing and pushing what they hold."""
    # lazy (start-up cost): the store and git
    from rich.filesize import decimal
    from rich.table import Table

    from orch.dispatch.worktrees import host_worktrees, sweep
    from orch.durations import format_duration
    from orch.services.local_run import cancel_dead_runs
    from orch.views.format import show_table
    from orch.views.terminal import inert

    settings = get_settings()
    cancel_dead_runs()  # the worktrees of an `orch run` that died here are over: its plan is cancelled first
    rows = sweep(settings) if prune else [(tree, "") for tree in host_worktrees(settings)]
    if as_json:
        click.echo(json.dumps([_tree_json(tree, what) for tree, what in rows], indent=2))
        return
    if not rows:
        out.print(f"no worktrees under {settings.resolved_worktree_root}")
        return
    table = Table(title=f"worktrees under {settings.resolved_worktree_root}", title_justify="left")
    for column in ("plan", "task", "attempt", "state", "size", "age", *(["pruned"] if prune else [])):
        table.add_column(column, overflow="fold")
    for tree, what in rows:
        cells = [inert(tree.plan_id), inert(tree.key), str(tree.attempt), tree.state, decimal(tree.size)]
        table.add_row(*cells, format_duration(tree.age_s), *([inert(what)] if prune else []))
    show_table(out, table)


def _tree_json(tree: HostWorktree, what: str) -> dict[str, object]:
    return {
        "path": str(tree.path),
        "plan": tree.plan_id,
        "task": tree.key,
        "attempt": tree.attempt,
        "state": tree.state,
        "size_bytes": tree.size,
        "age_s": round(tree.age_s, 1),
        "branch": tree.branch,
        "pruned": what or None,
    }
