"""Git's view of an agent-writable worktree through a private git dir: a temporary folder with a config of our
own, a copy of the index (git's refreshed copy kept between views), HEAD's commit, and the real object store as
data. Git reads none of the repository's config, hooks or attribute drivers."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final

from orch.services.git.command import GitFailed, iter_nul, run_git
from orch.services.git.repository import (
    HASH_HEX_LENGTH,
    MAX_PACKED_REFS,
    MAX_SMALL_FILE,
    Repository,
    RepositoryFormat,
    StateNotKnown,
    find_repository,
    open_regular,
    parse_config_list,
    read_format,
    read_regular,
    resolve_head,
)

_MAX_INDEX: Final = 1 << 30


def _copy_regular(source: Path, target: Path, limit: int) -> bool:
    """Copy `source` (checked as by `open_regular`) keeping its mtime, which git's racy-entry check compares
    index entries against. False when there is no source."""
    with open_regular(source, limit) as opened:
        if opened is None:
            return False
        file, info = opened
        with target.open("wb") as copy:
            shutil.copyfileobj(file, copy, 1 << 20)
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
    return True


@dataclass(frozen=True)
class _IndexCopy:
    source: Path  # the repository's index
    source_stat: tuple[int, ...]  # (device, inode, size, mtime, ctime) of the source when copied
    copy_inode: int  # git writes a refreshed index by renaming a new file over the copy: a new inode


@dataclass(frozen=True)
class _RefreshedIndex:
    source_stat: tuple[int, ...]
    data: bytes
    mtime_ns: int


# The refreshed copies git wrote, by source index: a freshly checked-out index marks its entries racy, and git
# re-reads every such file until someone writes the index back. Orch never writes the agent's repository, so it
# keeps git's refreshed copy and starts from it while the source index is unchanged.
_refreshed_indexes: dict[Path, _RefreshedIndex] = {}
_refreshed_lock = threading.Lock()
_REFRESHED_KEPT: Final = 8
_REFRESHED_MAX_BYTES: Final = 8 << 20  # an index of about 80,000 files


def _copy_index(source: Path, target: Path) -> _IndexCopy | None:
    """Copy the repository's index (or git's refreshed copy of this very index) into the private git dir."""
    with open_regular(source, _MAX_INDEX) as opened:
        if opened is None:
            return None
        file, info = opened
        source_stat = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        with _refreshed_lock:
            refreshed = _refreshed_indexes.get(source)
        if refreshed is not None and refreshed.source_stat == source_stat:
            target.write_bytes(refreshed.data)
            os.utime(target, ns=(refreshed.mtime_ns, refreshed.mtime_ns))
        else:
            with target.open("wb") as copy:
                shutil.copyfileobj(file, copy, 1 << 20)
            os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
    return _IndexCopy(source, source_stat, target.stat().st_ino)


def _keep_refreshed(index_copy: _IndexCopy, private_index: Path) -> None:
    try:
        info = private_index.stat()
        if info.st_ino == index_copy.copy_inode or info.st_size > _REFRESHED_MAX_BYTES:
            return
        data = private_index.read_bytes()
    except OSError:
        return
    with _refreshed_lock:
        _refreshed_indexes.pop(index_copy.source, None)
        _refreshed_indexes[index_copy.source] = _RefreshedIndex(index_copy.source_stat, data, info.st_mtime_ns)
        while len(_refreshed_indexes) > _REFRESHED_KEPT:
            del _refreshed_indexes[next(iter(_refreshed_indexes))]


class WorktreeView:
    """Git's view of an agent-writable worktree through a private git dir, to read its state.

    Git reads none of the repository's config, hooks or attribute drivers: only its objects (as data), copies of
    its index, info/exclude and shallow, HEAD's commit, and the worktree's files."""

    def __init__(
        self, workdir: Path, repository: Repository, head: str | None, private: Path, index: _IndexCopy | None
    ) -> None:
        self.workdir = workdir
        self.repository = repository
        self.head = head
        self._private = private
        self._index = index
        self.has_index = index is not None  # False: git sees every file as untracked, none as deleted
        relative = workdir.relative_to(repository.work_tree).as_posix()
        self.prefix = "" if relative == "." else relative + "/"  # the workdir, from the worktree's top

    def git(self, *args: str, stdin: str | None = None) -> str:
        """Run git in the workdir on the private git dir; GitFailed if it fails."""
        return _run_private(self._private, self.repository, args, cwd=self.workdir, stdin=stdin)

    def close(self) -> None:
        if self._index is not None:
            _keep_refreshed(self._index, self._private / "index")
        shutil.rmtree(self._private, ignore_errors=True)

    def __enter__(self) -> WorktreeView:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def _run_private(
    private: Path, repository: Repository, args: Sequence[str], *, cwd: Path, stdin: str | None = None
) -> str:
    return run_git(
        args,
        git_dir=private,
        work_tree=repository.work_tree,
        cwd=cwd,
        env={
            "GIT_INDEX_FILE": str(private / "index"),
            "GIT_OBJECT_DIRECTORY": str(repository.common_dir / "objects"),
            "GIT_OPTIONAL_LOCKS": "1",  # the index is our copy: git may write its refresh there (see _keep_refreshed)
        },
        stdin=stdin,
        home=private / "home",  # never created; nobody else can create it in a 0700 folder
    )


def open_worktree_view(workdir: Path) -> WorktreeView | None:
    """A private view of the worktree `workdir` is in; None when it is in none or its state cannot be known
    safely (odd files, a format git would refuse, a failing git). Close it (a `with` block) when done."""
    repository = find_repository(workdir)
    if repository is None:
        return None
    private = Path(tempfile.mkdtemp(prefix="orch-git-"))  # 0700
    try:
        return _build_view(workdir.resolve(), repository, private)
    except (StateNotKnown, GitFailed, OSError):
        shutil.rmtree(private, ignore_errors=True)
        return None
    except BaseException:
        shutil.rmtree(private, ignore_errors=True)
        raise


def open_known_worktree_view(repository: Repository) -> WorktreeView:
    """A private view of a worktree whose git dirs orch knows because it made them (a linked worktree of orch's
    cache: `git_dir` its admin dir, `common_dir` the cache): no discovery and no owner check, as its files may be
    the agent's user's. Git's refreshed index is not kept for later views: the caller stages into the copy.
    GitFailed when its state cannot be read. Close it (a `with` block) when done."""
    private = Path(tempfile.mkdtemp(prefix="orch-git-"))  # 0700
    try:
        return _build_view(repository.work_tree, repository, private, keep_refreshed=False)
    except (StateNotKnown, OSError) as exc:
        shutil.rmtree(private, ignore_errors=True)
        raise GitFailed(f"cannot read the worktree {repository.work_tree}: {exc}") from exc
    except BaseException:
        shutil.rmtree(private, ignore_errors=True)
        raise


def _build_view(workdir: Path, repository: Repository, private: Path, *, keep_refreshed: bool = True) -> WorktreeView:
    """The private git dir: few folders and files, as creating and removing them is most of a snapshot's cost
    on some file systems."""
    (private / "refs").mkdir()
    (private / "HEAD").write_text("ref: refs/heads/unborn\n")
    _write_config(private, RepositoryFormat("sha1", ()))
    repo_format = _read_repository_format(repository, private)
    head = resolve_head(repository.git_dir, repository.common_dir, HASH_HEX_LENGTH[repo_format.object_format])
    _write_config(private, repo_format)
    if head:
        (private / "HEAD").write_text(f"{head}\n")
    index = _copy_index(repository.git_dir / "index", private / "index")
    # Not the repository's info/exclude: the agent can write it, and would hide new files with it.
    _copy_regular(repository.common_dir / "shallow", private / "shallow", MAX_PACKED_REFS)
    view = WorktreeView(workdir, repository, head, private, index if keep_refreshed else None)
    view.has_index = index is not None
    if index is not None:
        _clear_hiding_bits(view)
    return view


def _clear_hiding_bits(view: WorktreeView) -> None:
    """An agent can mark tracked files skip-worktree or assume-unchanged in the index, and git would then not look
    at what it did to them: in the private copy, no entry carries either bit."""
    entries = [entry for entry in iter_nul(view.git("ls-files", "-v", "-z")) if len(entry) > 2]
    skipped = [entry[2:] for entry in entries if entry[0] == "S"]
    assumed = [entry[2:] for entry in entries if entry[0].islower()]
    # One flag a call: given both, update-index applies only one of them to the paths it reads.
    for flag, paths in (("--no-skip-worktree", skipped), ("--no-assume-unchanged", assumed)):
        if paths:
            view.git("update-index", flag, "-z", "--stdin", stdin="".join(f"{path}\0" for path in paths))


def _read_repository_format(repository: Repository, private: Path) -> RepositoryFormat:
    """The repository's config, parsed by git as data from stdin (so no include is followed, no file reopened)."""
    config = read_regular(repository.common_dir / "config", MAX_SMALL_FILE)
    if not config:
        return read_format([])
    listing = _run_private(
        private,
        repository,
        ["config", "--file", "-", "--no-includes", "--null", "--list"],
        cwd=private,
        stdin=config.decode(errors="surrogateescape"),
    )
    return read_format(parse_config_list(listing))


def _write_config(private: Path, repo_format: RepositoryFormat) -> None:
    lines = ["[core]", "\trepositoryformatversion = 1", "\tbare = false"]
    lines += [f"\t{key.removeprefix('core.')} = {value}" for key, value in repo_format.mirrored]
    lines += ["[extensions]", f"\tobjectFormat = {repo_format.object_format}"]
    (private / "config").write_text("\n".join(lines) + "\n")
