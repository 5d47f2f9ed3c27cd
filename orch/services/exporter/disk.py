"""The disk this host's worktrees take, for `orch_worktree_disk_bytes`: measured in a thread of its own, at most
every `every` seconds, so a scrape never walks a large worktree tree and never waits for one that is walked."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from orch.log import get_logger
from orch.redaction import error_line
from orch.services.git.worktrees import disk_usage

log = get_logger(__name__)

# Walking a tree of many worktrees costs seconds of I/O; a minute-old figure is fresh enough for a disk panel.
DISK_MEASURE_SECONDS = 60.0


@dataclass(frozen=True)
class DiskFigure:
    bytes: int
    measured_at: float  # time.monotonic() when the walk ended


class DiskMeter:
    """The last measurement of `root` (0 bytes while it does not exist); each call of `latest` starts a new
    walk in the background once the last one is older than `every` seconds, and returns what is known now."""

    def __init__(self, root: Path, every: float = DISK_MEASURE_SECONDS, measure: Callable[[Path], int] = disk_usage):
        self.root = root
        self.every = every
        self._measure = measure
        self._guard = threading.Lock()
        self._figure: DiskFigure | None = None
        self._walking = False

    def latest(self) -> DiskFigure | None:
        """The last figure (None before the first walk ended); starts a walk when it is due."""
        with self._guard:
            figure = self._figure
            due = figure is None or time.monotonic() - figure.measured_at >= self.every
            if due and not self._walking:
                self._walking = True
                threading.Thread(target=self._walk, name="orch-exporter-disk", daemon=True).start()
        return figure

    def _walk(self) -> None:
        try:
            used = self._measure(self.root) if self.root.is_dir() else 0
        except Exception as exc:  # a root that cannot be read: the metric stays as it was, the scrape is served
            log.warning("metrics: could not measure the worktrees' disk", root=str(self.root), error=error_line(exc))
            used = None
        with self._guard:
            if used is not None:
                self._figure = DiskFigure(used, time.monotonic())
            self._walking = False
