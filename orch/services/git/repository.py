"""Every git command orch itself runs goes through here: never a shell, a minimal environment without orch's
secrets, a timeout, and config overrides for every program-naming key that can be named.

A repository an agent can write is untrusted: its `.git/config` may name programs git would run (`core.fsmonitor`,
`filter.<driver>.clean`, `diff.<driver>.textconv`, hooks, `include.path` to any file...). Keys with a driver name
in them cannot all be overridden by name, so git reads such a worktree only through `open_worktree_view`: a
private git dir in a temporary folder with a config of our own, a copy of the index, HEAD resolved by reading
files, and the real object store as data. No git command ever runs in discovery mode on an untrusted repository.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final

from orch.errors import OrchError

GIT_TIMEOUT_S: Final = 60.0

# Keys naming a program (or enabling one) git might run, with values that run nothing. The command line is read
# after every config file, so these win over single-valued keys; multi-valued and per-driver keys are why an
# untrusted worktree is read through a private git dir instead.
SAFE_CONFIG: Final[tuple[tuple[str, str], ...]] = (
    ("core.fsmonitor", "false"),
    ("core.hooksPath", "/dev/null"),
    ("core.untrackedCache", "false"),
    ("core.pager", "cat"),
    ("pager.status", "false"),
    ("pager.diff", "false"),
    ("pager.log", "false"),
    ("pager.show", "false"),
    ("core.sshCommand", "false"),
    ("core.askPass", ""),
    ("credential.helper", ""),  # the empty value resets the list of helpers
    ("diff.external", ""),
    ("core.editor", ":"),
    ("sequence.editor", ":"),
    ("gpg.program", "false"),
    ("gpg.ssh.program", "false"),
    ("gpg.x509.program", "false"),
    ("commit.gpgSign", "false"),
    ("tag.gpgSign", "false"),
    ("log.showSignature", "false"),
    ("merge.verifySignatures", "false"),
    ("protocol.allow", "never"),
    *((f"protocol.{name}.allow", "never") for name in ("ext", "file", "git", "ssh", "http", "https")),
    ("submodule.recurse", "false"),
    ("fetch.recurseSubmodules", "false"),
    ("status.submoduleSummary", "false"),
    ("core.attributesFile", "/dev/null"),
    ("core.excludesFile", "/dev/null"),
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
)

# Environment variables git prefers over its config: set, they make the repository's own value moot.
_SAFE_ENV: Final[Mapping[str, str]] = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_ATTR_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_OPTIONAL_LOCKS": "0",
    "GIT_NO_REPLACE_OBJECTS": "1",
    "GIT_PROTOCOL_FROM_USER": "0",
    "GIT_PAGER": "cat",
    "GIT_EDITOR": ":",
    "GIT_SEQUENCE_EDITOR": ":",
    "GIT_ASKPASS": "",
    "GIT_SSH_COMMAND": "false",
    "GIT_PROXY_COMMAND": "",
    "LANG": "C",
    "LC_ALL": "C",
}

# Flags added right after these subcommands, so no caller can forget them.
_SUBCOMMAND_FLAGS: Final[Mapping[str, tuple[str, ...]]] = {
    "diff": ("--no-ext-diff", "--no-textconv"),
    "log": ("--no-ext-diff", "--no-textconv"),
    "show": ("--no-ext-diff", "--no-textconv"),
    "status": ("--ignore-submodules=all",),
    "hash-object": ("--no-filters",),
}

_MAX_SMALL_FILE: Final = 1 << 20  # HEAD, config, a `.git` file, commondir, a loose ref, info/exclude, shallow
_MAX_PACKED_REFS: Final = 1 << 28
_MAX_INDEX: Final = 1 << 30
_MAX_PACKED_LINE: Final = 1 << 16
_MAX_SYMREF_DEPTH: Final = 5
_MAX_STDERR_SHOWN: Final = 200
_KNOWN_EXTENSIONS: Final = frozenset({"noop", "objectformat", "partialclone", "preciousobjects", "worktreeconfig"})
_HASH_HEX_LENGTH: Final[Mapping[str, int]] = {"sha1": 40, "sha256": 64}
_PER_WORKTREE_REFS: Final = ("refs/bisect/", "refs/worktree/", "refs/rewritten/")
_BAD_REF_CHARS: Final = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|@\{")
# Data-only keys (no program) that change what counts as modified: mirrored into the private config, values
# checked against these words so nothing else can be written there.
_MIRRORED_KEYS: Final[Mapping[str, frozenset[str]]] = {
    **dict.fromkeys(
        ("core.filemode", "core.symlinks", "core.ignorecase", "core.trustctime", "core.precomposeunicode"),
        frozenset({"true", "false", "yes", "no", "on", "off", "1", "0"}),
    ),
    "core.checkstat": frozenset({"default", "minimal"}),
    "core.autocrlf": frozenset({"true", "false", "input", "yes", "no", "on", "off", "1", "0"}),
    "core.eol": frozenset({"lf", "crlf", "native"}),
}


class GitFailed(OrchError):
    """A git command orch ran failed, timed out or could not start; the message names the command and folder."""


class StateNotKnown(OrchError):
    """A repository looks odd (a FIFO for a HEAD, a huge config, an unknown format...): its state is not known.
    Raised by the readers below; `find_repository` and `open_worktree_view` turn it into None."""


def _absolute_path_entries() -> list[str]:
    """This process' PATH without relative entries: git runs in the agent's workdir, where `.` is the agent's."""
    return [entry for entry in os.get_exec_path() if os.path.isabs(entry)]


