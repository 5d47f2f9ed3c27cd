"""Helpers for the merge-queue scenarios (tests/faults/test_merge_faults.py): a bare repository as the plan's
remote, plans with `repo:` stored as `orch submit` stores them, a remote hook that pauses a merger right after its
push moved the integration branch, and the count the scenarios judge by: how many times each task's work and each
merge request's merge commit are reachable from the integration branch (more than once is a double apply)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from orch.intake.agents import load_agents, load_agents_file
from orch.intake.plan_validation import validate_plan
from orch.services.repositories import base_commits
from orch.settings import get_settings
from orch.states import TaskStatus
from orch.store import merges, plans
from orch.store.db import db_now, read_session, write_session
from orch.store.models import MergeRequestRow

ZERO = "0" * 40
TEST_LOCK = "held-by-the-test"  # the merge lock's token while a scenario keeps mergers off its queue


def git(repo: Path, *args: str) -> str:
    """The test's own git (not orch's hardened one): a user's or another host's commands."""
    who = {"GIT_AUTHOR_NAME": "u", "GIT_AUTHOR_EMAIL": "u@x", "GIT_COMMITTER_NAME": "u", "GIT_COMMITTER_EMAIL": "u@x"}
    env = {"PATH": os.environ["PATH"], "HOME": str(repo.parent), "GIT_CONFIG_NOSYSTEM": "1", **who}
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True)
    return done.stdout.strip()


def make_remote(folder: Path) -> Path:
    """A bare repository `origin.git` whose `main` holds one commit (README.md, shared.txt)."""
    seed = folder / "seed"
    seed.mkdir()
    git(seed, "init", "-q", "-b", "main")
    (seed / "README.md").write_text("# pkg\n")
    (seed / "shared.txt").write_text("line 1\nline 2\nline 3\n")
    git(seed, "add", ".")
    git(seed, "commit", "-q", "-m", "start")
    origin = folder / "origin.git"
    git(folder, "clone", "-q", "--bare", str(seed), str(origin))
    return origin


def submit_repo_plan(
    tasks: list[dict[str, Any]], origin: Path, workdir: Path, config_dir: Path | None = None, **repo: Any
) -> str:
    """Validate and store a plan whose `repo:` is `origin` (base main) as `orch submit` does: base commit read from
    the remote, the integration made in the store. `config_dir`'s agents.yaml names the tasks' queues."""
    settings = get_settings()
    registry = load_agents_file((config_dir or settings.config_dir) / "agents.yaml")
    workdir.mkdir(exist_ok=True)
    document = {
        "name": "mq",
        "tasks": tasks,
        "repo": {"url": str(origin), "base": "main", **repo},
        "defaults": {"agent": "general-purpose", "retries": 1},
    }
    plan = validate_plan(document, registry, source="mq.yaml", base_dir=workdir)
    bases = base_commits(plan, settings)
    with write_session() as session:
        return plans.submit_plan(session, plan, datetime.now(UTC), bases)


def integration_pk(plan_id: str) -> int:
    with read_session() as session:
        (integration,) = merges.plan_integrations(session, plan_id)
    return integration.pk


def task_statuses(plan_id: str) -> dict[str, str]:
    with read_session() as session:
        return {t.key: t.status.value for t in plans.plan_tasks(session, plan_id)}


def all_merging(plan_id: str) -> bool:
    statuses = task_statuses(plan_id)
    return bool(statuses) and set(statuses.values()) == {TaskStatus.MERGING.value}


@dataclass(frozen=True)
class RequestState:
    pk: int
    key: str
    phase: str
    tries: int
    merged_commit: str | None
    finished_at: datetime | None
    detail: str | None


def requests_of(plan_id: str) -> dict[str, RequestState]:
    """The plan's latest merge request per task key."""
    with read_session() as session:
        rows: list[tuple[MergeRequestRow, str]] = merges.plan_requests(session, plan_id)
        return {
            key: RequestState(row.pk, key, str(row.phase), row.tries, row.merged_commit, row.finished_at, row.detail)
            for row, key in rows
        }


def lock_holder(plan_id: str) -> str | None:
    """The integration's merge-lock token (None: free), whether or not its lease has expired."""
    from orch.store.models import IntegrationRow

    with read_session() as session:
        row = session.get(IntegrationRow, integration_pk(plan_id))
        return None if row is None else row.lease


