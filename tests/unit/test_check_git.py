"""`orch check`'s git line: git's version and where worktrees go, or a warning on a host without git."""

from __future__ import annotations

from pathlib import Path

import pytest

from orch.services.check import check_git
from orch.settings import Settings


def test_git_is_named_with_its_version_and_the_worktree_roots_free_disk(tmp_path: Path) -> None:
    check = check_git(Settings(home=tmp_path / ".orch"))
    assert check.ok and not check.warning
    assert f"worktrees in {(tmp_path / '.orch' / 'worktrees').resolve()} (" in check.detail
    assert check.detail.split()[0][0].isdigit() and " at /" in check.detail and " GB free)" in check.detail


def test_a_host_without_git_is_a_warning_saying_what_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a folder without git
    check = check_git(Settings(home=tmp_path / ".orch"))
    assert check.ok and check.warning
    assert check.detail == "git is not installed (no `git` on PATH): plans with repo: fail on this host's workers"
