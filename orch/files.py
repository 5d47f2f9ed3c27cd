"""File leases: whether two tasks' `files` patterns may name a common path, so the two must not run at once.

A pattern means what `workers.workspace.in_scope` makes of it: "dir" or "dir/" covers dir itself and everything
under it; otherwise fnmatch, where `*` (and so `**`) matches any characters *including* "/", `?` any one
character and `[...]` one of a set; and "**/" may also match no folder at all. Each pattern is turned into the
few character-level globs it stands for, and two globs overlap when some string matches both (an exact search
over pairs of positions). Patterns are taken both as written and tidied ("./", backslashes, "//", trailing "/").
Where exactness would cost code (sets of characters with `!`), the answer is True: waiting is always safe. One
assumption: no path holds a literal "*" or "?", so "*.py" does not also stand for a folder named "*.py" (in_scope's
literal "dir" reading), or "*.py" and "*.md" would overlap.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import Enum
from functools import lru_cache


class _Star(Enum):
    STAR = "*"


# A glob is a tuple of tokens: STAR (any string, "/" too) or one character of a set (negated?, (low, high) ranges).
STAR = _Star.STAR
CharSet = tuple[bool, tuple[tuple[str, str], ...]]
Token = CharSet | _Star
ANY_CHAR: CharSet = (True, ())


def files_conflict(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether any pattern of `a` overlaps any of `b`; an empty list conflicts with nothing."""
    return any(patterns_overlap(x, y) for x in a for y in b)


@lru_cache(maxsize=16_384)
def patterns_overlap(a: str, b: str) -> bool:
    """Whether some path may be covered by both patterns (True when unsure)."""
    return any(_globs_meet(x, y) for x in _globs(a) for y in _globs(b))


def _tidy(pattern: str) -> str:
    """Backslashes as "/", no "." or empty segments, no trailing "/"; the whole workdir ("." or "./") as "*"."""
    parts = [p for p in pattern.replace("\\", "/").split("/") if p not in ("", ".")]
    return "/".join(parts) or "*"


@lru_cache(maxsize=4_096)
def _globs(pattern: str) -> tuple[tuple[Token, ...], ...]:
    """The globs whose union is every path `in_scope` finds covered by `pattern`, as written or tidied."""
    globs: set[tuple[Token, ...]] = set()
    for form in {pattern, _tidy(pattern)}:
        globs |= {_parse(form), _parse(form.replace("**/", ""))}
        if "*" not in form and "?" not in form:  # "dir" covers dir and what is under it
            bare = tuple(_literal(c) for c in form.rstrip("/"))
            globs |= {bare, (*bare, _literal("/"), STAR)}
    return tuple(globs)


def _literal(char: str) -> CharSet:
    return (False, ((char, char),))


def _parse(pattern: str) -> tuple[Token, ...]:
    """fnmatch's reading of a pattern (as `fnmatch.translate` does it)."""
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
    return negated, tuple(ranges)


def _chars_meet(a: CharSet, b: CharSet) -> bool:
    """Whether one character is in both sets; exact but for two sets of many characters, one of them negated."""
    (a_neg, a_ranges), (b_neg, b_ranges) = a, b
    if a_neg and b_neg:
        return True
    if not a_neg and not b_neg:
        return any(lo <= b_hi and b_lo <= hi for lo, hi in a_ranges for b_lo, b_hi in b_ranges)
    positive, negated = (b_ranges, a_ranges) if a_neg else (a_ranges, b_ranges)
    if len(positive) == 1 and positive[0][0] == positive[0][1]:
        char = positive[0][0]
        return not any(lo <= char <= hi for lo, hi in negated)
    return bool(positive)


def _nonempty(token: CharSet) -> bool:
    negated, ranges = token
    return negated or bool(ranges)


def _globs_meet(a: tuple[Token, ...], b: tuple[Token, ...]) -> bool:
    """Whether some string matches both globs: a search over (position in a, position in b)."""
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
        if x is STAR:  # a's star ends here, or swallows what b's next token matches
            todo.append((i + 1, j))
            if y is STAR or (y is not None and _nonempty(y)):
                todo.append((i, j + 1))
        if y is STAR:
            todo.append((i, j + 1))
            if x is not None and x is not STAR and _nonempty(x):
                todo.append((i + 1, j))
        if x is not None and x is not STAR and y is not None and y is not STAR and _chars_meet(x, y):
            todo.append((i + 1, j + 1))
    return False
