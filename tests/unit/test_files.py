"""File leases: whether two `files` patterns may name a common path (in workers.workspace.in_scope's reading)."""

from __future__ import annotations

import itertools
import random

import pytest

from orch.decisions.file_leases import (
    MAX_CHECK_STEPS,
    STAR,
    StepBudget,
    Token,
    _chars_meet,
    _globs,
    _globs_meet,
    _plain_forms,
    char_sets,
    files_conflict,
    pattern_overlap_steps,
    patterns_overlap,
)
from orch.intake.plan import MAX_FILE_PATTERN_CHARS, MAX_FILE_PATTERN_SETS, MAX_FILES_PER_TASK
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


# --- the cost of a check is bounded ------------------------------------------------------------------


def reference_globs_meet(a: tuple[Token, ...], b: tuple[Token, ...]) -> bool:
    """The search over every pair of positions, one pair at a time (files.py's own until the row-at-a-time search
    replaced it): slow on long patterns, plainly right."""
    seen: set[tuple[int, int]] = set()
    todo = [(0, 0)]
    while todo:
        i, j = todo.pop()
        if (i, j) in seen:
            continue
        seen.add((i, j))
        x = a[i] if i < len(a) else None
        y = b[j] if j < len(b) else None
        if x is None and y is None:
            return True
        if x is STAR:
            todo.append((i + 1, j))
            if y is STAR or (y is not None and (y[0] or y[1])):
                todo.append((i, j + 1))
        if y is STAR:
            todo.append((i, j + 1))
            if x is not None and x is not STAR and (x[0] or x[1]):
                todo.append((i + 1, j))
        if x is not None and x is not STAR and y is not None and y is not STAR and _chars_meet(x, y):
            todo.append((i + 1, j + 1))
    return False


def test_the_row_at_a_time_search_agrees_with_the_pair_at_a_time_one() -> None:
    rng = random.Random(11)
    pieces = ["a", "b", "c", "/", "*", "**", "?", "[ab]", "[!a]", "[a-c]", "[b-a]", "[]a]", "[!]", "ab", "**/"]
    disagreements = []
    for _ in range(3000):
        a, b = ("".join(rng.choices(pieces, k=rng.randint(1, 8))) for _ in range(2))
        for x in _globs(a):
            for y in _globs(b):
                if _globs_meet(x, y)[0] != reference_globs_meet(x, y):
                    disagreements.append((a, b, x, y))
    assert not disagreements, disagreements[:3]


def stars_pattern(char: str, end: str, length: int = MAX_FILE_PATTERN_CHARS) -> str:
    """ "*c*c*c…end": the review's costliest shape for the old search."""
    return (f"*{char}" * length)[: length - len(end)] + end


def costly_pairs() -> dict[str, tuple[str, str]]:
    """Pattern pairs that make the search work hardest, each at the validation limits (length, `[...]` sets)."""
    letters = "".join(chr(0x100 + i) for i in range(MAX_FILE_PATTERN_CHARS))
    sets = "".join(f"[{chr(0x100 + i)}{chr(0x3000 + i)}]" for i in range(MAX_FILE_PATTERN_SETS))
    other_sets = "".join(f"[{chr(0x100 + i)}{chr(0x4000 + i)}]" for i in range(MAX_FILE_PATTERN_SETS))
    wide = "".join(f"[{chr(0x100 + 30 * i)}-{chr(0x114 + 30 * i)}]" for i in range(MAX_FILE_PATTERN_SETS))
    rest = MAX_FILE_PATTERN_CHARS - 1 - len(sets)
    return {
        "stars against stars": (stars_pattern("a", "1"), stars_pattern("b", "z1")),
        "one star against a literal": ("*" + "a" * 254 + "1", "a" * 255 + "2"),
        "one star each, matching all along": ("*" + "a" * 254 + "1", "*" + "a" * 254 + "2"),
        "distinct letters against sets": ("*" + letters[:254] + "1", "*" + sets + letters[: rest - 1] + "2"),
        "sets against sets": ("*" + sets + letters[:rest], "*" + other_sets + letters[:rest][::-1]),
        "wide sets against letters": (
            "*/**/" + letters[:251],
            "*" + wide + letters[: MAX_FILE_PATTERN_CHARS - 1 - len(wide)],
        ),
        "one set of many characters": (
            "[" + "".join(chr(0x100 + 2 * i) for i in range(254)) + "]",
            "[" + "".join(chr(0x101 + 2 * i) for i in range(254)) + "]",
        ),
    }


