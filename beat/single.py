"""One beat per SQLite store: SQLite allows a single dispatcher, so a second beat refuses to start.

(PostgreSQL needs no such guard: dispatchers serialise on an advisory lock, so several beats are safe.)"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from orch.errors import ConfigInvalid


def hold_single_beat_lock(database_url: str) -> IO[str] | None:
    """Take the store's beat lock for this process's lifetime (the returned file holds it); raise ConfigInvalid
    naming the holder if another beat has it. None for a server database."""
    if not database_url.startswith("sqlite:///"):
        return None
    lock_path = Path(database_url.removeprefix("sqlite:///") + ".beat.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = lock_path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise ConfigInvalid(
            f"another beat (pid {holder}) already runs against {database_url}: SQLite allows one dispatcher; "
            f"stop it, or use PostgreSQL (ORCH_DATABASE_URL) to run several beats"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle
