"""What an attempt changed in its workspace, from git where the workspace is (inside) a repository.

Before the agent runs, the dirty and untracked files (with their blob hashes) and HEAD are noted; after it, a
file counts as changed when its state differs, and commits the agent made add the files they touch. Paths are
relative to the workdir; a workspace that is no git repository gives None ("not known"), never a guess.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

_GIT_TIMEOUT = 60


@dataclass(frozen=True)
class Snapshot:
    head: str | None
    dirty: dict[str, str]  # path (relative to the workdir) → blob hash, "-" when deleted


def _git(workdir: Path, *args: str, stdin: str | None = None) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(workdir), *args], input=stdin, capture_output=True, text=True, timeout=_GIT_TIMEOUT
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def snapshot(workdir: Path) -> Snapshot | None:
    if _git(workdir, "rev-parse", "--is-inside-work-tree") is None:
        return None
    head = _git(workdir, "rev-parse", "--verify", "-q", "HEAD")
    prefix = (_git(workdir, "rev-parse", "--show-prefix") or "").strip()
    status = _git(workdir, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames", "--", ".")
    if status is None:
        return None
    paths = [p.removeprefix(prefix) for p in _status_paths(status)]
    existing = [p for p in paths if (workdir / p).is_file()]
    hashes = _git(workdir, "hash-object", "--stdin-paths", stdin="\n".join(existing)) if existing else ""
    blob = dict(zip(existing, (hashes or "").split(), strict=False))
    return Snapshot(head.strip() if head else None, {p: blob.get(p, "-") for p in paths})


def _status_paths(status: str) -> list[str]:
    """Paths (from the repository's root) of `git status --porcelain=v1 -z --no-renames`."""
    return [entry[3:] for entry in status.split("\0") if len(entry) > 3]


def changed_since(before: Snapshot, workdir: Path) -> tuple[str, ...] | None:
    after = snapshot(workdir)
    if after is None:
        return None
    changed = {p for p, h in after.dirty.items() if before.dirty.get(p) != h}
    changed |= {p for p in before.dirty if p not in after.dirty}
    if before.head and after.head and before.head != after.head:
        committed = _git(workdir, "diff", "--name-only", "--relative", before.head, after.head, "--", ".")
        changed |= set((committed or "").split())
    return tuple(sorted(changed))


def in_scope(path: str, patterns: tuple[str, ...] | list[str]) -> bool:
    """Whether `path` is covered by a task's `files` patterns ("dir/" or "dir" covers what is under it, `**/`
    also matches no folder at all)."""
    for pattern in patterns:
        bare = pattern.rstrip("/")
        if path == bare or path.startswith(bare + "/"):
            return True
        if fnmatchcase(path, pattern) or fnmatchcase(path, pattern.replace("**/", "")):
            return True
    return False
