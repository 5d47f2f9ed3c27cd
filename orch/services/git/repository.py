"""A repository's state read from its files, not by git: where its git dirs are (discovery as git does it, owners
checked), the commit HEAD names, its config's format. A file that looks odd means the state is not known."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Final

from orch.errors import OrchError

MAX_SMALL_FILE: Final = 1 << 20  # HEAD, config, a `.git` file, commondir, a loose ref, info/exclude, shallow
MAX_PACKED_REFS: Final = 1 << 28
_MAX_PACKED_LINE: Final = 1 << 16
_MAX_SYMREF_DEPTH: Final = 5
_KNOWN_EXTENSIONS: Final = frozenset({"noop", "objectformat", "partialclone", "preciousobjects", "worktreeconfig"})
HASH_HEX_LENGTH: Final[Mapping[str, int]] = {"sha1": 40, "sha256": 64}
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


class StateNotKnown(OrchError):
    """A repository looks odd (a FIFO for a HEAD, a huge config, an unknown format...): its state is not known.
    Raised by the readers below; `find_repository` and `worktree_view.open_worktree_view` turn it into None."""


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
        pointer = read_regular(dot_git, MAX_SMALL_FILE)
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
    named = read_regular(git_dir / "commondir", MAX_SMALL_FILE)
    if named is None:
        return git_dir
    text = _text(named).strip()
    if not text or "\n" in text:
        raise StateNotKnown(f"{git_dir / 'commondir'} is not one path")
    return (git_dir / text).resolve()


def _is_git_dir(git_dir: Path, common_dir: Path) -> bool:
    return (git_dir / "HEAD").is_file() and (common_dir / "objects").is_dir() and (common_dir / "refs").is_dir()


@contextmanager
def open_regular(path: Path, limit: int) -> Iterator[tuple[BinaryIO, os.stat_result] | None]:
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


def read_regular(path: Path, limit: int) -> bytes | None:
    """The bytes of `path` (checked as by `open_regular`); None if it does not exist."""
    with open_regular(path, limit) as opened:
        if opened is None:
            return None
        data = opened[0].read(limit + 1)
    if len(data) > limit:
        raise StateNotKnown(f"{path} grew past {limit} bytes")
    return data


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
    if object_format not in HASH_HEX_LENGTH:
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
    content = read_regular(git_dir / "HEAD", MAX_SMALL_FILE)
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
        loose = read_regular(base / ref, MAX_SMALL_FILE)
        if loose is None:
            return _packed_ref(common_dir, ref, hex_length)
        text = _text(loose).strip()
    raise StateNotKnown(f"more than {_MAX_SYMREF_DEPTH} symbolic refs in a row from HEAD")


def _packed_ref(common_dir: Path, ref: str, hex_length: int) -> str | None:
    wanted = f" {ref}".encode()
    with open_regular(common_dir / "packed-refs", MAX_PACKED_REFS) as opened:
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
