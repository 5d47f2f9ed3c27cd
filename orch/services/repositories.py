"""A plan's repositories as seen from the command that submits it: each one reachable, its base branch's commit
read from the remote (the plan starts there), and a word about the user's own checkout when the repository is a
local one (orch never touches it: it is only ever a remote)."""

from __future__ import annotations

from pathlib import Path

from orch.errors import PlanInvalid
from orch.intake.plan import Plan, Repository, quoted
from orch.services.git.cache import RepositoryCache
from orch.services.git.command import GitFailed
from orch.services.git.remote import check_url, display_url
from orch.services.git.repository import StateNotKnown, find_repository, resolve_head
from orch.services.git.worktree_view import open_worktree_view
from orch.settings import Settings


def base_commits(plan: Plan, settings: Settings) -> dict[str, str]:
    """Each repository's base commit, read from its remote; PlanInvalid (exit 2, nothing written) naming the
    repository when it cannot be reached or has no such branch."""
    found: dict[str, str] = {}
    problems: list[str] = []
    for repository in plan.repositories:
        try:
            found[repository.name] = base_commit(repository, settings)
        except GitFailed as exc:  # it names the repository
            problems.append(f"{plan.source}: {_which(repository)}: {exc}")
        except _NoBase as exc:
            problems.append(f"{plan.source}: {_which(repository)} {display_url(repository.url)}: {exc}")
    if problems:
        raise PlanInvalid(plan.source, problems)
    return found


class _NoBase(Exception):
    pass


def _which(repository: Repository) -> str:
    return "repo" if repository.name == "repo" else f"target {quoted(repository.name)}"


def base_commit(repository: Repository, settings: Settings) -> str:
    check_url(repository.url)
    cache = RepositoryCache(settings.git_cache_dir, repository.url).ensure()
    commit = cache.remote_heads(repository.base).get(repository.base)
    if commit is None:
        raise _NoBase(f"has no branch {quoted(repository.base)} (`base:` names the branch the plan starts from)")
    return commit


def checkout_notes(plan: Plan, base_commits: dict[str, str]) -> list[str]:
    """What to tell the user about a local repository's checkout: the plan starts from the base's commit, not
    from what the checkout holds (another branch, uncommitted changes), which orch never touches."""
    notes = []
    for repository in plan.repositories:
        path = Path(repository.url)
        if not path.is_absolute() or not path.is_dir():
            continue
        state = _checkout_state(path, repository.base)
        if state:
            commit = base_commits.get(repository.name, "")[:12]
            notes.append(
                f"your checkout {path} {state}: the plan starts from {repository.base} at {commit}, "
                "without it, and never touches the checkout"
            )
    return notes


def _checkout_state(path: Path, base: str) -> str:
    """'is on X' (a branch other than `base`, or a detached HEAD), 'has uncommitted changes', both, or '' — read
    without running git in the checkout."""
    found = find_repository(path)
    if found is None or found.work_tree != path.resolve():
        return ""
    said = []
    try:
        head = (found.git_dir / "HEAD").read_text(errors="replace").strip()
        resolve_head(found.git_dir, found.common_dir)
    except (OSError, StateNotKnown):
        return ""
    if head != f"ref: refs/heads/{base}":
        said.append(
            f"is on {head.removeprefix('ref: refs/heads/')}" if head.startswith("ref: ") else "has a detached HEAD"
        )
    view = open_worktree_view(path)
    if view is not None:
        with view:
            try:
                dirty = view.git("status", "--porcelain=v1", "-z", "--untracked-files=no")
            except GitFailed:
                dirty = ""
        if dirty:
            said.append("has uncommitted changes")
    return " and ".join(said)
