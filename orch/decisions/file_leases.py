"""File leases: whether two tasks' `files` patterns may name a common path, so the two must not run at once.

A pattern means what `workers.workspace.in_scope` makes of it: "dir" or "dir/" covers dir itself and everything
under it; otherwise fnmatch, where `*` (and so `**`) matches any characters *including* "/", `?` any one
character and `[...]` one of a set; and "**/" may also match no folder at all. Each pattern is turned into the
few character-level globs it stands for, and two globs overlap when some string matches both (an exact search
over pairs of positions). Patterns are taken both as written and tidied ("./", backslashes, "//", trailing "/").
Where exactness would cost code (sets of characters with `!`), the answer is True: waiting is always safe. One
assumption: no path holds a literal "*" or "?", so "*.py" does not also stand for a folder named "*.py" (in_scope's
literal "dir" reading), or "*.py" and "*.md" would overlap.

The check runs while the dispatch lock is held, so its cost is bounded whatever a plan holds. Plain paths (no
wildcard) are compared as sets of strings, a step per path and per "/" in it. Two globs are compared a token of
the first at a time, the positions the second may have reached held as the bits of an int: a step per token, one
or more per set of characters compared, a few per pair of globs and two per character read. A check that has
spent its budget (MAX_CHECK_STEPS, or one the caller shares between checks) answers True. A pattern pair's steps
depend on the two patterns alone, so whether it was cached changes no answer.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from fnmatch import fnmatchcase
from functools import lru_cache
from itertools import chain


class _Star(Enum):
    STAR = "*"

    __hash__ = object.__hash__  # Enum's own hashes the name in Python, and globs are hashed all the time


# A glob is a tuple of tokens: STAR (any string, "/" too) or one character of a set (negated?, (low, high) ranges).
STAR = _Star.STAR
CharSet = tuple[bool, tuple[tuple[str, str], ...]]
Token = CharSet | _Star
ANY_CHAR: CharSet = (True, ())

# At most this much work per check unless the caller gives a budget: some 50 ms here, and far above what two
# tasks with a few dozen patterns each take (a pair of plain paths takes a few steps, a pair of globs some 20).
MAX_CHECK_STEPS = 50_000
# At most this much for every check one dispatch decision makes (orch.decisions.readiness.reconcile): some 0.2 s.
MAX_DECISION_STEPS = 4 * MAX_CHECK_STEPS
# What setting up the comparison of two globs costs, and reading a pattern into globs, in steps (a microsecond
# or so each).
GLOB_PAIR_STEPS = 4
PARSE_STEPS_PER_CHAR = 2


@dataclass
class StepBudget:
    """Steps a caller lets overlap checks spend; share one between the checks of one decision to bound it whole."""

    left: int = MAX_CHECK_STEPS

    def spend(self, steps: int) -> bool:
        """Take `steps`; False once the budget is overspent."""
        self.left -= steps
        return self.left >= 0


def files_conflict(a: Sequence[str], b: Sequence[str], budget: StepBudget | None = None) -> bool:
    """Whether any pattern of `a` overlaps any of `b`; an empty list conflicts with nothing. True as well once the
    budget (by default MAX_CHECK_STEPS for this check alone) is spent: waiting is always safe."""
    if not a or not b:
        return False
    budget = budget if budget is not None else StepBudget()
    if budget.left <= 0:
        return True
    plain_a = [forms for x in a if (forms := _plain_forms(x)) is not None]
    plain_b = [forms for y in b if (forms := _plain_forms(y)) is not None]
    if plain_a and plain_b and _plain_paths_meet(plain_a, plain_b, budget):
        return True
    # every other pair, one at a time (each costs a step or more, so the budget ends this loop too)
    wild_b = [y for y in b if _plain_forms(y) is None]
    pairs = chain(
        ((x, y) for x in a if _plain_forms(x) is None for y in b),
        ((x, y) for x in a if _plain_forms(x) is not None for y in wild_b),
    )
    for x, y in pairs:
        overlap, steps = pattern_overlap_steps(x, y)
        within_budget = budget.spend(steps)
        if overlap or not within_budget:
            return True
    return False


@lru_cache(maxsize=16_384)
def _plain_forms(pattern: str) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """For a pattern without wildcards, the paths it names (as written and tidied, with and without a trailing "/")
    and the folders whose contents it covers (the same without the "/"): what its globs match, as plain strings.
    None for a pattern with wildcards."""
    if any(char in pattern for char in "*?["):
        return None
    tidied = _tidy(pattern)
    if tidied == "*":  # the whole workdir
        return None
    forms = tuple(dict.fromkeys((pattern, tidied)))
    folders = tuple(dict.fromkeys(form.rstrip("/") for form in forms))
    return tuple(dict.fromkeys((*forms, *folders))), folders


def _plain_paths_meet(
    a: list[tuple[tuple[str, ...], tuple[str, ...]]],
    b: list[tuple[tuple[str, ...], tuple[str, ...]]],
    budget: StepBudget,
) -> bool:
    """Whether plain patterns of a and b overlap: a path both name, or one names a path inside the other's folder
    (two folders meet only so). Set lookups, one step each: a path and each "/" in it."""
    steps = sum(len(paths) + sum(path.count("/") for path in paths) for paths, _ in (*a, *b))
    if not budget.spend(steps):
        return True
    paths_a = {path for paths, _ in a for path in paths}
    paths_b = {path for paths, _ in b for path in paths}
    if not paths_a.isdisjoint(paths_b):
        return True
    folders_a = {folder for _, folders in a for folder in folders}
    folders_b = {folder for _, folders in b for folder in folders}
    return _inside_any(paths_a, folders_b) or _inside_any(paths_b, folders_a)


def _inside_any(paths: set[str], folders: set[str]) -> bool:
    """Whether some path is inside one of the folders: its part before some "/" is one of them."""
    for path in paths:
        slash = path.find("/")
        while slash >= 0:
            if path[:slash] in folders:
                return True
            slash = path.find("/", slash + 1)
    return False


def char_sets(pattern: str) -> int:
    """How many `[...]` sets of more than one character `pattern` holds (`?` aside): what the check's cost grows with,
    beyond the pattern's length."""
    tokens = _parse(pattern)
    return sum(1 for token in tokens if token is not STAR and token != ANY_CHAR and _literal_char(token) is None)