def git_environment(home: Path) -> dict[str, str]:
    """The whole environment of a git process: PATH, the safe overrides above, HOME at a folder holding nothing.
    Nothing else of this process' environment (orch's secrets, GIT_*) is passed on."""
    return {"PATH": os.pathsep.join(_absolute_path_entries()), "HOME": str(home), **_SAFE_ENV}


def git_executable() -> str:
    """git's absolute path, from the absolute entries of PATH; GitFailed when there is none."""
    found = shutil.which("git", path=os.pathsep.join(_absolute_path_entries()))
    if found is None:
        raise GitFailed("git is not installed (no `git` on PATH)")
    return found


def git_argv(args: Sequence[str]) -> list[str]:
    """git, the config overrides, then `args` with the flags its subcommand must always have."""
    overrides = [item for key, value in SAFE_CONFIG for item in ("-c", f"{key}={value}")]
    if not args:
        raise ValueError("a git command needs a subcommand")
    subcommand, *rest = args
    return [git_executable(), "--no-pager", *overrides, subcommand, *_SUBCOMMAND_FLAGS.get(subcommand, ()), *rest]


def run_git(
    args: Sequence[str],
    *,
    git_dir: Path,
    cwd: Path,
    work_tree: Path | None = None,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    home: Path | None = None,
    timeout: float = GIT_TIMEOUT_S,
) -> str:
    """Run git on an explicit git dir (never discovery) and return its stdout; GitFailed if it fails.

    The repository's own config is read: for a repository an agent can write, use `open_worktree_view`."""
    if home is None:
        with tempfile.TemporaryDirectory(prefix="orch-git-home-") as empty_home:
            return run_git(
                args, git_dir=git_dir, cwd=cwd, work_tree=work_tree, env=env, stdin=stdin, home=Path(empty_home)
            )
    full_env = {**git_environment(home), **(env or {}), "GIT_DIR": str(git_dir)}
    if work_tree is not None:
        full_env["GIT_WORK_TREE"] = str(work_tree)
    where = f"git {args[0] if args else ''} in {cwd}"
    try:
        done = subprocess.run(
            git_argv(args),
            cwd=cwd,
            env=full_env,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            encoding="utf-8",
            errors="surrogateescape",  # paths are bytes to git: any name an agent makes must survive a round trip
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise GitFailed(f"{where}: no answer within {timeout:.0f} s") from exc
    except OSError as exc:
        raise GitFailed(f"{where}: could not start git ({exc.strerror})") from exc
    if done.returncode != 0:
        first_line = next(iter(done.stderr.strip().splitlines()), "")[:_MAX_STDERR_SHOWN]
        raise GitFailed(f"{where}: exit status {done.returncode}: {first_line}")
    return done.stdout


@dataclass(frozen=True)
class Repository:
    """Where a worktree's git data lives, found by reading files."""

    work_tree: Path  # the top folder, the one holding `.git`
    git_dir: Path  # HEAD and index (a linked worktree has its own)
    common_dir: Path  # objects, refs, packed-refs, config, info/exclude, shallow


def find_repository(start: Path) -> Repository | None:
    """The repository `start` is in, found as git would (nearest `.git` folder or `gitdir:` file upwards, not
    across file systems); None when there is none, or when what is there looks odd."""
    try:
        return _find_repository(start)
    except StateNotKnown:
        return None


def holds_repository(start: Path) -> bool:
    """Whether `start` is in something that looks like a git worktree (a `.git` above it), readable or not: where it
    is and cannot be read, what an attempt changed is unknown for want of a repository's state, not for want of
    one."""
    try:
        here = start.resolve(strict=True)
    except (OSError, RuntimeError):
        return False
    return any(os.path.lexists(folder / ".git") for folder in (here, *here.parents))


def _find_repository(start: Path) -> Repository | None:
    try:
        here = start.resolve(strict=True)
        device = here.stat().st_dev
    except (OSError, RuntimeError):
        return None
    if not here.is_dir() or ".git" in here.parts:
        return None
    for folder in (here, *here.parents):
        try:
            if folder.stat().st_dev != device:
                return None
        except OSError:
            return None
        dot_git = folder / ".git"
        if dot_git.is_dir():
            common = _common_dir(dot_git)
            if _is_git_dir(dot_git, common):
                return _one_owner(Repository(folder, dot_git, common))
            continue  # git too walks on past a `.git` folder that is no repository
        pointer = _read_regular(dot_git, _MAX_SMALL_FILE)
        if pointer is not None:
            git_dir = _gitdir_of(pointer, folder)
            common = _common_dir(git_dir)
            if not _is_git_dir(git_dir, common):
                raise StateNotKnown(f"{dot_git} names no git dir")
            return _one_owner(Repository(folder, git_dir, common))
    return None


def _one_owner(repository: Repository) -> Repository:
    """The worktree's top, its git dir and common dir must have one owner (git itself wants them to be the
    user's own): a `.git` file or `commondir` written by the agent must not make a root worker read the index
    and refs of a repository the agent could not read itself."""
    owners = {path.stat().st_uid for path in (repository.work_tree, repository.git_dir, repository.common_dir)}
    if len(owners) != 1:
        raise StateNotKnown(f"{repository.work_tree} and its git dirs have different owners")
    return repository


def _gitdir_of(pointer: bytes, folder: Path) -> Path:
    """The git dir a `.git` file names (`gitdir: <path>`, relative to the file's folder)."""
    text = _text(pointer).strip()
    if not text.startswith("gitdir: ") or "\n" in text:
        raise StateNotKnown("a .git file without one `gitdir:` line")
    return (folder / text.removeprefix("gitdir: ")).resolve()


def _common_dir(git_dir: Path) -> Path:
    """A linked worktree's `commondir` names the main git dir (relative to its own); otherwise git_dir itself."""
    named = _read_regular(git_dir / "commondir", _MAX_SMALL_FILE)
    if named is None:
        return git_dir
    text = _text(named).strip()
    if not text or "\n" in text:
        raise StateNotKnown(f"{git_dir / 'commondir'} is not one path")
    return (git_dir / text).resolve()


def _is_git_dir(git_dir: Path, common_dir: Path) -> bool:
    return (git_dir / "HEAD").is_file() and (common_dir / "objects").is_dir() and (common_dir / "refs").is_dir()


@contextmanager
def _open_regular(path: Path, limit: int) -> Iterator[tuple[BinaryIO, os.stat_result] | None]:
    """`path` opened for reading, with its stat; None if it does not exist. StateNotKnown for anything else than a
    regular file of at most `limit` bytes: a symlink, a FIFO (O_NONBLOCK: opening one must not hang), a folder,
    a device, a huge file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        yield None
        return
    except OSError as exc:
        raise StateNotKnown(f"{path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:
            raise StateNotKnown(f"{path} is not a regular file of at most {limit} bytes")
        yield file, info


def _read_regular(path: Path, limit: int) -> bytes | None:
    """The bytes of `path` (checked as by `_open_regular`); None if it does not exist."""
    with _open_regular(path, limit) as opened:
        if opened is None:
            return None
        data = opened[0].read(limit + 1)
    if len(data) > limit:
        raise StateNotKnown(f"{path} grew past {limit} bytes")
    return data


def _copy_regular(source: Path, target: Path, limit: int) -> bool:
    """Copy `source` (checked as by `_open_regular`) keeping its mtime, which git's racy-entry check compares
    index entries against. False when there is no source."""
    with _open_regular(source, limit) as opened:
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
    with _open_regular(source, _MAX_INDEX) as opened:
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


def _text(data: bytes) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise StateNotKnown("not UTF-8") from exc


@dataclass(frozen=True)
class RepositoryFormat:
    object_format: str  # "sha1" or "sha256"
    mirrored: tuple[tuple[str, str], ...]  # data-only keys copied into the private config


def read_format(config_entries: Sequence[tuple[str, str | None]]) -> RepositoryFormat:
    """What of a repository's config the private git dir keeps: its object format and a few data-only keys.
    StateNotKnown for a format git 2.39 would refuse or that might change how its files are read."""
    values: dict[str, str | None] = {}
    for key, value in config_entries:
        values[key.lower()] = value  # the last value wins, as in git
    version_text = values.get("core.repositoryformatversion") or "0"
    if version_text not in ("0", "1"):
        raise StateNotKnown(f"core.repositoryformatversion = {version_text}")
    extensions = {
        key.removeprefix("extensions."): value for key, value in values.items() if key.startswith("extensions.")
    }
    if version_text == "1" and not set(extensions) <= _KNOWN_EXTENSIONS:
        raise StateNotKnown(f"unknown extensions {sorted(set(extensions) - _KNOWN_EXTENSIONS)}")
    object_format = (extensions.get("objectformat") or "sha1").lower() if version_text == "1" else "sha1"
    if object_format not in _HASH_HEX_LENGTH:
        raise StateNotKnown(f"extensions.objectFormat = {object_format}")
    if version_text == "0" and "objectformat" in extensions:
        raise StateNotKnown("extensions.objectFormat needs core.repositoryformatversion = 1")
    mirrored = tuple(
        (key, value.lower())
        for key, allowed in _MIRRORED_KEYS.items()
        if (value := values.get(key)) is not None and value.lower() in allowed
    )
    return RepositoryFormat(object_format, mirrored)


def parse_config_list(listing: str) -> list[tuple[str, str | None]]:
    """`git config --list --null`: `key\\nvalue\\0`, or `key\\0` for a key without `=`."""
    entries: list[tuple[str, str | None]] = []
    for item in listing.split("\0"):
        if item:
            key, has_value, value = item.partition("\n")
            entries.append((key, value if has_value else None))
    return entries


def resolve_head(git_dir: Path, common_dir: Path, hex_length: int = 40) -> str | None:
    """The commit HEAD names, read from files (HEAD → `ref:` → loose ref or packed-refs); None for an unborn
    branch. StateNotKnown when a file is odd or names something that is not a ref."""
    content = _read_regular(git_dir / "HEAD", _MAX_SMALL_FILE)
    if content is None:
        raise StateNotKnown(f"{git_dir} has no HEAD")
    text = _text(content).strip()
    for _ in range(_MAX_SYMREF_DEPTH):
        if _is_object_id(text, hex_length):
            return text
        if not text.startswith("ref:"):
            raise StateNotKnown(f"HEAD holds neither a commit nor a ref: {text[:80]!r}")
        ref = text.removeprefix("ref:").strip()
        _check_ref_name(ref)
        base = git_dir if ref.startswith(_PER_WORKTREE_REFS) else common_dir
        loose = _read_regular(base / ref, _MAX_SMALL_FILE)
        if loose is None:
            return _packed_ref(common_dir, ref, hex_length)
        text = _text(loose).strip()
    raise StateNotKnown(f"more than {_MAX_SYMREF_DEPTH} symbolic refs in a row from HEAD")


def _packed_ref(common_dir: Path, ref: str, hex_length: int) -> str | None:
    wanted = f" {ref}".encode()
    with _open_regular(common_dir / "packed-refs", _MAX_PACKED_REFS) as opened:
        if opened is None:
            return None
        while chunk := opened[0].readline(_MAX_PACKED_LINE):
            line = chunk.rstrip(b"\n")
            if line.endswith(wanted):
                object_id = _text(line[: -len(wanted)])
                if not _is_object_id(object_id, hex_length):
                    raise StateNotKnown(f"packed-refs holds {object_id[:80]!r} for {ref}")
                return object_id
    return None


def _is_object_id(text: str, hex_length: int) -> bool:
    return len(text) == hex_length and all(char in "0123456789abcdef" for char in text)


def _check_ref_name(ref: str) -> None:
    """A ref name that stays a path under refs/ (git's own rules, the parts of them that matter here)."""
    parts = ref.split("/")
    if (
        len(parts) < 2
        or parts[0] != "refs"
        or any(not part or part.startswith(".") or part.endswith(".lock") for part in parts)
        or ".." in ref
        or _BAD_REF_CHARS.search(ref)
    ):
        raise StateNotKnown(f"HEAD names {ref[:80]!r}, which is no ref")


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


def _build_view(workdir: Path, repository: Repository, private: Path) -> WorktreeView:
    """The private git dir: few folders and files, as creating and removing them is most of a snapshot's cost
    on some file systems."""
    (private / "refs").mkdir()
    (private / "HEAD").write_text("ref: refs/heads/unborn\n")
    _write_config(private, RepositoryFormat("sha1", ()))
    repo_format = _read_repository_format(repository, private)
    head = resolve_head(repository.git_dir, repository.common_dir, _HASH_HEX_LENGTH[repo_format.object_format])
    _write_config(private, repo_format)
    if head:
        (private / "HEAD").write_text(f"{head}\n")
    index = _copy_index(repository.git_dir / "index", private / "index")
    # Not the repository's info/exclude: the agent can write it, and would hide new files with it.
    _copy_regular(repository.common_dir / "shallow", private / "shallow", _MAX_PACKED_REFS)
    view = WorktreeView(workdir, repository, head, private, index)
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
    config = _read_regular(repository.common_dir / "config", _MAX_SMALL_FILE)
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


def iter_nul(text: str) -> Iterator[str]:
    """The non-empty items of a NUL-separated listing (`-z`)."""
    return (item for item in text.split("\0") if item)
