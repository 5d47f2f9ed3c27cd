"""Process hardening every orch process applies at start, and private folders and files for its state.

- Non-dumpable (PR_SET_DUMPABLE 0): another process of the same user cannot read this one's memory or
  `/proc/<pid>/environ`, where the database URL, the broker URL and every agent type's key live.
- umask 077: what orch writes (store, logs, the embedded Redis' files) is its user's alone. Agents are given the
  umask the first orch process started with (`agent_umask`; ORCH_AGENT_UMASK carries it to the worker `orch run`
  starts, and may set it), so the files they write in a workdir are as the operator expects.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from pathlib import Path

_PR_SET_DUMPABLE = 4
PRIVATE_UMASK = 0o077

_agent_umask: int | None = None


AGENT_UMASK_VARIABLE = "ORCH_AGENT_UMASK"


def harden_process() -> None:
    """Non-dumpable, umask 077; remembers the umask it replaced for agents. Idempotent."""
    global _agent_umask
    previous = os.umask(PRIVATE_UMASK)
    if _agent_umask is None:
        inherited = os.environ.get(AGENT_UMASK_VARIABLE, "")
        try:
            _agent_umask = int(inherited, 8) & 0o777 if inherited else previous
        except ValueError:
            _agent_umask = previous
        os.environ[AGENT_UMASK_VARIABLE] = f"{_agent_umask:03o}"  # for the processes this one starts
    set_dumpable(False)


def agent_umask() -> int:
    """The umask this process started with (before `harden_process`), for the agents it starts."""
    if _agent_umask is not None:
        return _agent_umask
    current = os.umask(0)
    os.umask(current)
    return current


def set_dumpable(dumpable: bool) -> bool:
    """prctl(PR_SET_DUMPABLE); False where the call is not available."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_DUMPABLE, 1 if dumpable else 0, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def is_dumpable() -> bool:
    _pr_get_dumpable = 3
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_pr_get_dumpable, 0, 0, 0, 0))
    except (OSError, AttributeError):
        return True


def private_dir(path: Path) -> Path:
    """Create `path` (and its parents) if missing; the folder itself is made 0700 when this user owns it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(OSError):
        if path.stat().st_uid == os.getuid():
            path.chmod(0o700)
    return path


def private_file(path: Path) -> None:
    """Make an existing file 0600 when this user owns it (a store or log written before orch set its umask)."""
    with contextlib.suppress(OSError):
        if path.stat().st_uid == os.getuid() and path.stat().st_mode & 0o077:
            path.chmod(0o600)
