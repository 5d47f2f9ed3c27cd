"""Targets, loaded from config/targets.yaml: the repositories a plan or a task names with `target: NAME` (url,
base branch, an optional context file added to prompts, and how results land), so that one plan can span several
repositories. Loaded like config/agents.yaml, but every problem is reported, one line each, naming the file, the
line and the target. A missing file declares no target.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NoReturn

import yaml
from pydantic import AfterValidator, Field

from orch.errors import ConfigInvalid
from orch.intake.agents import NAME_PATTERN
from orch.intake.plan import PLANS_OWN_REPOSITORY, Repository, RepoSpec, clipped, did_you_mean, quoted, repository
from orch.intake.plan_document import _document_size_problem, _not_a_regular_file, _PlanLoader, line_of
from orch.intake.plan_validation import Problems, read_repo_spec, written_url

TARGETS_FILE = "targets.yaml"
MAX_TARGETS_BYTES = 1024 * 1024
MAX_CONTEXT_BYTES = 100_000
_NAME = re.compile(NAME_PATTERN)


def _no_nul(text: str) -> str:
    if "\x00" in text:
        raise ValueError("contains a NUL character (\\x00)")
    return text


class TargetSpec(RepoSpec):
    """A target as config/targets.yaml declares it: a repository, and a context file for its tasks' prompts."""

    context: Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_no_nul)] | None = None


@dataclass(frozen=True)
class Targets:
    """The targets config/targets.yaml declares, in file order; `source`: the file, as messages name it."""

    source: str
    repositories: tuple[Repository, ...] = ()
    _by_name: Mapping[str, Repository] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {each.name: each for each in self.repositories})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(each.name for each in self.repositories)

    def get(self, name: str) -> Repository | None:
        return self._by_name.get(name)


def load_targets(config_dir: Path) -> Targets:
    """config_dir/targets.yaml's targets (none when there is no such file); ConfigInvalid lists every problem."""
    path = config_dir / TARGETS_FILE
    if not path.exists() and not path.is_symlink():
        return Targets(str(path))
    return load_targets_file(path)


def load_targets_file(path: Path) -> Targets:
    """The targets a targets file declares; ConfigInvalid lists every problem, one line each."""
    return parse_targets(_read_document(path), str(path), path.resolve().parent)


def parse_targets(document: Any, source: str, base_dir: Path) -> Targets:
    """The targets `document` declares; local paths (url, context) are relative to `base_dir`."""
    problems = Problems(f"{source}: ")
    declared = _declared(document, problems)
    found = [_target(name, written, line_of(declared, name), base_dir, problems) for name, written in declared.items()]
    if problems.lines:
        raise ConfigInvalid("\n".join(problems.report()))
    return Targets(source, tuple(each for each in found if each is not None))


def _declared(document: Any, problems: Problems) -> Mapping[Any, Any]:
    """The file's `targets:` mapping (empty for an empty file), its shape's problems reported."""
    if document is None:
        return {}
    if not isinstance(document, dict):
        problems.add("a targets file is a mapping with 'targets'")
        return {}
    for name in document:
        if name != "targets":
            problems.add(
                f"unknown field {quoted(name)}{did_you_mean(str(name), ('targets',))}", line_of(document, name)
            )
    declared = document.get("targets")
    if declared is None:
        return {}
    if not isinstance(declared, dict):
        problem = f"field 'targets': must be a mapping of targets by name, not {quoted(declared)}"
        problems.add(problem, line_of(document, "targets"))
        return {}
    return declared


def _target(name: Any, written: Any, line: int | None, base_dir: Path, problems: Problems) -> Repository | None:
    """The target `name` declares, or None, each problem of it reported."""
    label = f"target {quoted(name)}: "
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        problems.add(f"{label}the name is not allowed: use letters, digits, '.', '_' or '-' (at most 64)", line)
        return None
    if name == PLANS_OWN_REPOSITORY:
        problems.add(
            f"{label}the name {PLANS_OWN_REPOSITORY!r} stands for a plan's own repo:; give the target another name",
            line,
        )
        return None
    if not isinstance(written, dict):
        problems.add(f"{label}must be a mapping with 'url', not {quoted(written)}", line)
        return None
    spec = read_repo_spec(written, problems, label, "", TargetSpec)
    url, problem = written_url(written, base_dir)
    if problem:
        problems.add(f"{label}field 'url': {problem}", line_of(written, "url"))
    if spec is None:
        return None
    context = ""
    if spec.context is not None:
        context, problem = _read_context(base_dir / spec.context)
        if problem:
            problems.add(f"{label}{problem}", line_of(written, "context"))
    return repository(name, spec, url, context)


def _read_context(path: Path) -> tuple[str, str | None]:
    """A context file's text, or why it cannot be had: at most MAX_CONTEXT_BYTES of a regular file, UTF-8."""
    try:
        path = path.resolve()
        data = _read_bytes(path, MAX_CONTEXT_BYTES)
    except _Unreadable as exc:
        return "", f"context file {path}: {exc}"
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic link loop, on older Pythons
        return "", f"context file {path}: cannot be read: {getattr(exc, 'strerror', None) or exc}"
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return "", f"context file {path}: is not UTF-8 text (byte 0x{data[exc.start]:02x} at {exc.start})"
    if "\x00" in text:
        return "", f"context file {path}: contains a NUL character"
    return text, None


class _Unreadable(Exception):
    """A file refused before it is read: missing, not a regular file, too large."""


def _read_bytes(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of a regular file (a FIFO or device is refused unread); _Unreadable says why not."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise _Unreadable("does not exist") from None
    try:  # checked on what was opened: the path may have changed since any earlier look
        info = os.fstat(fd)
        kind = _not_a_regular_file(info.st_mode)
        if kind is not None:
            raise _Unreadable(f"is {kind}, not a regular file")
        if info.st_size > limit:
            raise _Unreadable(f"{info.st_size} bytes, over the {limit} byte limit")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as file:
        data = file.read(limit + 1)
    if len(data) > limit:  # it grew since the fstat
        raise _Unreadable(f"more than {limit} bytes, over the limit")
    return data


def _read_document(path: Path) -> Any:
    """A targets file's YAML, read as strictly as a plan's (orch.intake.plan_document): lines kept, duplicate keys,
    tags and merge keys refused, aliases bounded."""

    def refuse(problem: str) -> NoReturn:
        raise ConfigInvalid(f"{path}: {problem}")

    try:
        kind = _not_a_regular_file(os.stat(path).st_mode)
        if kind is not None:
            refuse(f"is {kind}, not a targets file")
        data = _read_bytes(path, MAX_TARGETS_BYTES)
        text = data.decode("utf-8")
    except _Unreadable as exc:
        refuse(str(exc).replace(", over the", " is over the"))
    except (OSError, UnicodeDecodeError) as exc:
        refuse(f"cannot read targets: {getattr(exc, 'strerror', None) or exc}")
    try:
        document = yaml.load(text, Loader=_PlanLoader)  # the plan loader: safe, and stricter
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        refused = type(exc).__name__ == "_Refused"  # the plan loader's own refusal: its problem says it all
        problem = " ".join(str(exc.problem).split())
        refuse(f"{where}{'' if refused else 'invalid YAML: '}{clipped(problem)}")
    except yaml.YAMLError as exc:
        refuse(f"invalid YAML: {clipped(' '.join(str(exc).split()))}")
    too_big = _document_size_problem(document)
    if too_big:
        refuse(too_big)
    return document
