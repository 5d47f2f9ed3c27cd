"""Text that came from a plan or an agent, made inert before a person's terminal shows it.

A title, an error, an output tail or a log is the agent's to choose, so it may hold escape sequences that
retitle the window (OSC 0), write the clipboard (OSC 52), hide a link (OSC 8), recolour, move the cursor or
clear the screen (CSI), or bidi controls that show text in another order than it is stored. `inert` writes every
such character as a visible escape (`\\x1b`, `\\u202e`) instead:

- C0 controls but newline and tab (kept unless the text is one line: a table cell, a summary, an event), DEL,
  and C1 (U+0080 to U+009F, where 8-bit CSI and OSC live);
- bidi embeddings, overrides and isolates (U+202A to U+202E, U+2066 to U+2069), and the marks LRM, RLM and ALM
  (U+200E, U+200F, U+061C): they are invisible, and an invisible strong-direction character moves the digits and
  punctuation next to it (an exit code, a count), which is enough to make a line read other than it is. RTL
  text reads correctly without them, so escaping them costs a visible `\\u200f` in rare legitimate text;
- the line and paragraph separators (U+2028, U+2029), which some viewers and Python's own `splitlines` take as
  a line break: a one-line field must stay one line.

Each character is escaped on its own, so an escape sequence is inert whole or in pieces: text streamed in chunks
(`orch logs --follow`) needs only its multi-byte characters kept whole (`InertDecoder`).
"""

from __future__ import annotations

import codecs
import json
from typing import Any

_NAMED = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
_CONTROLS = (*range(0x00, 0x20), *range(0x7F, 0xA0))
_BIDI = (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)
_SEPARATORS = (0x2028, 0x2029)


def _visible(code: int) -> str:
    return _NAMED.get(code) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


_ONE_LINE = {code: _visible(code) for code in (*_CONTROLS, *_BIDI, *_SEPARATORS)}
_KEEP_LINES = {code: escape for code, escape in _ONE_LINE.items() if code not in (0x09, 0x0A)}
# In JSON text: C0 is escaped by json itself; the rest would reach the terminal raw with ensure_ascii=False.
_JSON = {code: f"\\u{code:04x}" for code in _ONE_LINE if code >= 0x7F}


def inert(text: str, *, keep_newlines: bool = False) -> str:
    """`text` with every control, bidi and line-separator character written as a visible escape; newlines and
    tabs stay when `keep_newlines` (a log, a result block), else they are escaped too (one line)."""
    return text.translate(_KEEP_LINES if keep_newlines else _ONE_LINE)


def inert_json(document: Any) -> str:
    """`document` as indented JSON (non-ASCII text kept readable) in which no control or bidi character is raw:
    they are \\u escapes, which JSON readers decode to the same strings."""
    return json.dumps(document, indent=2, ensure_ascii=False).translate(_JSON)


class InertDecoder:
    """Bytes read in chunks as inert text: UTF-8 (invalid bytes as U+FFFD), a character split between two chunks
    decoded whole with the second."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes, final: bool = False) -> str:
        return inert(self._decoder.decode(data, final), keep_newlines=True)
