"""Worktrees on this host: keeping an attempt's work (commit what it left, push its branch and archive ref) and
sweeping the worktrees whose attempts are over — those a killed worker left too — so none leaks and no work is lost:
a worktree is removed only once its commits are on the remote under its archive ref (or it holds nothing new).

Only folders orch made are touched: `<worktree root>/<plan>/<task>/<attempt>` as the store names them, each a
registered worktree of the cache of its plan's repository.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from orch.log import get_logger
from orch.services.git.cache import RepositoryCache
from orch.services.git.command import GitFailed
from orch.services.git.repository import StateNotKnown
from orch.services.git.worktrees import commit_worktree, disk_usage, remove_worktree
from orch.settings import Settings
from orch.states import AttemptStatus, MergePhase
from orch.store import merges
from orch.store.db import read_session
from orch.store.models import AttemptRow, TaskRow

log = get_logger(__name__)


def keep_work(
    cache: RepositoryCache,
    worktree: Path,
    admin_dir: Path,
    *,
    branch: str,
    base_commit: str,
    archive: str,
    message: str,
    author: tuple[str, str],
    extra_parents: Sequence[str] = (),
    when: datetime | None = None,
) -> str:
    """Commit what is left in the worktree and push the branch and its archive ref (when there is anything new);
    returns the branch's head."""
    head = commit_worktree(
        cache, worktree, admin_dir, message=message, author=author, extra_parents=extra_parents, when=when
    )
    head = head or base_commit
    if head != base_commit:
        pushed = cache.push_kept(head, branch, archive)
        if not pushed.pushed and pushed.remote_head != head:
            raise GitFailed(f"cannot push branch {branch}: {pushed.reason}")
    return head


@dataclass(frozen=True)
class HostWorktree:
    path: Path
    plan_id: str
    key: str
    attempt: int
    state: str  # "running", the attempt's final status, or "unknown" (the store has no such attempt)
    size: int
    age_s: float
    url: str | None  # its repository's, from the store
    branch: str | None
    base_commit: str | None


def host_worktrees(settings: Settings) -> list[HostWorktree]:
    """The attempt worktrees under this host's ORCH_WORKTREE_ROOT, with what the store says of their attempts."""
    root = settings.resolved_worktree_root
    found: list[HostWorktree] = []
    now = time.time()
    for path, plan_id, key, attempt in _attempt_folders(root):
        state, url, branch, base = _attempt_state(settings.resolved_database_url, plan_id, key, attempt)
        try:
            age = max(0.0, now - path.stat().st_mtime)
        except OSError:
            continue
        found.append(HostWorktree(path, plan_id, key, attempt, state, disk_usage(path), age, url, branch, base))
    return found


def _attempt_folders(root: Path) -> list[tuple[Path, str, str, int]]:
    """<root>/<plan>/<task>/<attempt> folders (no link followed), as orch names them."""
    folders = []
    for plan in _subfolders(root):
        if plan.name.startswith("."):
            continue  # .merges: a merger's scratch
        for task in _subfolders(plan):
            for attempt in _subfolders(task):
                if attempt.name.isdigit():
                    folders.append((attempt, plan.name, task.name, int(attempt.name)))
    return folders


def _subfolders(folder: Path) -> list[Path]:
    try:
        return sorted(entry for entry in folder.iterdir() if entry.is_dir() and not entry.is_symlink())
    except OSError:
        return []


def _attempt_state(store: str, plan_id: str, key: str, number: int) -> tuple[str, str | None, str | None, str | None]:
    with read_session(store) as session:
        row = session.execute(
            select(AttemptRow.status, AttemptRow.branch, AttemptRow.base_commit, TaskRow.repository)
            .join(TaskRow, TaskRow.pk == AttemptRow.task_pk)
            .where(TaskRow.plan_id == plan_id, TaskRow.key == key, AttemptRow.number == number)
        ).first()
        if row is None:
            return "unknown", None, None, None
        status, branch, base, repository = row
        integration = merges.find_integration(session, plan_id, repository or "")
        url = None if integration is None else integration.url
    state = "running" if status is AttemptStatus.RUNNING else str(status)
    return state, url, branch, base


def sweep(settings: Settings, *, include_unknown: bool = False) -> list[tuple[HostWorktree, str]]:
    """Remove the worktrees whose attempts are over, their leftovers committed and pushed first; returns each
    worktree looked at with what became of it."""
    done = []
    for tree in host_worktrees(settings):
        if tree.state == "running" or (tree.state == "unknown" and not include_unknown):
            done.append((tree, "kept: its attempt is running" if tree.state == "running" else "kept: unknown"))
            continue
        try:
            done.append((tree, _sweep_one(settings, tree)))
        except (GitFailed, StateNotKnown, OSError) as exc:
            done.append((tree, f"kept: {exc}"))
    sweep_merge_scratch(settings)
    return done


def sweep_merge_scratch(settings: Settings) -> list[Path]:
    """A merger's scratch worktrees (`.merges/<plan>-<request>-<what>`) whose request no merger is merging now: a
    merger killed mid-gate or mid-relock left them. Returns those removed."""
    scratch = settings.resolved_worktree_root / ".merges"
    removed = []
    for folder in _subfolders(scratch):
        parts = folder.name.rsplit("-", 2)  # <plan id>-<request>-<gates|relock>
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        plan_id, request_pk = parts[0], parts[1]
        with read_session(settings.resolved_database_url) as session:
            request = merges.get_request(session, int(request_pk))
            integration = merges.get_integration(session, request.integration_pk) if request else None
        if request is None or integration is None or integration.plan_id != plan_id:
            continue  # not ours to judge
        if request.phase == MergePhase.MERGING:
            continue  # a merger may be in it now
        try:
            remove_worktree(RepositoryCache(settings.git_cache_dir, integration.url).ensure(), folder)
        except (GitFailed, OSError):
            shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _sweep_one(settings: Settings, tree: HostWorktree) -> str:
    if tree.url is None or tree.branch is None or tree.base_commit is None:
        shutil.rmtree(tree.path)  # made, but never recorded: nothing of an agent ran in it
        return "removed (never used)"
    cache = RepositoryCache(settings.git_cache_dir, tree.url).ensure()
    admin_dir = _admin_dir(cache, tree.path)
    head = tree.base_commit
    if admin_dir is not None:
        head = keep_work(
            cache,
            tree.path,
            admin_dir,
            branch=tree.branch,
            base_commit=tree.base_commit,
            archive=merges.archive_ref(tree.plan_id, tree.key, tree.attempt),
            message=f"[leftover of attempt {tree.attempt}, {tree.state}] {tree.key}\n\nOrch-Plan: {tree.plan_id}\n"
            f"Orch-Task: {tree.key}\nOrch-Attempt: {tree.attempt}\n",
            author=settings.git_author,
            when=datetime.now(UTC),
        )
    remove_worktree(cache, tree.path)
    return "removed" if head == tree.base_commit else f"removed; its leftovers kept at {head[:12]}"


def _admin_dir(cache: RepositoryCache, path: Path) -> Path | None:
    """The cache's admin folder of the worktree at `path`: the one whose registered worktree is `path`, inside the
    cache's own worktrees/ (an agent could rewrite what its `.git` file says, not where the cache keeps it)."""
    try:
        registered = list((cache.path / "worktrees").iterdir())
    except OSError:
        return None
    for admin in registered:
        try:
            pointed = (admin / "gitdir").read_text().strip()
        except OSError:
            continue
        if Path(pointed) == path / ".git" and os.path.realpath(admin).startswith(str(cache.path)):
            return admin
    return None
