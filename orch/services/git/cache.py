"""One bare clone per repository per host (under ORCH_HOME/git): every worktree of an attempt is a linked worktree
of it, and every fetch and push goes from it to the repository's URL. Only orch's code should write it, but an
agent without a sandbox can write it through its linked worktree (`git config`, hooks), so every `ensure` puts
orch's own config back and empties what could name a program."""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from orch.services.git.command import GIT_TIMEOUT_S, GitFailed, iter_nul, run_git
from orch.services.git.remote import display_url, remote_access

LOCK_TIMEOUT_S: Final = 120.0
REMOTE_TIMEOUT_S: Final = 600.0
REMOTE_PREFIX: Final = "refs/remotes/origin/"
# What the cache's config always holds: a bare sha1 repository and nothing that names a program. No remote
# section: the URL is given on each command, so nothing an agent writes can redirect a fetch or push.
CACHE_CONFIG: Final = (
    "[core]\n"
    "\trepositoryformatversion = 0\n"
    "\tfilemode = true\n"
    "\tbare = true\n"
    "\tlogallrefupdates = false\n"
    "[gc]\n"
    "\tauto = 0\n"
    "[maintenance]\n"
    "\tauto = false\n"
    "[advice]\n"
    "\tdetachedHead = false\n"
)
_SLUG: Final = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class PushOutcome:
    pushed: bool
    remote_head: str | None  # what the remote branch held when the push was refused (None: absent / unknown)
    reason: str  # git's one-line reason when refused ("" when pushed)


def _slug(url: str) -> str:
    name = url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1].removesuffix(".git")
    return _SLUG.sub("-", name).strip(".-")[:40] or "repo"


def git_date(when: datetime) -> str:
    """`when` as git's raw date (`<unix seconds> <+hhmm>`); a naive datetime is taken as UTC."""
    aware = when if when.tzinfo is not None else when.replace(tzinfo=UTC)
    offset = aware.strftime("%z") or "+0000"
    return f"{int(aware.timestamp())} {offset}"


def identity_env(author: tuple[str, str], when: datetime | None) -> dict[str, str]:
    """Author and committer are both `author` (orch commits for the agent); dates from `when`."""
    name, email = author
    env = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email}
    if when is not None:
        env["GIT_AUTHOR_DATE"] = env["GIT_COMMITTER_DATE"] = git_date(when)
    return env


