"""Starting an agent: in its own session and process group (registered for supervision), with its granted
environment, as the agent's user, inside bubblewrap where the isolation in force says so, in the workdir as
checked; and asking the agent's user, in its sandbox, whether it can write the workdir."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from orch.hardening import agent_umask
from orch.log import get_logger
from orch.services.isolation import (
    SAFE_PATH,
    AgentUser,
    Isolation,
    IsolationUnavailable,
    current_isolation,
    drop_privileges_to,
)
from orch.services.processes import die_with_parent
from orch.settings import Settings
from workers.sandbox.bwrap import bwrap_arguments, layout_for, runtime_folders
from workers.sandbox.grant import Grant, agent_environment
from workers.sandbox.workdir import WorkdirNotWritable, WorkerSecrets, check_workdir, open_workdir
from workers.supervision import register_group, spawning

log = get_logger(__name__)

_PROBE_TIMEOUT = 20.0
_WORKDIR_PROBE = ["test", "-d", ".", "-a", "-w", ".", "-a", "-x", "."]  # as the agent user, in its sandbox


# --- the isolation in force on this host ----------------------------------------------------------------------


def announce_isolation(settings: Settings) -> Isolation:
    """At a worker's start: log the isolation in force, warn when agents are not sandboxed; raise when the
    isolation asked for cannot be had (the worker must not run agents unsandboxed by surprise)."""
    isolation = current_isolation(settings)
    if isolation.problem is not None:
        raise IsolationUnavailable(isolation.problem)
    if isolation.warning is not None:
        log.warning(isolation.warning)
    log.info("agent isolation", isolation=isolation.describe())
    return isolation


# --- starting an agent ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """One agent process to start: its command, workdir, grant, and what else it must be able to read."""

    argv: list[str]  # a list, not any Sequence: a str would pass the type check and run letter by letter
    workdir: Path
    grant: Grant
    scratch: Path | None = None
    programs: tuple[Path, ...] = ()
    # A worktree attempt's git dirs: the repository's cache (read-only: objects, refs) and the worktree's own
    # admin folder (HEAD, index: its git status and diff write there), where ORCH_HOME would hide them.
    git_readable: tuple[Path, ...] = ()
    git_writable: tuple[Path, ...] = ()


def start_agent(
    launch: Launch,
    settings: Settings,
    *,
    stdin: IO[bytes] | int | None = subprocess.DEVNULL,
    stdout: IO[bytes] | int | None = subprocess.PIPE,
    stderr: IO[bytes] | int | None = subprocess.PIPE,
) -> subprocess.Popen[bytes]:
    """Start the agent in its own session (its process group is the attempt's, registered for supervision), isolated
    as configured; it dies with the process that started it. Raises IsolationUnavailable / UnsafeWorkdir /
    WorkdirNotWritable."""
    isolation = current_isolation(settings)
    if isolation.problem is not None:
        raise IsolationUnavailable(isolation.problem)
    kept = WorkerSecrets.of(settings)
    workdir = launch.workdir.resolve()
    fd = open_workdir(workdir)
    try:
        sandboxed = isolation.sandbox == "bwrap"
        check_workdir(workdir, kept, settings.workdir_root_paths, sandboxed, isolation.user is not None)
        if isolation.user is not None:
            ensure_writable(workdir, fd, isolation, kept)
        argv, as_user = _isolated(launch, workdir, fd, isolation, kept)
        with spawning():
            return _spawn(argv, fd, as_user, launch.grant, sandboxed, stdin, stdout, stderr)
    finally:
        os.close(fd)


def _spawn(
    argv: list[str],
    workdir_fd: int,
    as_user: AgentUser | None,
    grant: Grant,
    sandboxed: bool,
    stdin: IO[bytes] | int | None,
    stdout: IO[bytes] | int | None,
    stderr: IO[bytes] | int | None,
) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        argv,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=agent_environment(os.environ, grant),
        start_new_session=True,  # its own process group: pgid == pid
        preexec_fn=_child_setup(workdir_fd, sandboxed),
        pass_fds=(workdir_fd,) if sandboxed else (),
        umask=agent_umask(),
        user=as_user.uid if as_user else None,
        group=as_user.gid if as_user else None,
        extra_groups=[] if as_user else None,
    )
    register_group(process.pid, sandboxed=sandboxed)
    return process


def _child_setup(workdir_fd: int, sandboxed: bool) -> Callable[[], None]:
    """In the child, before exec: die with the worker (SIGKILL), and start in the checked workdir (bubblewrap
    starts in / and binds the workdir by its descriptor; without it, the agent starts in it by descriptor)."""
    die = die_with_parent(signal.SIGKILL)

    def setup() -> None:
        die()
        if sandboxed:
            os.chdir("/")
        else:
            os.fchdir(workdir_fd)

    return setup


def _isolated(
    launch: Launch, workdir: Path, workdir_fd: int, isolation: Isolation, kept: WorkerSecrets
) -> tuple[list[str], AgentUser | None]:
    """The command line and user to start `launch` with: inside bubblewrap (which drops to the agent's user
    itself), or as the agent's user directly."""
    if isolation.sandbox == "bwrap" and isolation.bwrap is not None:
        programs = [*runtime_folders(), *kept.readable, *launch.programs, *launch.git_readable]
        layout = layout_for(
            workdir, launch.scratch, kept, launch.grant.network, programs, workdir_fd, launch.git_writable
        )
        drop = drop_privileges_to(isolation.user, isolation.setpriv)
        return [isolation.bwrap, *bwrap_arguments(layout), "--", *drop, *launch.argv], None
    return list(launch.argv), isolation.user


_writable_workdirs: set[tuple[str, int]] = set()


def ensure_writable(workdir: Path, workdir_fd: int, isolation: Isolation, kept: WorkerSecrets) -> None:
    """Whether the agent's user can write `workdir`, asked of that user in the agent's own sandbox (permissions,
    ACLs and the sandbox's view all count); a yes is remembered for the process, a no raises WorkdirNotWritable."""
    user = isolation.user
    assert user is not None
    key = (str(workdir), user.uid)
    if key in _writable_workdirs:
        return
    probe = Launch(list(_WORKDIR_PROBE), workdir, Grant(attempt_ids={}, network="none"))
    argv, as_user = _isolated(probe, workdir, workdir_fd, isolation, kept)
    sandboxed = isolation.sandbox == "bwrap"
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_PROBE_TIMEOUT,
            env={"PATH": SAFE_PATH},
            preexec_fn=_child_setup(workdir_fd, sandboxed),
            pass_fds=(workdir_fd,) if sandboxed else (),
            user=as_user.uid if as_user else None,
            group=as_user.gid if as_user else None,
            extra_groups=[] if as_user else None,
        )
    except (OSError, subprocess.TimeoutExpired, subprocess.SubprocessError) as exc:
        raise WorkdirNotWritable(f"could not check workdir {workdir} as user {user.name}: {exc}") from None
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip()
        if said:  # the sandbox itself failed, not the test
            raise WorkdirNotWritable(f"could not check workdir {workdir} as user {user.name}: {said[-300:]}")
        raise WorkdirNotWritable(
            f"agents run as user {user.name} (uid {user.uid}) because the worker runs as root, and {user.name} cannot "
            f"write workdir {workdir}: give it access (`chown -R {user.name} {workdir}`, or `setfacl -R -m "
            f"u:{user.name}:rwX -m d:u:{user.name}:rwX {workdir}`), run the worker as a non-root user, or set "
            f"ORCH_AGENT_USER"
        )
    _writable_workdirs.add(key)