# The costliest pair found (by the cases above and a random search) takes some 10,000 steps.
PAIR_STEPS_AT_THE_LIMITS = 12_000


@pytest.mark.parametrize(("a", "b"), costly_pairs().values(), ids=costly_pairs().keys())
def test_the_costliest_pattern_pairs_at_the_limits_take_a_bounded_number_of_steps(a: str, b: str) -> None:
    assert len(a) <= MAX_FILE_PATTERN_CHARS and len(b) <= MAX_FILE_PATTERN_CHARS
    assert char_sets(a) <= MAX_FILE_PATTERN_SETS and char_sets(b) <= MAX_FILE_PATTERN_SETS
    for x, y in ((a, b), (b, a)):
        overlap, steps = pattern_overlap_steps(x, y)
        assert steps <= PAIR_STEPS_AT_THE_LIMITS, (steps, x[:20], y[:20])
        # exact even so: the answer is the pair-at-a-time search's
        expected = any(reference_globs_meet(g, h) for g in _globs(x) for h in _globs(y))
        assert overlap is expected


def test_two_tasks_at_the_limits_are_checked_within_the_budget_and_then_wait() -> None:
    """1,000 patterns each (10⁶ pairs, every one costly and none overlapping): the check stops once its steps are
    spent and answers "overlap" (waiting is always safe)."""
    ends = [f"{i:04d}" for i in range(MAX_FILES_PER_TASK)]
    a = [stars_pattern("a", f"{end}1") for end in ends]
    b = [stars_pattern("b", f"{end}z1") for end in ends]
    assert not patterns_overlap(a[0], b[0])
    budget = StepBudget()

    assert files_conflict(a, b, budget)

    spent = MAX_CHECK_STEPS - budget.left
    assert MAX_CHECK_STEPS < spent <= MAX_CHECK_STEPS + PAIR_STEPS_AT_THE_LIMITS


def test_a_budget_shared_between_checks_bounds_them_all() -> None:
    budget = StepBudget(1_000)
    apart = (["src/*.py"], ["docs/*.md"])
    checks = [files_conflict(*apart, budget) for _ in range(200)]
    assert checks[0] is False
    assert checks[-1] is True  # the budget ran out: the rest wait
    assert checks == sorted(checks)  # once spent, it stays spent


def test_the_answer_does_not_depend_on_what_is_cached() -> None:
    a = [f"src/{i}/*.py" for i in range(300)]
    b = [f"docs/{i}/*.md" for i in range(300)]
    pattern_overlap_steps.cache_clear()
    cold = files_conflict(a, b)
    warm = files_conflict(a, b)
    assert cold is warm is True  # 90,000 pairs: beyond the budget, cached or not
    assert files_conflict(a[:10], b[:10]) is False


def test_plain_paths_are_checked_as_sets_with_the_answers_of_their_globs() -> None:
    rng = random.Random(5)
    pieces = ["a", "b", "/", "./", "//", "\\", ".", "ab/", "a/b"]
    names = ["".join(rng.choices(pieces, k=rng.randint(1, 5))) for _ in range(400)]
    plain = [name for name in names if _plain_forms(name) is not None]
    assert len(plain) > 300
    for _ in range(2000):
        a, b = rng.sample(plain, rng.randint(1, 3)), rng.sample(plain, rng.randint(1, 3))
        by_globs = any(_globs_meet(x, y)[0] for p in a for q in b for x in _globs(p) for y in _globs(q))
        assert files_conflict(a, b) is by_globs, (a, b)


def test_two_tasks_of_a_thousand_plain_paths_each_get_an_exact_answer() -> None:
    a = [f"src/module_{i}/file_{i}.py" for i in range(MAX_FILES_PER_TASK)]
    b = [f"tests/module_{i}/test_{i}.py" for i in range(MAX_FILES_PER_TASK)]
    budget = StepBudget()
    assert files_conflict(a, b, budget) is False
    assert MAX_CHECK_STEPS - budget.left < MAX_CHECK_STEPS // 2
    assert files_conflict(a, [*b, "src/module_999"]) is True  # a folder holding one of a's files
    assert files_conflict([*a, "tests/**/*.py"], b) is True
