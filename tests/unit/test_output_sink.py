"""The executors' capped log with its in-memory tail, masked as it is written."""

from __future__ import annotations

import io

from workers.executors.output import OutputSink

MARKER = b"\n[orch: log truncated at the ORCH_LOG_MAX_BYTES cap]\n"


def sink(max_bytes: int = 10, tail_bytes: int = 1024) -> tuple[OutputSink, io.BytesIO]:
    log = io.BytesIO()
    return OutputSink(log, max_bytes=max_bytes, tail_bytes=tail_bytes), log


def test_output_under_the_cap_is_written_whole() -> None:
    out, log = sink(max_bytes=10)
    out.write(b"hello")
    out.write(b"")
    out.write(b"abc")
    assert log.getvalue() == b"helloabc"
    assert not out.truncated
    assert out.total == 8
    assert out.tail == "helloabc"


def test_output_exactly_at_the_cap_is_not_truncated() -> None:
    out, log = sink(max_bytes=10)
    out.write(b"0123456789")
    assert log.getvalue() == b"0123456789"
    assert not out.truncated

    out.write(b"!")
    assert log.getvalue() == b"0123456789" + MARKER
    assert out.truncated


def test_log_is_capped_with_one_truncation_marker() -> None:
    out, log = sink(max_bytes=10)
    out.write(b"abcdef")
    out.write(b"ghijklmnop")  # crosses the cap
    out.write(b"qrstuvwxyz")  # entirely over it
    out.write(b"more")
    assert log.getvalue() == b"abcdefghij" + MARKER
    assert log.getvalue().count(b"log truncated") == 1
    assert out.truncated
    assert out.total == 30


def test_zero_cap_writes_only_the_marker() -> None:
    out, log = sink(max_bytes=0)
    out.write(b"abc")
    out.write(b"def")
    assert log.getvalue() == MARKER


def test_tail_keeps_only_the_last_bytes_even_past_the_log_cap() -> None:
    out, _ = sink(max_bytes=4, tail_bytes=5)
    out.write(b"hello ")
    assert out.tail == "ello "
    out.write(b"world")
    assert out.tail == "world"
    out.write(b"!")
    assert out.tail == "orld!"


def test_tail_cut_inside_a_utf8_character_still_decodes() -> None:
    out, _ = sink(tail_bytes=3)
    out.write("é€".encode())  # 2 + 3 bytes: the tail holds only the euro sign
    assert out.tail == "€"
    out.write(b"ab")  # tail now starts in the middle of the euro sign
    assert out.tail == "\ufffdab"


def test_a_secret_split_across_chunks_is_still_masked() -> None:
    from orch.redaction import Redactor

    log = io.BytesIO()
    out = OutputSink(log, max_bytes=1 << 20, tail_bytes=1 << 20, redactor=Redactor({"API_KEY": "sk-secret-123456"}))
    for chunk in (b"token: sk-sec", b"ret-12", b"3456 and again sk-secret-123456", b"\nend"):
        out.write(chunk)
    out.close()
    written = log.getvalue().decode()
    assert "sk-secret" not in written and "sk-secret" not in out.tail
    assert written == "token: [redacted API_KEY] and again [redacted API_KEY]\nend"


def test_short_values_are_not_treated_as_secrets() -> None:
    from orch.redaction import Redactor

    assert Redactor({"PIN": "1234"}).text("1234 apples") == "1234 apples"
