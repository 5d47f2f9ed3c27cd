"""Durations as users write them, and as orch prints them."""

from __future__ import annotations

import pytest

from orch.durations import format_duration, parse_duration


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("90s", 90.0),
        ("10m", 600.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1h 30m 15s", 5415.0),
        ("1.5h", 5400.0),
        (" 10M ", 600.0),
        ("45", 45.0),
        ("2.5", 2.5),
        (30, 30.0),
        (1.25, 1.25),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    result = parse_duration(value)
    assert result == seconds
    assert isinstance(result, float)


@pytest.mark.parametrize("value", ["", "soon", "10x", "m", "10m5", "-5s", "1h-30m", True, None, [10], {"s": 1}])
def test_parse_duration_rejects_non_durations(value: object) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(value)


def test_parse_duration_error_names_the_offending_text() -> None:
    with pytest.raises(ValueError, match="'ten minutes'"):
        parse_duration("ten minutes")


@pytest.mark.parametrize("value", ["nan", "inf", "infinity"])
def test_parse_duration_rejects_nan_and_infinity(value: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0.0s"),
        (2.345, "2.3s"),
        (12.4, "12s"),
        (59, "59s"),
        (60, "1m00s"),
        (90, "1m30s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (5415, "1h30m"),
        (86400, "24h00m"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_format_duration_just_under_a_minute_does_not_print_60s() -> None:
    assert format_duration(59.7) != "60s"
