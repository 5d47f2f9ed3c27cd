"""File leases: whether two `files` patterns may name a common path (in workers.workspace.in_scope's reading)."""

from __future__ import annotations

import itertools
import random

import pytest

from orch.files import files_conflict, patterns_overlap
from workers.workspace import in_scope

OVERLAPS = {
    # identical and plainly different files
    "same file": ("src/a.py", "src/a.py", True),
    "other file": ("src/a.py", "src/b.py", False),
    "longer name": ("src/a", "src/a.py", False),
    "other extension": ("src/a.py", "src/a.pyc", False),
    # a directory covers what is under it, with or without a trailing slash
    "dir and file beneath": ("src", "src/a.py", True),
    "dir/ and file beneath": ("src/", "src/pkg/a.py", True),
    "file and dir/ above": ("src/pkg/a.py", "src/", True),
    "nested dirs": ("src", "src/pkg/", True),
    "dir with and without slash": ("src/", "src", True),
    "doubled slash": ("src//", "src/a.py", True),
    "sibling with common prefix": ("src", "srcs/a.py", False),
    "sibling dir/": ("src/", "src2", False),
    "unrelated dirs": ("docs/", "src/", False),
    # `*` is fnmatch's: any characters, "/" included
    "star and a file at top": ("*.py", "setup.py", True),
    "star reaches into folders": ("*.py", "src/a.py", True),
    "star in a folder reaches deeper": ("src/*.py", "src/pkg/a.py", True),
    "star and another suffix": ("*.py", "*.md", False),
    "star in another folder": ("src/*.py", "tests/a.py", False),
    "star and a dir": ("src/*.py", "src", True),
    "everything": ("*", "any/thing", True),
    # two wildcards: overlap unless their literal ends rule it out
    "two stars, same": ("src/*", "src/*", True),
    "two stars, crossing": ("src/a*", "src/*b", True),
    "two stars, other prefixes": ("a*.py", "b*.py", False),
    "two stars, other suffixes": ("src/*.py", "src/*.md", False),
    "two stars, other folders": ("docs/**/*.md", "src/*.md", False),
    # `**`
    "globstar and below": ("src/**", "src/a/b.py", True),
    "globstar and elsewhere": ("src/**", "docs/x.md", False),
    "bare globstar": ("**", "x", True),
    "globstar matches no folder": ("**/test_*.py", "test_a.py", True),
    "globstar matches folders": ("**/test_*.py", "src/test_a.py", True),
    "globstar, other names": ("**/test_*.py", "src/*.md", False),
    "inner globstar, no folder": ("a/**/b", "a/b", True),
    "inner globstar, folders": ("a/**/b", "a/x/y/b", True),
    "globstar and other extension": ("docs/**/*.md", "docs/*.py", False),
    # `?` and `[...]`
    "question mark": ("?.py", "a.py", True),
    "question mark is one character": ("?.py", "ab.py", False),
    "set holds it": ("[ab].py", "b.py", True),
    "set lacks it": ("[ab].py", "c.py", False),
    "negated set lacks it": ("[!a].py", "a.py", False),
    "negated set holds it": ("[!a].py", "b.py", True),
    "sets meet": ("[ab].py", "[bc].py", True),
    "sets apart": ("[ab].py", "[cd].py", False),
    "ranges apart": ("[a-c].py", "[x-z].py", False),
    "ranges meet": ("[a-c].py", "[c-e].py", True),
    "brackets as fnmatch reads them": ("pages/[id].tsx", "pages/i.tsx", True),
    "brackets as a literal name": ("pages/[id].tsx", "pages/[id].tsx", True),
    "brackets, other name": ("pages/[id].tsx", "pages/x.tsx", False),
    "unclosed bracket is literal": ("a[b", "a[b", True),
    # tidying: "./", backslashes, the whole workdir
    "dot slash": ("./src", "src/a.py", True),
    "dot slash inside": ("src/./a.py", "src/a.py", True),
    "backslashes": ("src\\a.py", "src/a.py", True),
    "backslash dir": ("src\\", "src/a.py", True),
    "the whole workdir": (".", "a/b.py", True),
    "the whole workdir, slash": ("./", "a", True),
    # conservative: disjoint in truth, but judged overlapping (waiting is safe)
    "negated set and a set of many (conservative)": ("[!ab].py", "[ab].py", True),
    "two negated sets (conservative)": ("[!a]", "[!b]", True),
    "a file name might be a folder (conservative)": ("*.py", "README.md", True),
    "a file name might be a folder, globstar (conservative)": ("**/test_*.py", "src/a.py", True),
}


@pytest.mark.parametrize(("a", "b", "expected"), OVERLAPS.values(), ids=OVERLAPS.keys())
def test_patterns_overlap(a: str, b: str, expected: bool) -> None:
    assert patterns_overlap(a, b) is expected
    assert patterns_overlap(b, a) is expected


def test_files_conflict_when_any_pair_overlaps() -> None:
    assert files_conflict(["docs/", "src/a.py"], ["tests/", "src/"])
    assert not files_conflict(["docs/", "src/a.py"], ["tests/", "src/b.py"])


@pytest.mark.parametrize(("a", "b"), [([], []), ([], ["src/"]), (["*"], [])])
def test_an_empty_list_conflicts_with_nothing(a: list[str], b: list[str]) -> None:
    assert not files_conflict(a, b)


def test_never_says_apart_when_some_path_is_in_scope_of_both() -> None:
    """Soundness against in_scope itself: random small patterns, every short path over their alphabet."""
    rng = random.Random(7)
    pieces = ["a", "b", "/", "*", "?", "[", "]", "!", "-", "**/", "./", "[ab]", "[!a]", "[a-b]", "[b-a]", "b/"]
    paths = ["".join(p) for n in range(5) for p in itertools.product("ab/[]!-", repeat=n)]
    covered: dict[str, frozenset[str]] = {}
    for _ in range(300):
        a, b = ("".join(rng.choices(pieces, k=rng.randint(1, 3))) for _ in range(2))
        for pattern in (a, b):
            if pattern not in covered:
                covered[pattern] = frozenset(p for p in paths if in_scope(p, [pattern]))
        if covered[a] & covered[b]:
            assert patterns_overlap(a, b), (a, b, sorted(covered[a] & covered[b])[:3])
