"""Linked worktrees of a repository's cache: one per attempt (on its own branch) and temporary detached ones for
merges and gates; committing what an agent left in one. Worktrees belong to the cache, never to the user's
checkout, so `git worktree list` there never shows orch's."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final

from orch.services.git.cache import RepositoryCache
from orch.services.git.command import GitFailed
from orch.services.git.remote import display_url
from orch.services.git.repository import MAX_SMALL_FILE, Repository, StateNotKnown, read_regular
from orch.services.git.worktree_view import WorktreeView, open_known_worktree_view

_DISK_FULL: Final = "no space left on device"


@dataclass(frozen=True)
class WorktreeInfo:
    path: Path
    head: str | None
    branch: str | None  # without refs/heads/; None when detached
    prunable: bool  # its folder is gone: `worktree prune` would drop it


def add_worktree(cache: RepositoryCache, path: Path, branch: str, commit: str) -> Path:
    """A new worktree at `path` on a new branch `branch` at `commit` (`--no-track`: no config written); its admin
    dir (cache/worktrees/<name>). Under the cache's lock; on failure (a stale registration of `path`, a leftover
    folder, the branch left by a half-made earlier try) prune, clear the way and retry once."""
    return _add(cache, path, commit, branch)


def add_detached(cache: RepositoryCache, path: Path, commit: str) -> Path:
    """A temporary detached worktree at `commit` (merges, gates); its admin dir."""
    return _add(cache, path, commit, None)


def _add(cache: RepositoryCache, path: Path, commit: str, branch: str | None) -> Path:
    how = ["--detach"] if branch is None else ["--no-track", "-b", branch]
    path.parent.mkdir(parents=True, exist_ok=True)
    with cache.locked():
        try:
            cache.git("worktree", "add", "--quiet", *how, str(path), commit)
        except GitFailed:
            _clear_the_way(cache, path, branch, commit)
            try:
                cache.git("worktree", "add", "--quiet", *how, str(path), commit)
            except GitFailed as again:
                raise GitFailed(_add_failure(cache, path, branch, commit, again)) from again
    return admin_dir_of(path)


def _add_failure(cache: RepositoryCache, path: Path, branch: str | None, commit: str, failed: GitFailed) -> str:
    on = f"on branch {branch}" if branch else "detached"
    full = _disk_full(path, failed.stderr)
    return (
        f"cannot add worktree {path} ({on} at {commit}) of repository {display_url(cache.url)}: "
        f"{full}{failed.first_line or failed}"
    )


_NEARLY_FULL = 1 << 20  # bytes free under which "unable to write file" means the disk filled


def _disk_full(path: Path, stderr: str) -> str:
    """'no space left on device…: ' when that is why: git's checkout says only "unable to write file" for it."""
    if _DISK_FULL in stderr.lower():
        return f"{_DISK_FULL}: "
    if "unable to write" not in stderr:
        return ""
    probe = next((folder for folder in (path, *path.parents) if folder.exists()), path)
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return ""
    return f"{_DISK_FULL} ({free // 1024} kB free in {probe}): " if free < _NEARLY_FULL else ""


def _clear_the_way(cache: RepositoryCache, path: Path, branch: str | None, commit: str) -> None:
    """What a failed `worktree add` or a dead worker leaves: a registration whose folder is gone, a folder that
    is no registered worktree, the branch a half-made try created (only when it holds `commit` exactly and no
    worktree has it checked out: nothing of anyone's work is lost)."""
    cache.git("worktree", "prune")
    registered = list_worktrees(cache)
    if os.path.lexists(path) and not any(_same(info.path, path) for info in registered):
        _remove_tree(path)
    if branch is None or any(info.branch == branch for info in registered):
        return
    if cache.ref_commit(f"refs/heads/{branch}") == commit:
        cache.git("update-ref", "-d", f"refs/heads/{branch}", commit)


def _same(one: Path, other: Path) -> bool:
    return os.path.abspath(one) == os.path.abspath(other) or one.resolve() == other.resolve()


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def admin_dir_of(worktree: Path) -> Path:
    """The admin dir a worktree's `.git` file names. Only for a worktree orch just made, before an agent ran."""
    try:
        pointer = read_regular(worktree / ".git", MAX_SMALL_FILE)
    except StateNotKnown as exc:
        raise GitFailed(f"{worktree}/.git is not a worktree's .git file: {exc}") from exc
    text = (pointer or b"").decode(errors="replace").strip()
    if not text.startswith("gitdir: "):
        raise GitFailed(f"{worktree}/.git names no admin dir")
    return Path(text.removeprefix("gitdir: "))