class RepositoryCache:
    """The bare cache clone of the repository at `url` on this host."""

    def __init__(self, root: Path, url: str) -> None:
        self.url = url
        digest = hashlib.sha256(url.encode()).hexdigest()[:16]
        self.path = root / f"{_slug(url)}-{digest}.git"

    def __repr__(self) -> str:
        return f"RepositoryCache({self.path}, {display_url(self.url)!r})"

    # --- the cache itself -------------------------------------------------------------------------------------

    def ensure(self) -> RepositoryCache:
        """Create the cache if missing, and (on every call) put orch's config back, delete info/attributes and
        empty hooks/. Why every call: without a sandbox an agent could have written them through its worktree."""
        with self.locked():
            if not (self.path / "HEAD").is_file():
                self.path.mkdir(parents=True, exist_ok=True)
                # No template: no sample hooks, no info/exclude an agent could later use to hide files.
                run_git(["init", "--bare", "--quiet", "--template="], git_dir=self.path, cwd=self.path.parent)
            self._rewrite_config()
        return self

    def _rewrite_config(self) -> None:
        handle, temporary = tempfile.mkstemp(prefix="config.", dir=self.path)
        with os.fdopen(handle, "w") as config:
            config.write(CACHE_CONFIG)
        os.replace(temporary, self.path / "config")  # a rename: a git reading meanwhile sees old or new, whole
        info = self.path / "info"
        if info.is_symlink() or not info.is_dir():
            _remove_any(info)  # a symlinked info/ must not make the line below delete a file elsewhere
        for gone in (info / "attributes", self.path / "config.worktree"):
            _remove_any(gone)
        hooks = self.path / "hooks"
        _remove_any(hooks)
        hooks.mkdir()

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold `<path>.lock` (flock; per open file, so threads of one process serialise too). Serialises
        worktree add/remove/prune, fetches and config rewrites per repository per host: concurrent `git worktree
        add` otherwise race on the cache's lock files. GitFailed naming the lock after LOCK_TIMEOUT_S."""
        lock_path = self.path.with_name(self.path.name + ".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with lock_path.open("a") as lock_file:
            _flock_within(lock_file.fileno(), lock_path, LOCK_TIMEOUT_S)
            try:
                yield
            finally:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)

    def git(
        self,
        *args: str,
        work_tree: Path | None = None,
        cwd: Path | None = None,
        stdin: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = GIT_TIMEOUT_S,
    ) -> str:
        """run_git on the cache (its config is orch's own: see `ensure`)."""
        return run_git(
            args, git_dir=self.path, work_tree=work_tree, cwd=cwd or self.path, stdin=stdin, env=env, timeout=timeout
        )

    def _remote_git(self, *args: str, failure: str = "cannot reach repository") -> str:
        """A command reaching the URL, which stands in for the `{url}` item of `args`: only its transport allowed,
        no password in argv. GitFailed names the URL (masked) and git's first line."""
        access = remote_access(self.url)
        argv = [access.argv_url if arg == "{url}" else arg for arg in args]
        argv[1:1] = access.options(argv[0])
        try:
            return run_git(
                argv,
                git_dir=self.path,
                cwd=self.path,
                env=access.env,
                timeout=REMOTE_TIMEOUT_S,
                extra_config=access.config,
            )
        except GitFailed as exc:
            raise GitFailed(
                f"{failure} {display_url(self.url)}: {exc.first_line or exc}",
                returncode=exc.returncode,
                stdout=exc.stdout,
                stderr=exc.stderr,
            ) from exc

    # --- reading the remote -----------------------------------------------------------------------------------

    def remote_heads(self, *branches: str) -> dict[str, str | None]:
        """`ls-remote --heads` → {branch: sha, or None when the remote lacks it}; GitFailed("cannot reach
        repository <url>: <git's line>") when unreachable."""
        listing = self._remote_git("ls-remote", "--heads", "{url}", *(f"refs/heads/{b}" for b in branches))
        found = {}
        for line in listing.splitlines():
            sha, _, ref = line.partition("\t")
            found[ref.removeprefix("refs/heads/")] = sha
        return {branch: found.get(branch) for branch in branches}

    def fetch(self, *branches: str) -> dict[str, str | None]:
        """Fetch refs/heads/<b> into refs/remotes/origin/<b> (forced; the name dropped when the remote lacks it);
        {branch: sha or None}. Two calls (ls-remote, then a fetch of those present): fetching a missing branch by
        name fails the whole fetch."""
        present = {branch: sha for branch, sha in self.remote_heads(*branches).items() if sha is not None}
        with self.locked():
            if present:
                specs = [f"+refs/heads/{b}:{REMOTE_PREFIX}{b}" for b in present]
                self._remote_git(*_FETCH_FLAGS, "{url}", *specs)
            for branch in branches:
                if branch not in present:
                    self.git("update-ref", "-d", f"{REMOTE_PREFIX}{branch}")
        return {branch: self.ref_commit(f"{REMOTE_PREFIX}{branch}") for branch in branches}

    def fetch_commit(self, commit: str) -> None:
        """Make sure `commit` is in the cache: fetched by its id (protocol v2 serves any reachable commit), else
        with the remote's branches and archive refs. GitFailed naming the commit when it cannot be found."""
        if self.has_commit(commit):
            return
        with self.locked():
            try:
                self._remote_git(*_FETCH_FLAGS, "{url}", commit)
            except GitFailed:
                self._remote_git(
                    *_FETCH_FLAGS,
                    "{url}",
                    f"+refs/heads/*:{REMOTE_PREFIX}*",
                    "+refs/orch/archive/*:refs/orch/archive/*",
                )
        if not self.has_commit(commit):
            raise GitFailed(f"commit {commit} is not in repository {display_url(self.url)}")

    # --- writing the remote -----------------------------------------------------------------------------------

    def push(self, commit: str, branch: str, expected: str | None) -> PushOutcome:
        """Compare-and-swap `branch` on the remote from `expected` (None: must not exist) to `commit`. When the
        remote already holds `commit` git checks no lease: pushed, so a push redone after a crash is no failure.
        Refused (lease, non-fast-forward, a checked-out branch of a non-bare remote...) → pushed=False with git's
        reason and what the remote branch holds now; unreachable → GitFailed."""
        ref = f"refs/heads/{branch}"
        lease = f"--force-with-lease={ref}:{expected or ''}"
        return self._push_cas(branch, "push", "--porcelain", "--no-verify", lease, "{url}", f"{commit}:{ref}")

    def delete_branch(self, branch: str, expected: str) -> bool:
        """Delete `branch` on the remote only if it still holds `expected`; whether it was deleted."""
        ref = f"refs/heads/{branch}"
        lease = f"--force-with-lease={ref}:{expected}"
        return self._push_cas(branch, "push", "--porcelain", "--no-verify", lease, "{url}", f":{ref}").pushed

    def _push_cas(self, branch: str, *args: str) -> PushOutcome:
        try:
            self._remote_git(*args, failure="cannot push to repository")
        except GitFailed as exc:
            reason = _refusal(exc.stdout)
            if exc.returncode != 1 or not reason:
                raise
            return PushOutcome(False, self.remote_heads(branch)[branch], reason)
        return PushOutcome(True, None, "")

    def push_kept(self, commit: str, branch: str, archive: str) -> PushOutcome:
        """An attempt's work in one push: its archive ref forced to `commit`, and `branch` made at `commit` (it must
        not exist yet, or hold `commit` already) — as `push_ref` then `push(commit, branch, None)`, one remote
        round trip fewer."""
        ref = f"refs/heads/{branch}"
        lease = f"--force-with-lease={ref}:"
        args = ("push", "--porcelain", "--no-verify", lease, "{url}", f"+{commit}:{archive}", f"{commit}:{ref}")
        return self._push_cas(branch, *args)

    def push_ref(self, commit: str, ref: str) -> None:
        """Create or move a ref that is no branch (archive refs) on the remote, forced."""
        self._remote_git("push", "--porcelain", "--no-verify", "{url}", f"+{commit}:{ref}", failure="cannot push to")

    # --- reading the cache ------------------------------------------------------------------------------------

    def is_ancestor(self, ancestor: str, descendant: str) -> bool:
        try:
            self.git("merge-base", "--is-ancestor", ancestor, descendant)
        except GitFailed as exc:
            if exc.returncode == 1:
                return False
            raise
        return True

    def has_commit(self, commit: str) -> bool:
        try:
            self.git("cat-file", "-e", f"{commit}^{{commit}}")
        except GitFailed:
            return False
        return True

    def changed_paths(self, old: str, new: str) -> list[str]:
        """The paths that differ between two commits (no rename detection: a rename is both its paths)."""
        return list(iter_nul(self.git("diff", "--name-only", "-z", "--no-renames", old, new)))

    def ref_commit(self, ref: str) -> str | None:
        """The commit `ref` names in the cache, or None."""
        try:
            return self.git("rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}").strip() or None
        except GitFailed:
            return None

    def commit_tree(
        self, tree: str, parents: Sequence[str], message: str, author: tuple[str, str], when: datetime | None = None
    ) -> str:
        """A commit of `tree` with `parents`, `message` as given (trailers included) and `author` as author and
        committer."""
        parent_args = [item for parent in parents for item in ("-p", parent)]
        return self.git("commit-tree", tree, *parent_args, stdin=message, env=identity_env(author, when)).strip()


_FETCH_FLAGS: Final = (
    "fetch",
    "--quiet",
    "--no-tags",
    "--no-write-fetch-head",
    "--no-auto-gc",
    "--no-recurse-submodules",
)


def _refusal(porcelain: str) -> str:
    """The reason of the first refused ref in `push --porcelain`'s output (`!\\t<from>:<to>\\t<why>`), or ""."""
    for line in porcelain.splitlines():
        flag, _, rest = line.partition("\t")
        if flag == "!":
            return rest.partition("\t")[2].strip()
    return ""


def _flock_within(fd: int, lock_path: Path, timeout: float) -> None:
    """flock `fd`, waiting at most `timeout` seconds (flock itself has no timeout: poll, backing off)."""
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise GitFailed(f"the cache lock {lock_path} is still held after {timeout:.0f} s") from None
            time.sleep(pause)
            pause = min(pause * 2, 0.2)


def _remove_any(path: Path) -> None:
    """Remove a file, symlink or folder at `path`, if any (an agent may have put any of them there)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