@contextmanager
def merge_lock_held(plan_id: str) -> Iterator[None]:
    """Hold the plan's merge lock (as a merger that takes an hour would): any merger sent meanwhile returns at once,
    its requests left queued for the scenario to merge as it means to."""
    pk = integration_pk(plan_id)
    with write_session() as session:
        assert merges.claim_merge_lock(session, pk, TEST_LOCK, 3600, db_now(session)), "the merge lock is taken"
    try:
        yield
    finally:
        with write_session() as session:
            merges.release_merge_lock(session, pk, TEST_LOCK)


def merge_queue_args() -> tuple[Any, Any]:
    """What a merger needs besides its gates: settings and the agent registry."""
    settings = get_settings()
    return settings, load_agents(settings.config_dir)


# --- what the integration branch holds -------------------------------------------------------------------


def trailer_values(origin: Path, branch: str, key: str) -> list[str]:
    """The `key:` trailer values of every commit reachable from `branch` on `origin`, one per trailer."""
    listing = git(origin, "log", f"--format=%(trailers:key={key},valueonly,separator=%x00)%x1e", branch)
    return [v.strip() for entry in listing.split("\x1e") for v in entry.split("\x00") if v.strip()]


@dataclass(frozen=True)
class Applied:
    """How many times each task's commit (`Orch-Task`) and each request's merge commit (`Orch-Merge-Request`) is
    reachable from the integration branch."""

    tasks: Counter[str]
    requests: Counter[str]

    @property
    def double_applies(self) -> int:
        return sum(n - 1 for n in (*self.tasks.values(), *self.requests.values()) if n > 1)


def applied(origin: Path, plan_id: str) -> Applied:
    branch = merges.integration_branch(plan_id)
    return Applied(
        Counter(trailer_values(origin, branch, "Orch-Task")),
        Counter(trailer_values(origin, branch, "Orch-Merge-Request")),
    )


def commits_on(origin: Path, branch: str) -> int:
    return int(git(origin, "rev-list", "--count", branch))


def is_merge_commit(origin: Path, commit: str) -> bool:
    return len(git(origin, "rev-list", "--parents", "-n", "1", commit).split()) > 2


# --- pausing a merger at its push ------------------------------------------------------------------------


GIT_PAUSING = """#!/bin/sh
# git on the merger's PATH (orch runs the first absolute git on PATH): the real git, then, after a push that moved
# an integration branch (refs/heads/orch/...) to a merge commit, a pause — the merger is then stopped between its
# push and the store's record of it. (A remote's own hooks no longer run for orch's pushes.)
{git} "$@"
code=$?
if [ "$code" = 0 ]; then
  for arg in "$@"; do
    case "$arg" in
      *:refs/heads/orch/*)
        new="${{arg%%:*}}"
        if [ "$({git} cat-file -p "$new" 2>/dev/null | grep -c '^parent ')" -ge 2 ]; then
          echo "$new" > {pushed}
          while [ ! -e {release} ]; do sleep 0.05; done
        fi;;
    esac
  done
fi
exit $code
"""


def pause_after_merge_push(folder: Path, pushed: Path, release: Path) -> dict[str, str]:
    """A `git` that pauses after a merge commit's push to an integration branch: it writes the new head to
    `pushed`, then waits for `release` to exist. Returns the environment (PATH) a worker runs it with."""
    real = shutil.which("git")
    assert real is not None
    bin_dir = folder / "pausing-git"
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "git"
    wrapper.write_text(GIT_PAUSING.format(git=real, pushed=pushed, release=release))
    wrapper.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def push_from_elsewhere(origin: Path, clone: Path, branch: str, path: str, text: str) -> str:
    """Another host advances `branch` on `origin`: a commit of `path` from a clone of its own; the new head."""
    if not clone.exists():
        git(origin.parent, "clone", "-q", "--no-checkout", str(origin), str(clone))
    git(clone, "fetch", "-q", "origin", f"+refs/heads/{branch}:refs/remotes/origin/{branch}")
    git(clone, "checkout", "-q", "-B", "other", f"origin/{branch}")
    (clone / path).write_text(text)
    git(clone, "add", path)
    git(clone, "commit", "-q", "-m", f"another host's {path}")
    git(clone, "push", "-q", "origin", f"HEAD:refs/heads/{branch}")
    return git(clone, "rev-parse", "HEAD")


def seconds(start: float, end: float) -> str:
    return f"{end - start:.2f}s"


def contained(origin: Path, commits: Sequence[str], branch: str) -> int:
    """How many of `commits` are reachable from `branch`."""
    found = 0
    for commit in commits:
        done = subprocess.run(
            ["git", "-C", str(origin), "merge-base", "--is-ancestor", commit, branch], capture_output=True
        )
        found += done.returncode == 0
    return found
