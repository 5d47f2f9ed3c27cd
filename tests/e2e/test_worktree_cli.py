"""`repo:` plans through the CLI as a user meets them: `orch run` in a checkout (the plan lands on `main`, the
checkout untouched, a note about it), `orch mq`, `orch status`/`report` with git, `orch land` again, `orch
worktrees`; a base checked out that cannot be moved, named; bad repositories refused with exit 2 and nothing
written; and the worktree of a killed `orch run` kept and swept by `orch worktrees --prune`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import ORCH, orch_env, run_orch
from tests.helpers import wait_for

PLAN = """\
name: pkg
repo: {url: ., base: main, land: base, gates: ["test -f README.md"]}
tasks:
  - {id: a, title: write a, command: "echo A > a.txt"}
  - {id: b, title: write b, command: "echo B > b.txt"}
  - {id: c, title: join, after: [a, b], command: "cat a.txt b.txt > c.txt"}
"""


def git(repo: Path, *args: str) -> str:
    who = {"GIT_AUTHOR_NAME": "u", "GIT_AUTHOR_EMAIL": "u@x", "GIT_COMMITTER_NAME": "u", "GIT_COMMITTER_EMAIL": "u@x"}
    env = {"PATH": os.environ["PATH"], "HOME": str(repo), "GIT_CONFIG_NOSYSTEM": "1", **who}
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True).stdout


def checkout(tmp_path: Path, on: str = "feature") -> Path:
    """A user's repository: main with one commit, `on` checked out, an uncommitted edit of a tracked file."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("# pkg\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "start")
    if on != "main":
        git(repo, "checkout", "-q", "-b", on)
    (repo / "README.md").write_text("# pkg, being edited\n")
    return repo


def tree_hashes(repo: Path) -> dict[str, str]:
    """The checkout as its user sees it: every file of the work tree, and the index."""
    found = {}
    for path in sorted(repo.rglob("*")):
        relative = path.relative_to(repo)
        if path.is_file() and (relative.parts[0] != ".git" or relative == Path(".git/index")):
            found[str(relative)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def test_orch_run_lands_the_plan_on_main_and_leaves_the_checkout_untouched(tmp_path: Path) -> None:
    repo = checkout(tmp_path)
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN.replace("url: .", f"url: {repo}"))
    env = orch_env(tmp_path)
    before = tree_hashes(repo)

    run = run_orch(["run", str(plan)], tmp_path, env, timeout=180)
    assert run.returncode == 0, run.stderr
    assert f"orch: note: your checkout {repo} is on feature and has uncommitted changes" in run.stderr
    main = git(repo, "rev-parse", "main").strip()
    assert f"fast-forwarded main to {main[:12]}" in run.stderr or f"main is at {main[:12]} already" in run.stderr
    assert git(repo, "show", "main:c.txt").split() == ["A", "B"]
    assert tree_hashes(repo) == before
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip() == "feature"

    plan_id = json.loads(run_orch(["status", "pkg", "--json"], tmp_path, env).stdout)["plan"]["id"]
    queue = json.loads(run_orch(["mq", plan_id, "--json"], tmp_path, env).stdout)
    assert [r["phase"] for r in queue["requests"]] == ["merged"] * 3
    assert queue["requests"][-1]["task"] == "c"  # a and b first: c depends on them
    (integration,) = queue["integrations"]
    assert integration["landed"] == "landed" and integration["head"] == main
    table = run_orch(["mq", plan_id], tmp_path, env).stdout
    assert f"orch/{plan_id} in {repo}: from main at" in table and "merged" in table

    status = json.loads(run_orch(["status", plan_id, "--json"], tmp_path, env).stdout)
    git_c = next(t["git"] for t in status["tasks"] if t["id"] == "c")
    assert git_c["branch"] == f"orch-work/{plan_id}/c/1" and git_c["merge_phase"] == "merged"
    assert git_c["merged_commit"] == main
    report = run_orch(["report", plan_id], tmp_path, env).stdout
    assert "### Merges" in report and f"orch-work/{plan_id}/a/1" in report

    again = run_orch(["land", plan_id], tmp_path, env)
    assert again.returncode == 0 and again.stdout == f"repo: main is at {main[:12]} already\n"
    listing = run_orch(["worktrees"], tmp_path, env)
    assert listing.returncode == 0 and listing.stdout.startswith("no worktrees under ")


