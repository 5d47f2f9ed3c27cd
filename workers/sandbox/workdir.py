"""Where an agent may work: what the worker keeps from agents (ORCH_HOME, its configuration, the env file, the
store, its user's home), the rules a workdir must pass, and the workdir opened as checked, by descriptor."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from orch.errors import OrchError
from orch.settings import Settings

# What a workdir may never be or hold: the kernel's and the host's own folders, which the sandbox replaces.
SYSTEM_FOLDERS = tuple(Path(folder) for folder in ("/proc", "/dev", "/sys", "/run", "/tmp"))


class WorkdirNotWritable(OrchError):
    """The agent's user cannot write the attempt's workdir."""


class UnsafeWorkdir(OrchError):
    """The workdir holds what agents must never reach (the store, ORCH_HOME)."""


# --- what the worker keeps from agents ------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSecrets:
    """The worker's own places no agent may see."""

    home: Path  # ORCH_HOME
    config_dir: Path
    store_file: Path | None  # an SQLite store
    env_file: Path | None
    user_home: Path | None  # the worker user's home folder
    readable: tuple[Path, ...] = ()  # what the operator lets agents read where the sandbox would hide it
    worktree_root: Path | None = None  # where attempts' worktrees are made: inside ORCH_HOME by default

    @classmethod
    def of(cls, settings: Settings) -> WorkerSecrets:
        from sqlalchemy.engine import make_url

        from orch.settings import ENV_FILE_VARIABLE, operator_env_file

        store: Path | None = None
        url = make_url(settings.resolved_database_url)
        if url.get_backend_name() == "sqlite" and url.database and url.database != ":memory:":
            store = Path(url.database).resolve()
        env_file = os.environ.get(ENV_FILE_VARIABLE)
        with contextlib.suppress(OrchError):
            found = operator_env_file()
            env_file = str(found) if found else env_file
        user_home = Path(os.path.expanduser("~")).resolve()
        return cls(
            home=settings.home.resolve(),
            config_dir=settings.config_dir.resolve(),
            store_file=store,
            env_file=Path(env_file).resolve() if env_file else None,
            user_home=None if user_home == Path("/") else user_home,
            readable=tuple(settings.sandbox_read_paths),
            worktree_root=settings.resolved_worktree_root,
        )


def check_workdir(
    workdir: Path, kept: WorkerSecrets, roots: Sequence[Path] = (), sandboxed: bool = True, other_user: bool = False
) -> None:
    """Whether agents may work in `workdir` (resolved): inside this worker's ORCH_WORKDIR_ROOTS where it names
    any; never `/`, a system folder the sandbox replaces, the worker user's home or a folder holding it, nor
    anything inside ORCH_HOME; and what must stay hidden (ORCH_HOME, orch's configuration, the env file, the store)
    may lie in it only where the agent cannot move it: as a direct child, hidden by the sandbox (its mountpoint
    cannot be renamed, but a folder holding it could be, with it); without a sandbox, not at all when the agent is
    another user than the worker (it could move it, and the worker would write through what it left in its place).
    """
    if roots and not any(workdir == root or root in workdir.parents for root in roots):
        shown = ", ".join(str(root) for root in roots)
        raise UnsafeWorkdir(f"workdir {workdir} is outside this worker's ORCH_WORKDIR_ROOTS ({shown})")
    for folder in (*SYSTEM_FOLDERS, *([kept.user_home] if kept.user_home else [])):
        if workdir == folder or workdir in folder.parents:
            raise UnsafeWorkdir(f"workdir {workdir} is or holds {folder}, which agents are kept from")
    in_worktrees = kept.worktree_root is not None and kept.worktree_root in workdir.parents
    if (workdir == kept.home or kept.home in workdir.parents) and not in_worktrees:
        raise UnsafeWorkdir(f"workdir {workdir} is inside ORCH_HOME ({kept.home}), which agents must never reach")
    store = kept.store_file
    if store is not None and workdir in store.parents and kept.home not in store.parents:
        raise UnsafeWorkdir(
            f"the store {store} lies inside workdir {workdir}, where agents could write it; move the store "
            f"(ORCH_DATABASE_URL) or ORCH_HOME out of the workdir"
        )
    for name, path in (
        ("ORCH_HOME", kept.home),
        ("orch's configuration", kept.config_dir),
        ("the env file", kept.env_file),
    ):
        if path is None or workdir not in path.parents:
            continue
        if other_user and not sandboxed:
            raise UnsafeWorkdir(
                f"{name} ({path}) lies inside workdir {workdir}, and agents run without a sandbox as another user, "
                f"who could move it; set ORCH_HOME (or the folder) outside the workdir"
            )
        if sandboxed and path.parent != workdir:
            raise UnsafeWorkdir(
                f"{name} ({path}) lies in a folder of workdir {workdir}, which an agent could move with it; keep it "
                f"directly in the workdir (as .orch/ beside a plan) or outside it"
            )


def open_workdir(workdir: Path) -> int:
    """The resolved workdir opened without following any link, component by component (O_PATH|O_NOFOLLOW): the
    folder that was checked is the one bound, whatever an agent renames or links meanwhile."""
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY)
    try:
        for part in workdir.parts[1:]:
            try:
                child = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as exc:
                raise UnsafeWorkdir(f"workdir {workdir} changed while it was checked: {exc.strerror}") from None
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd
