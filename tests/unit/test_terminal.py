"""orch.views.terminal: text from plans and agents made inert (no control, escape or bidi character reaches a terminal),
checked against Unicode's own character data rather than the module's tables."""

from __future__ import annotations

import json
import unicodedata

import pytest

from orch.views.terminal import InertDecoder, inert, inert_json

# The review's payload: retitles the window, erases the line, then prints a green "succeeded".
PAYLOAD = "\x1b]0;PWNED\x07\x1b[2K\r\x1b[32msucceeded\x1b[0m"
BIDI_CONTROLS = {"LRE", "RLE", "PDF", "LRO", "RLO", "LRI", "RLI", "FSI", "PDI"}
MARKS = {"\u200e", "\u200f", "\u061c"}
SEPARATORS = {"\u2028", "\u2029"}


def live(char: str, one_line: bool = True) -> bool:
    """Whether `char` could act on a terminal (or break a line) rather than show as itself."""
    if not one_line and char in "\n\t":
        return False
    return (
        unicodedata.category(char) == "Cc"
        or unicodedata.bidirectional(char) in BIDI_CONTROLS
        or char in MARKS
        or char in SEPARATORS
    )


EVERY_CHARACTER = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)


def test_no_character_that_could_act_on_a_terminal_survives() -> None:
    assert not [hex(ord(c)) for c in set(inert(EVERY_CHARACTER)) if live(c)]
    kept = inert(EVERY_CHARACTER, keep_newlines=True)
    assert not [hex(ord(c)) for c in set(kept) if live(c, one_line=False)]
    assert "\n" in kept and "\t" in kept


def test_everything_else_is_left_as_it_is() -> None:
    harmless = "".join(c for c in EVERY_CHARACTER if not live(c) and c != "\\")
    assert inert(harmless) == harmless
    text = "naïve café — 日本語 עברית العربية 👩‍👩‍👧 \\ C:\\Users"  # ZWJ emoji, RTL letters, backslashes
    assert inert(text) == text


def test_the_payload_is_shown_as_visible_escapes() -> None:
    assert inert(PAYLOAD) == "\\x1b]0;PWNED\\x07\\x1b[2K\\r\\x1b[32msucceeded\\x1b[0m"
    assert inert("\x9b31m 8-bit CSI, \x7f DEL, \x00 NUL") == "\\x9b31m 8-bit CSI, \\x7f DEL, \\x00 NUL"
    assert inert("file \u202egnp.exe \u2066x\u2069 \u200f1") == "file \\u202egnp.exe \\u2066x\\u2069 \\u200f1"


def test_newlines_and_tabs_stay_only_where_lines_are_kept() -> None:
    assert inert("a\tb\nc\u2028d") == "a\\tb\\nc\\u2028d"
    assert inert("a\tb\nc\u2028d", keep_newlines=True) == "a\tb\nc\\u2028d"


@pytest.mark.parametrize("text", [PAYLOAD, "title \u202e and \u0085 NEL \x9d OSC", "é\u2028日本\x00"])
def test_json_stays_valid_and_equal_with_nothing_raw(text: str) -> None:
    document = {"title": text, "tasks": [{"error": text, "n": 1}]}
    encoded = inert_json(document)
    assert json.loads(encoded) == document
    assert not [c for c in encoded if live(c, one_line=False)]
    assert "é" in encoded or "é" not in text  # readable non-ASCII stays readable


def test_a_stream_decoded_in_any_chunks_reads_as_the_whole() -> None:
    data = ("€ ok " + PAYLOAD + " \u202e 日本\n").encode() + b"\xff bad byte\n"
    whole = InertDecoder().feed(data, final=True)
    assert whole == inert(data.decode("utf-8", "replace"), keep_newlines=True)
    for size in (1, 2, 3, 7):
        decoder = InertDecoder()
        pieces = [decoder.feed(data[i : i + size]) for i in range(0, len(data), size)]
        assert "".join(pieces) + decoder.feed(b"", final=True) == whole, size
        assert not [c for piece in pieces for c in piece if live(c, one_line=False)]


def test_a_stream_that_ends_inside_a_character_ends_with_a_replacement() -> None:
    decoder = InertDecoder()
    assert decoder.feed("ok €".encode()[:-1]) == "ok "
    assert decoder.feed(b"", final=True) == "\ufffd"
