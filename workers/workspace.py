"""What an attempt changed in its workspace, from git where the workspace is (inside) a repository.

Before the agent runs, the dirty and untracked files (with their blob hashes) and HEAD are noted; after it, a
file counts as changed when its state differs, and commits the agent made add the files they touch. Paths are
relative to the workdir; a workspace that is no git repository gives None ("not known"), never a guess.

The agent can write the repository, so git reads it only through `orch.services.git.worktree_view`: none of its
config, hooks or attribute drivers, none of the worker's secrets.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from orch.decisions.file_leases import covers
from orch.services.git import repository
from orch.services.git.command import GitFailed, iter_nul
from orch.services.git.worktree_view import WorktreeView, open_worktree_view


@dataclass(frozen=True)
class Snapshot:
    head: str | None
    dirty: dict[str, str]  # path (relative to the workdir) → blob hash, "-" when deleted


def snapshot(workdir: Path) -> Snapshot | None:
    view = open_worktree_view(workdir)
    if view is None:
        return None
    with view:
        return _snapshot(view)


def _snapshot(view: WorktreeView) -> Snapshot | None:
    try:
        status = view.git("status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames", "--", ".")
        paths = [p.removeprefix(view.prefix) for p in _status_paths(status)]
        blobs = _blob_hashes(view, paths)
    except GitFailed:
        return None
    if blobs is None:
        return None
    return Snapshot(view.head, {p: blobs.get(p, "-") for p in paths})


def _status_paths(status: str) -> list[str]:
    """Paths (from the repository's root) of `git status --porcelain=v1 -z --no-renames`."""
    return [entry[3:] for entry in iter_nul(status) if len(entry) > 3]


def _blob_hashes(view: WorktreeView, paths: list[str]) -> dict[str, str] | None:
    """Regular files by their blob hash (unfiltered content); a symlink by its target, which is what git stores
    for one, so no file outside the workdir is ever read. Paths that are neither, or lie beyond a symlinked
    folder (git too sees those as deleted), are left out."""
    hashes: dict[str, str] = {}
    files: list[str] = []
    for path in paths:
        full = view.workdir / path
        if os.path.realpath(full.parent) != str(full.parent):
            continue
        if full.is_symlink():
            try:
                hashes[path] = "link:" + hashlib.sha256(os.fsencode(os.readlink(full))).hexdigest()
            except OSError:  # gone meanwhile
                continue
        elif full.is_file():
            files.append(path)
    by_line = [p for p in files if "\n" not in p]  # --stdin-paths is one path a line
    by_argument = [p for p in files if "\n" in p]
    # Absolute paths: with GIT_WORK_TREE set, git runs hash-object from the worktree's top, not the workdir.
    lines = "".join(f"{view.workdir / p}\n" for p in by_line)
    listed = view.git("hash-object", "--stdin-paths", stdin=lines).split() if by_line else []
    named = view.git("hash-object", "--", *(str(view.workdir / p) for p in by_argument)).split() if by_argument else []
    if len(listed) != len(by_line) or len(named) != len(by_argument):
        return None
    hashes.update(zip(by_line + by_argument, listed + named, strict=True))
    return hashes


def holds_repository(workdir: Path) -> bool:
    """Whether the workdir is in a git worktree at all, readable or not (`scope: strict` fails when it is and what
    changed cannot be read)."""
    return repository.holds_repository(workdir)


def changed_since(before: Snapshot, workdir: Path) -> tuple[str, ...] | None:
    view = open_worktree_view(workdir)
    if view is None:
        return None
    with view:
        after = _snapshot(view)
        if after is None:
            return None
        changed = {p for p, h in after.dirty.items() if before.dirty.get(p) != h}
        changed |= {p for p in before.dirty if p not in after.dirty}
        if before.head and after.head and before.head != after.head:
            try:
                committed = view.git(
                    "diff", "--name-only", "-z", "--no-renames", "--relative", before.head, after.head, "--", "."
                )
            except GitFailed:
                return None
            changed |= set(iter_nul(committed))
    return tuple(sorted(_printable(path) for path in changed))


def _printable(path: str) -> str:
    """A name that is no UTF-8 (git gives bytes) as text any store takes: its odd bytes as `\\xNN`."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def in_scope(path: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """Whether `path` is covered by a task's `files` patterns (orch.decisions.file_leases.covers)."""
    return covers(path, patterns)