def test_a_base_checked_out_in_the_checkout_is_named_and_not_moved(tmp_path: Path) -> None:
    repo = checkout(tmp_path, on="main")
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN.replace("url: .", f"url: {repo}"))
    before = tree_hashes(repo)
    main_before = git(repo, "rev-parse", "main")

    run = run_orch(["run", str(plan)], tmp_path, orch_env(tmp_path), timeout=180)
    assert run.returncode == 1, run.stderr
    # on the base itself: only its uncommitted changes are worth a word
    assert f"orch: note: your checkout {repo} has uncommitted changes: the plan starts from main at" in run.stderr
    refused = [line for line in run.stderr.splitlines() if line.startswith("not landed: ")]
    assert refused and "main could not be fast-forwarded to orch/pkg-" in refused[0], run.stderr
    assert "checked out" in refused[0]
    assert git(repo, "rev-parse", "main") == main_before and tree_hashes(repo) == before


@pytest.mark.parametrize(
    ("repo_line", "said"),
    [
        ("{url: 'file:///nowhere/repo.git'}", "repo: cannot reach repository file:///nowhere/repo.git: fatal: "),
        ("{url: REPO, base: nope}", "repo REPO: has no branch 'nope' (`base:` names the branch the plan starts from)"),
    ],
)
def test_a_repository_that_cannot_be_used_is_refused_at_submit_and_nothing_is_written(
    tmp_path: Path, repo_line: str, said: str
) -> None:
    repo = checkout(tmp_path)
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"name: bad\nrepo: {repo_line.replace('REPO', str(repo))}\ntasks:\n  - {{id: a, title: a}}\n")
    env = orch_env(tmp_path)
    submitted = run_orch(["submit", str(plan)], tmp_path, env)
    assert submitted.returncode == 2
    (line,) = submitted.stderr.strip().splitlines()
    assert line.startswith(f"{plan}: {said.replace('REPO', str(repo))}"), line
    assert not (tmp_path / ".orch" / "orch.db").exists()  # refused before the store was even made


SLEEPER = """\
name: sleeper
repo: {url: REPO}
tasks:
  - {id: nap, title: nap, command: "echo started > work.txt; sleep 600"}
"""


def test_the_worktree_of_a_killed_orch_run_is_kept_and_swept_by_prune(tmp_path: Path) -> None:
    repo = checkout(tmp_path)
    plan = tmp_path / "sleeper.yaml"
    plan.write_text(SLEEPER.replace("REPO", str(repo)))
    env = orch_env(tmp_path)
    null = subprocess.DEVNULL
    process = subprocess.Popen(
        [ORCH, "run", str(plan)], cwd=tmp_path, env=env, start_new_session=True, stdin=null, stdout=null, stderr=null
    )
    try:
        worktrees = tmp_path / ".orch" / "worktrees"
        wait_for(lambda: list(worktrees.glob("sleeper-*/nap/1/work.txt")), 120, "the nap to write its file")
    finally:
        process.kill()
        process.wait(timeout=30)
    listing = json.loads(wait_for(lambda: _listing(tmp_path, env), 30, "the killed run's plan to be cancelled"))
    (tree,) = listing
    assert tree["task"] == "nap" and tree["state"] == "cancelled"  # the next command cancelled the dead run's plan

    pruned = run_orch(["worktrees", "--prune", "--json"], tmp_path, env)
    assert pruned.returncode == 0, pruned.stderr
    (swept,) = json.loads(pruned.stdout)
    assert swept["pruned"].startswith("removed; its leftovers kept at ")
    assert not Path(tree["path"]).exists()
    plan_id = tree["plan"]
    assert git(repo, "show", f"refs/orch/archive/{plan_id}/nap/1:work.txt") == "started\n"
    assert git(repo, "show", f"orch-work/{plan_id}/nap/1:work.txt") == "started\n"


def _listing(tmp_path: Path, env: dict[str, str]) -> str | None:
    listed = run_orch(["worktrees", "--json"], tmp_path, env)
    trees = json.loads(listed.stdout) if listed.returncode == 0 else []
    return listed.stdout if trees and trees[0]["state"] != "running" else None
