"""The liveness file (ORCH_LIVENESS_FILE) a probe reads the age of: workers (workers/liveness.py) and the beat
(beat/scheduler.py) touch it from their main loop, so one whose loop hangs lets it grow old."""

from __future__ import annotations

from pathlib import Path


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