def patterns_overlap(a: str, b: str) -> bool:
    """Whether some path may be covered by both patterns (True when unsure)."""
    return pattern_overlap_steps(a, b)[0]


@lru_cache(maxsize=16_384)
def pattern_overlap_steps(a: str, b: str) -> tuple[bool, int]:
    """Whether some path may be covered by both patterns, and the steps that took: a function of the patterns alone,
    so a check gives up at the same point whether or not its pairs were cached."""
    steps = 1 + PARSE_STEPS_PER_CHAR * (len(a) + len(b))  # turning both into globs: charged even when cached
    for x in _globs(a):
        for y in _globs(b):
            meet, cost = _globs_meet(x, y)
            steps += cost
            if meet:
                return True, steps
    return False, steps


def _tidy(pattern: str) -> str:
    """Backslashes as "/", no "." or empty segments, no trailing "/"; the whole workdir ("." or "./") as "*"."""
    parts = [p for p in pattern.replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(parts) or "*"


@lru_cache(maxsize=4_096)
def _globs(pattern: str) -> tuple[tuple[Token, ...], ...]:
    """The globs whose union is every path `in_scope` finds covered by `pattern`, as written or tidied (but those
    that match nothing)."""
    globs: dict[tuple[Token, ...], None] = {}  # in a fixed order: the steps to the first overlap never vary
    for form in dict.fromkeys((pattern, _tidy(pattern))):
        globs |= dict.fromkeys((_parse(form), _parse(form.replace("**/", ""))))
        if "*" not in form and "?" not in form:  # "dir" covers dir and what is under it
            bare = tuple(_literal(c) for c in form.rstrip("/"))
            globs |= dict.fromkeys((bare, (*bare, _literal("/"), STAR)))
    return tuple(glob for glob in globs if not _matches_nothing(glob))


def _literal(char: str) -> CharSet:
    return (False, ((char, char),))


def _parse(pattern: str) -> tuple[Token, ...]:
    """fnmatch's reading of a pattern (as `fnmatch.translate` does it); a run of stars is one STAR."""
    tokens: list[Token] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        i += 1
        if char == "*":
            if not tokens or tokens[-1] is not STAR:
                tokens.append(STAR)
        elif char == "?":
            tokens.append(ANY_CHAR)
        elif char == "[":
            j = i + 1 if i < n and pattern[i] == "!" else i
            j = j + 1 if j < n and pattern[j] == "]" else j
            j = pattern.find("]", j)
            if j < 0:
                tokens.append(_literal("["))
            else:
                tokens.append(_char_set(pattern[i:j]))
                i = j + 1
        else:
            tokens.append(_literal(char))
    return tuple(tokens)


def _char_set(body: str) -> CharSet:
    """A set's ranges, sorted and merged where they touch (the same characters, so overlap checks can sweep)."""
    negated = body.startswith("!")
    body = body[1:] if negated else body
    ranges: list[tuple[str, str]] = []
    i = 0
    while i < len(body):
        if i + 2 < len(body) and body[i + 1] == "-":
            if body[i] <= body[i + 2]:  # fnmatch drops reversed ranges
                ranges.append((body[i], body[i + 2]))
            i += 3
        else:
            ranges.append((body[i], body[i]))
            i += 1
    merged: list[tuple[str, str]] = []
    for lo, hi in sorted(ranges):
        if merged and ord(lo) <= ord(merged[-1][1]) + 1:
            merged[-1] = (merged[-1][0], max(hi, merged[-1][1]))
        else:
            merged.append((lo, hi))
    return negated, tuple(merged)


def _chars_meet(a: CharSet, b: CharSet) -> bool:
    """Whether one character is in both sets; exact but for two sets of many characters, one of them negated."""
    (a_neg, a_ranges), (b_neg, b_ranges) = a, b
    if a_neg and b_neg:
        return True
    if not a_neg and not b_neg:
        fewer, more = (a_ranges, b_ranges) if len(a_ranges) <= len(b_ranges) else (b_ranges, a_ranges)
        return any(_in_ranges(lo, hi, more) for lo, hi in fewer)
    positive, negated = (b_ranges, a_ranges) if a_neg else (a_ranges, b_ranges)
    if len(positive) == 1 and positive[0][0] == positive[0][1]:
        char = positive[0][0]
        return not _in_ranges(char, char, negated)
    return bool(positive)


def _in_ranges(lo: str, hi: str, ranges: tuple[tuple[str, str], ...]) -> bool:
    """Whether lo..hi meets one of `ranges` (sorted, disjoint): the last range starting at or before hi."""
    last = bisect_right(ranges, hi, key=lambda r: r[0]) - 1
    return last >= 0 and ranges[last][1] >= lo


def _chars_meet_steps(a: CharSet, b: CharSet) -> int:
    return 1 + min(len(a[1]), len(b[1]))


def _matches_nothing(glob: tuple[Token, ...]) -> bool:
    """A set with no character in it (only reversed ranges, as fnmatch reads them) matches no string at all."""
    return any(token is not STAR and not token[0] and not token[1] for token in glob)


@dataclass(frozen=True)
class _Shape:
    """A glob as bit masks over its positions: its stars, its characters (every position but stars), the `?`s, each
    literal character's positions, and its other sets of characters."""

    end: int
    stars: int
    chars: int
    any_char: int
    literals: dict[str, int]
    sets: tuple[tuple[int, CharSet], ...]


@lru_cache(maxsize=4_096)
def _shape(glob: tuple[Token, ...]) -> _Shape:
    stars = any_char = 0
    literals: dict[str, int] = {}
    sets: list[tuple[int, CharSet]] = []
    for j, token in enumerate(glob):
        if token is STAR:
            stars |= 1 << j
        elif token == ANY_CHAR:
            any_char |= 1 << j
        elif (char := _literal_char(token)) is not None:
            literals[char] = literals.get(char, 0) | 1 << j
        else:
            sets.append((j, token))
    chars = ((1 << len(glob)) - 1) & ~stars
    return _Shape(len(glob), stars, chars, any_char, literals, tuple(sets))


def _literal_char(token: CharSet) -> str | None:
    negated, ranges = token
    return ranges[0][0] if not negated and len(ranges) == 1 and ranges[0][0] == ranges[0][1] else None


def _meets(x: CharSet, b: _Shape) -> tuple[int, int]:
    """The positions of b whose character set meets x (never empty: _globs drops globs that match nothing), as
    bits, and the steps it took."""
    if x == ANY_CHAR:
        return b.chars, 1
    mask, steps = b.any_char, 1
    literal = _literal_char(x)
    if literal is not None:
        mask |= b.literals.get(literal, 0)
    else:
        for char, positions in b.literals.items():
            steps += 1
            if _chars_meet(x, _literal(char)):
                mask |= positions
    for j, token in b.sets:
        steps += _chars_meet_steps(x, token)
        if _chars_meet(x, token):
            mask |= 1 << j
    return mask, steps


def _globs_meet(a: tuple[Token, ...], b: tuple[Token, ...]) -> tuple[bool, int]:
    """Whether some string matches both globs, and the steps it took.

    A search over pairs (i, j) of positions in a and b, one row i at a time: `row` holds as bit j every position of
    b a string may have reached once it has matched a[:i].
    """
    shape = _shape(b)
    from_anywhere = (1 << (shape.end + 1)) - 1
    meets: dict[CharSet, int] = {}
    steps = GLOB_PAIR_STEPS
    row = 1
    for x in a:
        steps += 1
        if x is STAR:  # a's star swallows any of b's tokens, then ends: every later position of b is reachable
            row = from_anywhere & ~((row & -row) - 1)
            continue
        row = _stars_end(row, shape.stars)
        if x not in meets:
            meets[x], cost = _meets(x, shape)
            steps += cost
        # a character both sets hold, or b's star swallows a's character
        row = ((row & meets[x]) << 1) | (row & shape.stars)
        if not row:
            return False, steps
    return bool(_stars_end(row, shape.stars) >> shape.end & 1), steps + 1


def _stars_end(row: int, stars: int) -> int:
    """The row with b's stars ending wherever one was reached (once: _parse never puts two stars in a row)."""
    return row | (row & stars) << 1


def covers(path: str, patterns: Sequence[str]) -> bool:
    """Whether `path` is covered by any of `patterns` ("dir/" or "dir" covers what is under it, `**/` also matches
    no folder at all): a task's `files` against a path it changed, a `relock` pattern against a merged path."""
    for pattern in patterns:
        bare = pattern.rstrip("/")
        if path == bare or path.startswith(bare + "/"):
            return True
        if fnmatchcase(path, pattern) or fnmatchcase(path, pattern.replace("**/", "")):
            return True
    return False
