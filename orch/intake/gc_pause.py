"""Building a large plan allocates hundreds of thousands of objects that all stay alive; each allocation burst
triggers the cyclic garbage collector, whose older generations then walk every one of them again (a 100,000-task
plan's validation spent half its time there). Nothing built there is cyclic garbage, so the collector waits."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """No automatic cyclic collection inside the block (reference counting still frees everything); nested
    blocks leave it to the outermost."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
