"""orch's layers, checked: an AST walk over every import in orch/, workers/ and beat/ (top-level, function-local and
`if TYPE_CHECKING:` ones alike) against the table below. A failure names the file:line and the import.

The layers: the top-level vocabulary modules (orch/states.py, failures.py, settings.py…); `intake` (the plan and the
configuration, as given); `decisions` (pure: values and `now` in, a decision out); `store` (the only SQL writer);
`dispatch` (applies decisions); `views` (read-only output); `services` (side services and probes); `cli` (entry
points). `workers/` and `beat/` sit on top of orch and import it, never the other way round."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCANNED = ("orch", "workers", "beat")

# orch's subpackages. A new one must be added here (and to RULES, where it matters): test_every_layer_is_known.
LAYERS = {"intake", "decisions", "store", "dispatch", "views", "services", "cli"}

CELERY = ("celery", "kombu", "orch.celery")  # orch.celery is the Celery app: celery by another name
ABOVE_STORE = ("orch.dispatch", "orch.views", "orch.services", "orch.cli")
INTAKE = ("orch.intake",)
STORE = ("orch.store", "sqlalchemy")


@dataclass(frozen=True)
class Rule:
    importer: str  # a module prefix: the rule applies to modules equal to it or below it ("": every module)
    forbidden: tuple[str, ...]  # module prefixes the importer may not import
    why: str
    unless: tuple[str, ...] = ()  # importers the rule leaves out: module prefixes, or a last part (`__main__`)


RULES = (
    Rule("orch.decisions", (*STORE, *CELERY, *INTAKE, *ABOVE_STORE), "decisions are pure: vocabulary and decisions"),
    Rule("orch.store", (*ABOVE_STORE, *CELERY), "the store is below what applies, shows or serves what it holds"),
    Rule("orch.intake", ("orch.store", *ABOVE_STORE), "intake is input: the layers above read it, it reads none"),
    Rule("orch", ("workers", "beat"), "workers/ and beat/ import orch, never the other way round"),
    Rule("", ("orch.cli",), "the CLI is an entry point: nothing imports it", unless=("orch.cli", "__main__")),
)

# Known exceptions, (importer, imported), each with why it is tolerated for now. Keep this short.
ALLOWED: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name
    imported: str  # dotted module name, resolved (relative imports made absolute; `from pkg import mod` -> pkg.mod)
    where: str  # file:line

    def __str__(self) -> str:
        return f"{self.where}: {self.importer} imports {self.imported}"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _within(name: str, prefix: str) -> bool:
    return prefix == "" or name == prefix or name.startswith(prefix + ".")


def imports_of(source: str, module: str, is_package: bool, where: str, modules: frozenset[str]) -> Iterator[Import]:
    """Every import in `source` (the module `module`), wherever it sits in the tree. `modules`: the known module
    names, to tell `from orch.store import repo` (the module orch.store.repo) from `from orch.store import x`."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source, filename=where)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, alias.name, f"{where}:{node.lineno}")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                yield Import(module, candidate if candidate in modules else base, f"{where}:{node.lineno}")


def violations(found: Iterator[Import]) -> list[str]:
    problems = []
    for imp in found:
        if (imp.importer, imp.imported) in ALLOWED:
            continue
        for rule in RULES:
            if not _within(imp.importer, rule.importer):
                continue
            if any(_within(imp.importer, u) or imp.importer.rpartition(".")[2] == u for u in rule.unless):
                continue
            if any(_within(imp.imported, f) for f in rule.forbidden):
                problems.append(f"{imp}  ({rule.why})")
    return problems


def _sources() -> Iterator[tuple[Path, str]]:
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            yield path, module_name(path, REPO)


def scan() -> Iterator[Import]:
    sources = list(_sources())
    modules = frozenset(name for _, name in sources)
    for path, name in sources:
        where = str(path.relative_to(REPO))
        yield from imports_of(path.read_text(), name, path.name == "__init__.py", where, modules)


def test_no_import_crosses_a_layer_the_wrong_way() -> None:
    problems = violations(scan())
    assert not problems, "imports against orch's layers:\n" + "\n".join(problems)


def test_every_layer_is_known() -> None:
    packages = {p.parent.name for p in (REPO / "orch").glob("*/__init__.py")}
    assert packages == LAYERS, f"orch's subpackages changed: classify {packages ^ LAYERS} in LAYERS and RULES"


def test_every_allowed_exception_is_still_needed() -> None:
    pairs = {(imp.importer, imp.imported) for imp in scan()}
    assert not ALLOWED - pairs, f"stale entries in ALLOWED: {ALLOWED - pairs}"


# The checker itself, on planted sources: a test above that passed because it saw nothing would pass vacuously.

MODULES = frozenset({"orch.store", "orch.store.repo", "orch.cli", "orch.decisions", "orch.decisions.retry"})

PLANTED = """
from __future__ import annotations
from typing import TYPE_CHECKING
from orch.states import TaskStatus
from . import retry
if TYPE_CHECKING:
    from sqlalchemy.orm import Session
def later() -> None:
    from ..store import repo
    import celery
"""


def test_the_checker_reports_a_planted_forbidden_import() -> None:
    found = list(imports_of(PLANTED, "orch.decisions.planted", False, "orch/decisions/planted.py", MODULES))
    assert {i.imported for i in found} >= {"orch.decisions.retry", "sqlalchemy.orm", "orch.store.repo", "celery"}
    problems = violations(iter(found))
    assert len(problems) == 3, problems
    assert any(
        p.startswith("orch/decisions/planted.py:7: orch.decisions.planted imports sqlalchemy.orm") for p in problems
    )
    assert any("orch/decisions/planted.py:9:" in p and "orch.store.repo" in p for p in problems)
    assert any("orch/decisions/planted.py:10:" in p and "imports celery " in p for p in problems)


@pytest.mark.parametrize(
    ("importer", "source", "reported"),
    [
        ("orch.store.planted", "from orch.dispatch import reconcile", True),
        ("orch.store.planted", "from orch.decisions.retry import Outcome", False),
        ("orch.intake.planted", "from orch import cli", True),
        ("orch.views.planted", "import workers.runner", True),
        ("workers.planted", "from orch.cli import main", True),
        ("orch.cli.planted", "from orch.cli import main", False),
        ("orch.__main__", "from orch.cli import main", False),
        ("workers.planted", "from orch.store import repo", False),
    ],
)
def test_the_checker_on_one_import(importer: str, source: str, reported: bool) -> None:
    found = imports_of(source, importer, False, "planted.py", MODULES)
    assert bool(violations(found)) is reported
