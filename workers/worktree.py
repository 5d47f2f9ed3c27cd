"""A worktree attempt on its worker: its own git worktree, made from this host's cache of the repository at the
integration branch's head (which holds every dependency's merged work), and at its end orch's commit of what the
agent left, pushed to the remote with an archive ref, before the worktree is removed.

Every git command goes through orch.services.git: the cache is orch's own, and the worktree (agent-written) is
read only through a private git dir.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from orch.dispatch.merge_queue import integration_head
from orch.dispatch.worktrees import keep_work, sweep
from orch.log import get_logger
from orch.records import Claim, ClaimedTask, Integration
from orch.services.git.cache import RepositoryCache
from orch.services.git.command import GitFailed
from orch.services.git.merging import start_conflicted_merge
from orch.services.git.worktrees import add_worktree, disk_usage, remove_worktree
from orch.services.isolation import current_isolation
from orch.settings import Settings
from orch.store.merges import archive_ref, attempt_branch

log = get_logger(__name__)

CONFLICT_MARKERS = (b"<<<<<<< ", b">>>>>>> ")


@dataclass(frozen=True)
class AttemptWorktree:
    cache: RepositoryCache
    integration: Integration
    path: Path
    admin_dir: Path
    branch: str
    base_commit: str
    merging: str | None = None  # a resolution task's: the conflicting commit being merged in
    conflicts: tuple[str, ...] = ()


QUOTA_WAIT_SECONDS = 60.0  # a worktree attempt held by the disk quota is tried again after this long


SWEEP_EVERY_SECONDS = 600.0  # a worker sweeps its host's finished worktrees at most this often, beside its start
_last_sweep = time.monotonic()


def sweep_now_and_then(settings: Settings) -> None:
    """The worktrees a lost lease or a cancel left (their work not yet kept) are swept while the worker runs, not
    only at its next start."""
    global _last_sweep
    if time.monotonic() - _last_sweep < SWEEP_EVERY_SECONDS:
        return
    _last_sweep = time.monotonic()
    try:
        sweep(settings)
    except Exception as exc:  # a sweep that fails must not fail the attempt that ran it
        log.warning("could not sweep old worktrees", error=str(exc)[:300])


def over_quota(settings: Settings) -> str | None:
    """Why this worker makes no new worktree now (its worktrees take ORCH_WORKTREE_MAX_GB, even once those of
    finished attempts are swept), or None."""
    if settings.worktree_max_gb is None:
        return None
    limit = settings.worktree_max_gb * 1e9
    root = settings.resolved_worktree_root
    used = disk_usage(root) if root.exists() else 0
    if used <= limit:
        return None
    sweep(settings)
    used = disk_usage(root)
    if used <= limit:
        return None
    return (
        f"this worker's worktrees take {used / 1e9:.1f} GB, over ORCH_WORKTREE_MAX_GB={settings.worktree_max_gb:g} "
        f"(in {root}): held until they are removed"
    )


def worktree_path(settings: Settings, plan_id: str, key: str, attempt: int) -> Path:
    return settings.resolved_worktree_root / plan_id / key / str(attempt)


def prepare(
    claim: Claim, task: ClaimedTask, integration: Integration, settings: Settings, merging: str | None = None
) -> AttemptWorktree:
    """The attempt's worktree on branch orch-work/<plan>/<task>/<attempt>, at the integration branch's head (a
    resolution task's with the conflicting commit `merging` half-merged into it, markers in its files)."""
    cache = RepositoryCache(settings.git_cache_dir, integration.url).ensure()
    base = integration_head(cache, integration)
    path = worktree_path(settings, claim.plan_id, claim.key, claim.attempt)
    if path.exists():  # a leftover of this very attempt (a worker that died making it): never another's
        remove_worktree(cache, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    branch = attempt_branch(claim.plan_id, claim.key, claim.attempt)
    admin_dir = add_worktree(cache, path, branch, base)
    conflicts: tuple[str, ...] = ()
    if merging is not None:
        cache.fetch_commit(merging)
        conflicts = start_conflicted_merge(cache, path, merging)
    give_to_agent_user(settings, path, admin_dir)
    return AttemptWorktree(cache, integration, path, admin_dir, branch, base, merging, conflicts)


def give_to_agent_user(settings: Settings, *paths: Path) -> None:
    """A root worker's agents run as ORCH_AGENT_USER: the worktree (and its admin folder) become theirs."""
    user = current_isolation(settings).user
    if user is None or os.geteuid() != 0:
        return
    for top in paths:
        for folder, dirs, files in os.walk(top):
            os.chown(folder, user.uid, user.gid, follow_symlinks=False)
            for name in (*dirs, *files):
                os.chown(os.path.join(folder, name), user.uid, user.gid, follow_symlinks=False)


def commit_message(task: ClaimedTask, claim: Claim, succeeded: bool) -> str:
    title = task.title.strip().splitlines()[0] if task.title.strip() else task.key
    prefix = "" if succeeded else f"[attempt {claim.attempt} failed] "
    return f"{prefix}{title}\n\nOrch-Plan: {claim.plan_id}\nOrch-Task: {claim.key}\nOrch-Attempt: {claim.attempt}\n"


def conclude(
    worktree: AttemptWorktree, task: ClaimedTask, claim: Claim, settings: Settings, succeeded: bool, now: datetime
) -> str:
    """Commit what the agent left (a resolution task's as the merge of the conflicting commit), push the attempt's
    branch and its archive ref to the remote; returns the branch's head. The caller checks the lease first."""
    _head_on_own_branch(worktree)
    return keep_work(
        worktree.cache,
        worktree.path,
        worktree.admin_dir,
        branch=worktree.branch,
        base_commit=worktree.base_commit,
        archive=archive_ref(claim.plan_id, claim.key, claim.attempt),
        message=commit_message(task, claim, succeeded),
        author=settings.git_author,
        extra_parents=(worktree.merging,) if worktree.merging and succeeded else (),
        when=now,
    )


def _head_on_own_branch(worktree: AttemptWorktree) -> None:
    """The worktree's HEAD (agent-writable) names the attempt's own branch again before orch commits: orch moves that
    branch and no other, whatever ref the agent pointed HEAD at (another attempt's branch, one not made yet). What
    the files hold is committed all the same."""
    head_file = worktree.admin_dir / "HEAD"
    wanted = f"ref: refs/heads/{worktree.branch}\n"
    try:
        if head_file.read_text() == wanted:
            return
    except (OSError, UnicodeDecodeError):
        pass
    log.warning("the agent moved its worktree's HEAD: set back to its own branch", branch=worktree.branch)
    head_file.unlink(missing_ok=True)  # a link or anything else it left there goes, not what it points to
    head_file.write_text(wanted)


def markers_left(worktree: AttemptWorktree) -> list[str]:
    """A resolution task's conflicted files that still hold conflict markers (read without following links)."""
    left = []
    top = os.path.realpath(worktree.path)
    for relative in worktree.conflicts:
        path = worktree.path / relative
        if os.path.realpath(path.parent) != os.path.join(top, os.path.dirname(relative)).rstrip("/"):
            continue  # a folder on its way is a link: never read outside the worktree
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            continue
        with os.fdopen(fd, "rb") as file:
            if stat.S_ISREG(os.fstat(fd).st_mode) and any(line.startswith(CONFLICT_MARKERS) for line in file):
                left.append(relative)
    return left


def discard(worktree: AttemptWorktree) -> None:
    """Remove the worktree (its work is committed and pushed, or there was none); never a branch."""
    try:
        remove_worktree(worktree.cache, worktree.path)
    except GitFailed as exc:
        log.warning("could not remove worktree", path=str(worktree.path), error=str(exc))
        shutil.rmtree(worktree.path, ignore_errors=True)
    for folder in (worktree.path.parent, worktree.path.parent.parent):  # <task>/, then <plan>/, once empty
        try:
            folder.rmdir()
        except OSError:  # not empty (another attempt's), or gone
            break
