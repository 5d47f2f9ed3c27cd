"""Worktrees of the cache (real git under tmp_path): concurrent adds on one cache, prune-and-retry-once, removal
that leaves nothing, and commit_worktree reading an agent's worktree only through a private git dir."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import threading
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from orch.services.git.cache import RepositoryCache
from orch.services.git.command import GitFailed
from orch.services.git.worktrees import (
    add_detached,
    add_worktree,
    commit_worktree,
    disk_usage,
    list_worktrees,
    remove_worktree,
)
from tests.integration.test_git_cache import AUTHOR, git, make_bare_remote


@pytest.fixture
def cache(tmp_path: Path) -> RepositoryCache:
    remote, _ = make_bare_remote(tmp_path, {"README.md": "hello\n", "src/app.py": "v1\n", "src/gone.py": "bye\n"})
    return RepositoryCache(tmp_path / "home" / "git", str(remote)).ensure()


@pytest.fixture
def main(cache: RepositoryCache) -> str:
    head = cache.fetch("main")["main"]
    assert head is not None
    return head


def _add_in_process(root: str, url: str, path: str, branch: str, commit: str) -> str:
    return str(add_worktree(RepositoryCache(Path(root), url), Path(path), branch, commit))


def test_concurrent_adds_on_one_cache_all_succeed(cache: RepositoryCache, main: str, tmp_path: Path) -> None:
    results: dict[str, Path | BaseException] = {}

    def add(number: int) -> None:
        branch = f"orch-work/p/t{number}/1"
        try:
            results[branch] = add_worktree(cache, tmp_path / "wt" / f"t{number}", branch, main)
        except BaseException as exc:  # reported below, by branch
            results[branch] = exc

    threads = [threading.Thread(target=add, args=(number,)) for number in range(8)]
    for thread in threads:
        thread.start()
    with ProcessPoolExecutor(4, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {
            f"orch-work/p/p{number}/1": pool.submit(
                _add_in_process,
                str(cache.path.parent),
                cache.url,
                str(tmp_path / "wt" / f"p{number}"),
                f"orch-work/p/p{number}/1",
                main,
            )
            for number in range(4)
        }
        for branch, future in futures.items():
            results[branch] = Path(future.result())
    for thread in threads:
        thread.join()
    failures = {branch: result for branch, result in results.items() if isinstance(result, BaseException)}
    assert failures == {}
    listed = {info.branch: info for info in list_worktrees(cache)}
    assert set(listed) == set(results) and all(info.head == main for info in listed.values())
    admin_dirs = {result for result in results.values() if isinstance(result, Path)}
    assert len(admin_dirs) == 12 and all(path.parent == cache.path / "worktrees" for path in admin_dirs)


def test_a_stale_registration_is_pruned_and_the_add_retried(cache: RepositoryCache, main: str, tmp_path: Path) -> None:
    path = tmp_path / "wt" / "p" / "t" / "1"
    add_worktree(cache, path, "orch-work/p/t/1", main)
    subprocess.run(["rm", "-rf", str(path)], check=True)  # a killed worker's folder reaped, its registration kept
    with pytest.raises(subprocess.CalledProcessError):  # control: git refuses the same path
        git(cache.path, "worktree", "add", "-q", "-b", "other", str(path), main)
    git(cache.path, "branch", "-D", "other", check=False)
    assert [info.prunable for info in list_worktrees(cache)] == [True]

    # The same branch at the same commit (a half-made try): deleted and made again.
    add_worktree(cache, path, "orch-work/p/t/1", main)
    assert (path / "src" / "app.py").read_text() == "v1\n"
    assert [(info.path, info.branch, info.prunable) for info in list_worktrees(cache)] == [
        (path, "orch-work/p/t/1", False)
    ]


def test_a_branch_with_work_on_it_is_never_deleted_to_make_room(
    cache: RepositoryCache, main: str, tmp_path: Path
) -> None:
    path = tmp_path / "wt" / "a"
    admin = add_worktree(cache, path, "orch-work/p/a/1", main)
    (path / "work.txt").write_text("work\n")
    worked = commit_worktree(cache, path, admin, message="work\n", author=AUTHOR)
    remove_worktree(cache, path)
    assert cache.ref_commit("refs/heads/orch-work/p/a/1") == worked  # removal deletes no branch
    with pytest.raises(GitFailed) as refused:
        add_worktree(cache, path, "orch-work/p/a/1", main)
    assert str(path) in str(refused.value) and "orch-work/p/a/1" in str(refused.value)
    assert cache.ref_commit("refs/heads/orch-work/p/a/1") == worked
    assert not path.exists()


def test_a_leftover_folder_is_cleared(cache: RepositoryCache, main: str, tmp_path: Path) -> None:
    path = tmp_path / "wt" / "half"
    (path / "src").mkdir(parents=True)
    (path / "src" / "partial.py").write_text("half-made\n")
    admin = add_detached(cache, path, main)
    assert admin.parent == cache.path / "worktrees"
    assert not (path / "src" / "partial.py").exists() and (path / "README.md").is_file()
    assert list_worktrees(cache)[0].branch is None


def test_remove_leaves_nothing_even_locked_and_dirty(cache: RepositoryCache, main: str, tmp_path: Path) -> None:
    path = tmp_path / "wt" / "gone"
    add_worktree(cache, path, "orch-work/p/g/1", main)
    (path / "untracked.bin").write_bytes(os.urandom(10_000))
    (path / "src" / "app.py").write_text("dirty\n")
    git(path, "worktree", "lock", str(path))
    assert disk_usage(path) >= 10_000
    remove_worktree(cache, path)
    assert not path.exists() and list_worktrees(cache) == []
    assert cache.ref_commit("refs/heads/orch-work/p/g/1") == main
    remove_worktree(cache, path)  # again: nothing there, no error


def test_disk_usage_does_not_follow_symlinks_and_counts_a_file_once(tmp_path: Path) -> None:
    outside = tmp_path / "big.bin"
    outside.write_bytes(os.urandom(1 << 20))
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.bin").write_bytes(os.urandom(50_000))
    os.link(folder / "sub" / "a.bin", folder / "hard.bin")
    (folder / "link").symlink_to(outside)
    (folder / "dirlink").symlink_to(tmp_path)
    usage = disk_usage(folder)
    assert 50_000 <= usage < 200_000
    assert disk_usage(tmp_path / "missing") == 0


def _hostile(path: Path, admin: Path, cache: RepositoryCache, markers: Path) -> None:
    """What an agent without a sandbox could plant for orch's git: config in its admin dir and the cache, an
    attribute naming a driver configured nowhere, one naming a planted driver, hooks."""
    planted = f"echo hit >> {markers}/"
    with (cache.path / "config").open("a") as config:
        config.write("[core]\n\trepositoryformatversion = 1\n[extensions]\n\tworktreeConfig = true\n")
    (admin / "config.worktree").write_text(
        f"[core]\n\tbare = false\n\tfsmonitor = {planted}fsmonitor; false\n"
        f'[filter "x"]\n\tclean = {planted}clean; cat\n'
    )
    (path / ".gitattributes").write_text("*.py filter=x\n*.txt filter=configured-nowhere\n")
    (admin / "info").mkdir(exist_ok=True)
    (admin / "info" / "exclude").write_text("*.py\n")  # would hide new files
    hook = cache.path / "hooks" / "post-index-change"
    hook.write_text(f"#!/bin/sh\n{planted}hook\n")
    hook.chmod(0o755)


def test_commit_worktree_commits_what_the_agent_left_and_obeys_none_of_its_config(
    cache: RepositoryCache, main: str, tmp_path: Path
) -> None:
    path = tmp_path / "wt" / "t"
    admin = add_worktree(cache, path, "orch-work/p/t/1", main)
    (path / "src" / "app.py").write_text("v2\n")
    (path / "src" / "gone.py").unlink()
    (path / "src" / "new.py").write_text("new\n")
    (path / "notes.txt").write_text("notes\n")
    (path / ".gitignore").write_text("build/\n*.log\n")
    (path / "build").mkdir()
    (path / "build" / "out.o").write_bytes(b"\0binary")
    (path / "debug.log").write_text("log\n")
    odd = os.fsdecode(b"odd \xff\nname.py")
    (path / odd).write_text("odd\n")
    markers = tmp_path / "markers"
    markers.mkdir()
    _hostile(path, admin, cache, markers)
    git(path, "status", "--porcelain")  # control: the agent's own git runs the plants
    assert list(markers.iterdir())
    for marker in markers.iterdir():
        marker.unlink()

    when = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    message = "Add the new module\n\nOrch-Plan: p\nOrch-Task: t\nOrch-Attempt: 1\n"
    head = commit_worktree(cache, path, admin, message=message, author=AUTHOR, when=when)
    assert list(markers.iterdir()) == []
    assert head is not None and head != main
    assert cache.ref_commit("refs/heads/orch-work/p/t/1") == head
    files = git(cache.path, "ls-tree", "-r", "-z", "--name-only", head).split("\0")
    assert sorted(filter(None, files)) == sorted(
        [".gitattributes", ".gitignore", "README.md", "notes.txt", odd, "src/app.py", "src/new.py"]
    )
    assert git(cache.path, "show", f"{head}:src/app.py") == "v2\n"  # the clean filter did not run
    shown = git(cache.path, "log", "-1", "--format=%an|%ae|%cn|%ce|%at|%P%n%B", head)
    assert shown.startswith(f"Orch Test|orch@example.com|Orch Test|orch@example.com|{int(when.timestamp())}|{main}\n")
    trailers = git(cache.path, "interpret-trailers", "--parse", stdin=shown.split("\n", 1)[1])
    assert trailers == "Orch-Plan: p\nOrch-Task: t\nOrch-Attempt: 1\n"

    assert commit_worktree(cache, path, admin, message="nothing\n", author=AUTHOR) == head  # nothing changed
    assert list(markers.iterdir()) == []


def test_commit_worktree_builds_on_the_agents_own_commit(cache: RepositoryCache, main: str, tmp_path: Path) -> None:
    path = tmp_path / "wt" / "t"
    admin = add_worktree(cache, path, "orch-work/p/t/1", main)
    (path / "committed.txt").write_text("by the agent\n")
    git(path, "add", "committed.txt")
    git(path, "commit", "-qm", "agent's commit")
    agents = git(path, "rev-parse", "HEAD").strip()
    assert commit_worktree(cache, path, admin, message="m\n", author=AUTHOR) == agents  # nothing left over
    (path / "left.txt").write_text("left uncommitted\n")
    head = commit_worktree(cache, path, admin, message="m\n", author=AUTHOR)
    assert head is not None and git(cache.path, "rev-parse", f"{head}^").strip() == agents
    assert cache.changed_paths(agents, head) == ["left.txt"]


def test_commit_worktree_without_an_index_keeps_tracked_ignored_files(
    cache: RepositoryCache, main: str, tmp_path: Path
) -> None:
    path = tmp_path / "wt" / "t"
    admin = add_worktree(cache, path, "orch-work/p/t/1", main)
    (path / ".gitignore").write_text("README.md\n")  # tracked, now ignored: it must stay
    (admin / "index").unlink()
    head = commit_worktree(cache, path, admin, message="m\n", author=AUTHOR)
    assert head is not None and cache.changed_paths(main, head) == [".gitignore"]


def test_extra_parents_make_a_commit_even_without_changes(cache: RepositoryCache, main: str, tmp_path: Path) -> None:
    other = cache.commit_tree(git(cache.path, "rev-parse", f"{main}^{{tree}}").strip(), [main], "other\n", AUTHOR)
    path = tmp_path / "wt" / "t"
    admin = add_worktree(cache, path, "orch-work/p/t/1", main)
    head = commit_worktree(cache, path, admin, message="merge\n", author=AUTHOR, extra_parents=[other])
    assert head is not None and git(cache.path, "rev-parse", f"{head}^@").split() == [main, other]