def remove_worktree(cache: RepositoryCache, path: Path) -> None:
    """Remove the worktree and its folder (whatever an agent left in it), and prune; never deletes a branch."""
    with cache.locked():
        # Twice forced: an agent's `git worktree lock` or uncommitted files must not keep it. Failing (not
        # registered, holding submodules), the folder goes below all the same.
        with contextlib.suppress(GitFailed):
            cache.git("worktree", "remove", "--force", "--force", str(path))
        _remove_tree(path)
        cache.git("worktree", "prune")
    if os.path.lexists(path):
        raise GitFailed(f"cannot remove worktree {path} of repository {display_url(cache.url)}")


def list_worktrees(cache: RepositoryCache) -> list[WorktreeInfo]:
    """The cache's linked worktrees (`worktree list --porcelain -z`), the cache itself excluded."""
    listing = cache.git("worktree", "list", "--porcelain", "-z")
    records = [record.split("\0") for record in listing.split("\0\0") if record.strip("\0")]
    return [_worktree_info(record) for record in records[1:]]  # the first is the (bare) main repository


def _worktree_info(record: list[str]) -> WorktreeInfo:
    fields = dict(item.partition(" ")[::2] for item in record if item)
    branch = fields.get("branch")
    return WorktreeInfo(
        path=Path(fields.get("worktree", "")),
        head=fields.get("HEAD") or None,
        branch=branch.removeprefix("refs/heads/") if branch else None,
        prunable="prunable" in fields,
    )


def disk_usage(path: Path) -> int:
    """Bytes on disk under `path` (each inode once), not following symlinks; files vanishing meanwhile count 0."""
    seen: set[tuple[int, int]] = set()
    total = 0
    pending = [str(path)]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        info = entry.stat(follow_symlinks=False)
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(entry.path)
                    except OSError:
                        continue
                    if (info.st_dev, info.st_ino) not in seen:
                        seen.add((info.st_dev, info.st_ino))
                        total += info.st_blocks * 512
        except OSError:
            continue
    return total


def commit_worktree(
    cache: RepositoryCache,
    worktree: Path,
    admin_dir: Path,
    *,
    message: str,
    author: tuple[str, str],
    extra_parents: Sequence[str] = (),
    when: datetime | None = None,
) -> str | None:
    """Commit everything the agent left in `worktree` (new, modified, deleted; .gitignore honoured) on top of its
    HEAD (which the agent may have moved by committing), with `extra_parents` after HEAD; the new head, or HEAD
    unchanged when nothing changed and no extra parent is given; None when HEAD is unborn and nothing is there.

    The worktree is agent-writable: git reads it only through a private git dir (its config, attributes
    drivers, hooks and info/exclude are not the agent's), with the cache's objects as data and a copy of the
    admin dir's index; HEAD is read from the admin dir's files. Then the worktree's branch (in the cache) moves
    from the old HEAD to the new commit by compare-and-swap."""
    repository = Repository(work_tree=worktree, git_dir=admin_dir, common_dir=cache.path)
    with open_known_worktree_view(repository) as view:
        tree = _staged_tree(view)
        head = view.head
    if head is not None and not extra_parents and cache.git("rev-parse", f"{head}^{{tree}}").strip() == tree:
        return head
    if head is None and not extra_parents and tree == _EMPTY_TREE:
        return None
    parents = [*([head] if head else []), *extra_parents]
    new = cache.commit_tree(tree, parents, message, author, when)
    branch = _branch_of(admin_dir)
    if branch is not None:
        cache.git("update-ref", branch, new, head or "")
    return new


_EMPTY_TREE: Final = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


def _staged_tree(view: WorktreeView) -> str:
    if not view.has_index and view.head is not None:
        view.git("read-tree", view.head)  # without an index, tracked files that are ignored would be dropped
    view.git("add", "--all", "--", ".")
    return view.git("write-tree").strip()


def _branch_of(admin_dir: Path) -> str | None:
    """The branch ref the admin dir's HEAD names (refs/heads/...), or None when it is detached."""
    try:
        content = read_regular(admin_dir / "HEAD", MAX_SMALL_FILE) or b""
    except StateNotKnown:
        return None
    text = content.decode(errors="replace").strip()
    ref = text.removeprefix("ref:").strip() if text.startswith("ref:") else ""
    return ref if ref.startswith("refs/heads/") else None
