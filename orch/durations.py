"""Durations as users write them: "90s", "10m", "2h", "1h30m", or a number of seconds; and the longest a task may
run."""

from __future__ import annotations

import math
import re

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd])")
_WHOLE = re.compile(r"^\s*(?:\d+(?:\.\d+)?\s*[smhd]\s*)+$")
_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

MAX_TIMEOUT_SECONDS = 86_400  # the longest `timeout:` a task may have (a plan's validation holds it to this)
# A message's own hard time limit is its task's timeout, the kill grace and this margin (kill the group, record why).
TIME_LIMIT_MARGIN = 60.0


def parse_duration(value: object) -> float:
    """Seconds for `value`; raises ValueError with the offending text otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if _NUMBER.match(text):
            return float(text)
        if _WHOLE.match(text):
            return sum(float(n) * _UNIT_SECONDS[u] for n, u in _PART.findall(text))
    raise ValueError(f"not a duration: {value!r} (use e.g. 90s, 10m, 2h or a number of seconds)")


def format_duration(seconds: float) -> str:
    if round(seconds, 1) < 10:
        return f"{seconds:.1f}s"
    if round(seconds) < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
