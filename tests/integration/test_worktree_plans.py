"""Plans with `repo:` through a real Celery worker and real git: a worktree per attempt at the integration branch's
head, orch's commit of each attempt's work, the merge queue (fast-forward, merge commit, conflicts, gates) and
landing — with the user's checkout (the repository named by `repo.url`) never touched."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker

import workers.tasks  # noqa: F401  (registers orch.run_task and orch.merge)
from orch.celery import app, use_broker
from orch.states import MergePhase
from orch.store import merges, plans
from orch.store.db import read_session, write_session
from tests.helpers import drive_until_final, fake_claude_wrapper, make_plan, wait_for

QUEUES = ["agent.general-purpose"]


def git(repo: Path, *args: str) -> str:
    who = {"GIT_AUTHOR_NAME": "u", "GIT_AUTHOR_EMAIL": "u@x", "GIT_COMMITTER_NAME": "u", "GIT_COMMITTER_EMAIL": "u@x"}
    env = {"PATH": os.environ["PATH"], "HOME": str(repo.parent), "GIT_CONFIG_NOSYSTEM": "1", **who}
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, env=env, check=True)
    return done.stdout.strip()


def seeded(tmp_path: Path, name: str, files: dict[str, str]) -> Path:
    """A bare repository `name`.git whose main holds `files` (pushed from its clone `name`-seed)."""
    seed = tmp_path / f"{name}-seed"
    seed.mkdir()
    git(seed, "init", "-q", "-b", "main")
    for path, text in files.items():
        (seed / path).parent.mkdir(parents=True, exist_ok=True)
        (seed / path).write_text(text)
    git(seed, "add", ".")
    git(seed, "commit", "-q", "-m", "seed")
    origin = tmp_path / f"{name}.git"
    git(tmp_path, "clone", "-q", "--bare", str(seed), str(origin))
    return origin


def snapshot(checkout: Path) -> dict[str, str]:
    """Every file of the checkout (its .git/index too) by content hash, but git's refs, objects and logs: what a
    user sees as their work tree and staging area."""
    skip = ("objects", "refs", "logs", "packed-refs", "FETCH_HEAD", "ORIG_HEAD")
    found = {}
    for path in sorted(checkout.rglob("*")):
        relative = path.relative_to(checkout)
        if path.is_file() and not (relative.parts[0] == ".git" and relative.parts[1] in skip):
            found[str(relative)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The user's repository: main with one commit, a second branch checked out, an uncommitted change."""
    repo = tmp_path / "user"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "README.md").write_text("# pkg\n")
    (repo / "shared.txt").write_text("line 1\nline 2\nline 3\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "start")
    git(repo, "checkout", "-q", "-b", "feature")
    (repo / "README.md").write_text("# pkg, being edited\n")
    return repo


@pytest.fixture
def worker(embedded_redis_url: str, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    use_broker(embedded_redis_url)
    monkeypatch.setenv("ORCH_RETRY_BACKOFF_BASE", "0.1")
    from orch.settings import get_settings

    get_settings.cache_clear()
    with start_worker(app, pool="threads", concurrency=4, perform_ping_check=False, queues=QUEUES):
        yield


def submit(tasks: list[dict[str, Any]], checkout: Path, tmp_path: Path, **repo: Any) -> str:
    from orch.services.repositories import base_commits
    from orch.settings import get_settings

    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    plan = make_plan(tasks, name="wt", workdir=workdir, repo={"url": str(checkout), "base": "main", **repo},
                     defaults={"agent": "general-purpose", "retries": 1})  # fmt: skip
    bases = base_commits(plan, get_settings())
    with write_session() as session:
        return plans.submit_plan(session, plan, datetime.now(UTC), bases)


def task_status(plan_id: str) -> dict[str, str]:
    with read_session() as session:
        return {t.key: t.status.value for t in plans.plan_tasks(session, plan_id)}


def test_parallel_tasks_land_in_dependency_order_and_the_checkout_is_untouched(
    worker: None, checkout: Path, tmp_path: Path
) -> None:
    before = snapshot(checkout)
    tasks: list[dict[str, Any]] = [
        {"id": "a", "title": "write a", "command": "echo A > a.txt"},
        {"id": "b", "title": "write b", "command": "echo B > b.txt"},
        # c sees both parents' merged work in its own worktree, and never the user's uncommitted edit
        {"id": "c", "title": "combine", "after": ["a", "b"],
         "command": "test -f a.txt && test -f b.txt && grep -qx '# pkg' README.md && cat a.txt b.txt > c.txt"},
    ]  # fmt: skip
    plan_id = submit(tasks, checkout, tmp_path, gates=["test -f README.md"])
    drive_until_final(plan_id, 90)

    assert task_status(plan_id) == {"a": "succeeded", "b": "succeeded", "c": "succeeded"}
    branch = f"orch/{plan_id}"
    assert git(checkout, "show", f"{branch}:c.txt").split() == ["A", "B"]
    log = git(checkout, "log", "--format=%s", branch)
    assert log.splitlines()[0] == "combine"  # c's commit, on top of both parents' work
    assert {"write a", "write b"} <= set(log.splitlines())
    trailers = git(checkout, "log", "-1", "--format=%B", branch)
    assert f"Orch-Plan: {plan_id}" in trailers and "Orch-Task: c" in trailers

    assert snapshot(checkout) == before  # work tree and index byte-for-byte
    assert git(checkout, "rev-parse", "--abbrev-ref", "HEAD") == "feature"
    assert len(git(checkout, "worktree", "list").splitlines()) == 1
    with read_session() as session:
        requests = merges.plan_requests(session, plan_id)
    assert {row.phase for row, _key in requests} == {MergePhase.MERGED}
    worktrees = tmp_path / ".orch" / "worktrees" / plan_id
    assert not any(path.is_dir() and path.name.isdigit() for path in worktrees.rglob("*"))


def test_a_failed_attempts_stray_file_never_reaches_its_retry(worker: None, checkout: Path, tmp_path: Path) -> None:
    command = (
        'if [ "$ORCH_ATTEMPT" = 1 ]; then echo junk > stray.txt; exit 1; fi; test ! -e stray.txt && echo ok > done.txt'
    )
    plan_id = submit([{"id": "flaky", "title": "flaky", "command": command}], checkout, tmp_path)
    drive_until_final(plan_id, 60)

    assert task_status(plan_id) == {"flaky": "succeeded"}
    branch = f"orch/{plan_id}"
    files = git(checkout, "ls-tree", "--name-only", branch).split()
    assert "done.txt" in files and "stray.txt" not in files
    # the failed attempt's edits are kept on its own branch, never merged
    kept = git(checkout, "ls-tree", "--name-only", f"refs/orch/archive/{plan_id}/flaky/1").split()
    assert "stray.txt" in kept


def test_two_tasks_editing_one_line_fail_one_with_merge_conflict_naming_the_path(
    worker: None, checkout: Path, tmp_path: Path
) -> None:
    tasks = [
        {"id": "left", "title": "left", "command": "sed -i 's/line 2/left/' shared.txt"},
        {"id": "right", "title": "right", "command": "sleep 0.5; sed -i 's/line 2/right/' shared.txt"},
    ]
    plan_id = submit(tasks, checkout, tmp_path, on_conflict="fail")
    drive_until_final(plan_id, 60)

    status = task_status(plan_id)
    assert sorted(status.values()) == ["failed", "succeeded"]
    loser = next(key for key, value in status.items() if value == "failed")
    with read_session() as session:
        task = plans.task_by_key(session, plan_id, loser)
        assert task.error is not None and "merge conflict" in task.error and "shared.txt" in task.error
        (attempt,) = plans.task_attempts(session, task.pk)
        assert attempt.failure_class == "merge_conflict"


def test_a_failing_gate_turns_the_merge_down_and_the_task_is_retried_then_fails(
    worker: None, checkout: Path, tmp_path: Path
) -> None:
    plan_id = submit([{"id": "x", "title": "x", "command": "echo x > x.txt"}], checkout, tmp_path,
                     gates=["test ! -f x.txt"])  # fmt: skip
    drive_until_final(plan_id, 60)

    assert task_status(plan_id) == {"x": "failed"}
    with read_session() as session:
        task = plans.task_by_key(session, plan_id, "x")
        attempts = plans.task_attempts(session, task.pk)
        requests = merges.plan_requests(session, plan_id)
    assert [a.failure_class for a in attempts] == ["gate_failed", "gate_failed"]  # retries: 1
    assert [row.phase for row, _ in requests] == [MergePhase.GATE_FAILED] * 2
    logs = tmp_path / ".orch" / "logs" / plan_id  # a gate's output, beside the attempts' logs
    assert sorted(p.name for p in logs.glob("merge-*")) == [f"merge-{row.pk}.gate1.log" for row, _ in requests]
    assert not (tmp_path / ".orch" / "worktrees" / plan_id).exists()  # its folders go with its worktrees
    assert git(checkout, "rev-parse", f"orch/{plan_id}") == git(checkout, "rev-parse", "main")


def test_land_base_fast_forwards_a_bare_remotes_base(worker: None, tmp_path: Path) -> None:
    origin = seeded(tmp_path, "origin", {"f.txt": "f\n"})
    plan_id = submit([{"id": "t", "title": "t", "command": "echo t > t.txt"}], origin, tmp_path, land="base")
    drive_until_final(plan_id, 60)
    from rich.console import Console

    from orch.services.local_run import land_plan

    said = io.StringIO()
    assert land_plan(plan_id, Console(file=said, width=200)) is True
    assert git(origin, "rev-parse", "main") == git(origin, "rev-parse", f"orch/{plan_id}")
    head = git(origin, "rev-parse", "main")[:12]
    # the merger lands it as the plan succeeds, or `orch run` after it: said either way
    assert said.getvalue().strip() in (f"fast-forwarded main to {head} (orch/{plan_id})", f"main is at {head} already")
    assert git(origin, "log", "-1", "--format=%s", "main") == "t"


def test_a_conflict_becomes_a_resolution_task_whose_merge_lands_both_sides(
    worker: None, checkout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orch.settings import get_settings

    monkeypatch.setenv("ORCH_CLAUDE_BIN", str(fake_claude_wrapper(tmp_path / "bin" / "claude")))
    get_settings.cache_clear()
    edit = "FAKE:write\nFAKE-WRITE:shared.txt=line 1\\n{}\\nline 3\\n"
    tasks: list[dict[str, Any]] = [
        {"id": "left", "title": "left", "description": edit.format("left"), "executor": "claude-code"},
        {"id": "right", "title": "right", "description": edit.format("right"), "executor": "claude-code"},
    ]
    plan_id = submit(tasks, checkout, tmp_path)
    drive_until_final(plan_id, 90)

    status = task_status(plan_id)
    resolvers = [key for key in status if ".resolve-" in key]
    assert len(resolvers) == 1 and set(status.values()) == {"succeeded"}, status
    branch = f"orch/{plan_id}"
    merged = git(checkout, "show", f"{branch}:shared.txt").splitlines()
    assert merged[0] == "line 1" and merged[-1] == "line 3" and {"left", "right"} <= set(merged)
    assert not any(line.startswith(("<<<<<<<", "=======", ">>>>>>>")) for line in merged)
    with read_session() as session:
        requests = {key: row for row, key in merges.plan_requests(session, plan_id)}
    loser = resolvers[0].split(".resolve-")[0]
    assert requests[loser].phase == MergePhase.MERGED and requests[loser].resolved_by is not None
    # the resolution's commit merges the conflicting commit: both sides' history is kept
    resolution = requests[resolvers[0]].head_commit
    assert len(git(checkout, "rev-list", "--parents", "-1", resolution).split()) == 3


def test_a_resolution_that_leaves_markers_fails_and_so_does_the_task_it_resolved(
    worker: None, checkout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orch.settings import get_settings

    monkeypatch.setenv("ORCH_CLAUDE_BIN", str(fake_claude_wrapper(tmp_path / "bin" / "claude")))
    get_settings.cache_clear()
    edit = "FAKE:write\nFAKE-WRITE:shared.txt=line 1\\n{}\\nline 3\\n"
    tasks: list[dict[str, Any]] = [  # the titles reach the resolution's prompt: its agent leaves the markers
        {"id": k, "title": f"{k} FAKE-NO-RESOLVE", "description": edit.format(k), "executor": "claude-code"}
        for k in ("left", "right")
    ]
    plan_id = submit(tasks, checkout, tmp_path)
    drive_until_final(plan_id, 90)

    status = task_status(plan_id)
    resolver = next(key for key in status if ".resolve-" in key)
    loser = resolver.split(".resolve-")[0]
    assert status[resolver] == "failed" and status[loser] == "failed", status
    with read_session() as session:
        failed = plans.task_by_key(session, plan_id, resolver)
        assert failed.error is not None and "conflict markers remain in shared.txt" in failed.error
        original = plans.task_by_key(session, plan_id, loser)
        assert (
            original.error is not None and f"merge conflict not resolved: {resolver} did not land it" in original.error
        )
        assert [a.failure_class for a in plans.task_attempts(session, original.pk)] == ["merge_conflict"]
    assert "<<<<<<<" not in git(checkout, "show", f"orch/{plan_id}:shared.txt")  # nothing of it landed


def test_a_base_pushed_to_during_the_plan_is_named_and_never_forced(worker: None, tmp_path: Path) -> None:
    origin = seeded(tmp_path, "origin", {"f.txt": "f\n"})
    seed = tmp_path / "origin-seed"
    plan_id = submit([{"id": "t", "title": "t", "command": "echo t > t.txt"}], origin, tmp_path, land="base")
    # someone else pushes to main after the plan started from it
    (seed / "g.txt").write_text("g\n")
    git(seed, "add", ".")
    git(seed, "commit", "-q", "-m", "theirs")
    git(seed, "push", "-q", str(origin), "main")
    theirs = git(origin, "rev-parse", "main")
    drive_until_final(plan_id, 60)

    with read_session() as session:
        (integration,) = merges.plan_integrations(session, plan_id)
    wait_for(lambda: _landed(integration.pk), 30, "the merger to try landing")
    with read_session() as session:
        assert merges.landed_state(session, integration.pk) == "refused"
        detail = merges.land_detail(session, integration.pk) or ""
    assert detail.startswith("main moved since the plan started (") and "orch never forces main" in detail
    assert git(origin, "rev-parse", "main") == theirs  # untouched
    assert git(origin, "show", f"orch/{plan_id}:t.txt") == "t"


def _landed(integration_pk: int) -> bool:
    with read_session() as session:
        return merges.landed_state(session, integration_pk) is not None


def test_the_resolution_of_a_task_that_declared_its_files_is_not_held_by_them(
    worker: None, checkout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The task whose merge conflicts keeps waiting (merging) and would hold its `files`, which its resolution task
    is given: the resolution task must run all the same."""
    from orch.settings import get_settings

    monkeypatch.setenv("ORCH_CLAUDE_BIN", str(fake_claude_wrapper(tmp_path / "bin" / "claude")))
    get_settings.cache_clear()
    edit = "FAKE:write\nFAKE-WRITE:shared.txt=line 1\\n{}\\nline 3\\n"
    tasks: list[dict[str, Any]] = [
        {"id": "fast", "title": "fast", "description": edit.format("fast"), "executor": "claude-code"},
        {"id": "slow", "title": "slow", "description": "FAKE-SLOW\n" + edit.format("slow"), "executor": "claude-code",
         "files": ["shared.txt"]},  # merges second: its merge conflicts, and it declared the file
    ]  # fmt: skip
    plan_id = submit(tasks, checkout, tmp_path)
    drive_until_final(plan_id, 90)

    status = task_status(plan_id)
    assert set(status.values()) == {"succeeded"} and any(key.startswith("slow.resolve-") for key in status), status


def test_an_agent_pointing_its_head_at_another_branch_moves_only_its_own(
    worker: None, checkout: Path, tmp_path: Path
) -> None:
    """The worktree's HEAD is the agent's to write: orch sets it back to the attempt's branch before committing, so
    the agent cannot make orch move main (or another attempt's branch)."""
    main = git(checkout, "rev-parse", "main")
    command = 'd=$(sed -n "s/^gitdir: //p" .git) && echo "ref: refs/heads/main" > "$d/HEAD" && echo x > x.txt'
    plan_id = submit([{"id": "sly", "title": "sly", "command": command}], checkout, tmp_path)
    drive_until_final(plan_id, 60)

    assert task_status(plan_id) == {"sly": "succeeded"}
    assert git(checkout, "rev-parse", "main") == main  # untouched
    assert git(checkout, "show", f"orch/{plan_id}:x.txt") == "x"
    assert git(checkout, "show", f"orch-work/{plan_id}/sly/1:x.txt") == "x"
