"""How an agent process starts: the environment it is granted, the user it runs as, and the sandbox around it.

An agent may have been turned by what it reads (a README, an issue, a dependency), so it gets only what it is
granted:
- its environment is an allow-list (`agent_environment`): PATH, a per-attempt HOME and TMPDIR, the locale, the
  attempt's ids, its agent type's `secrets` and `env` variables; nothing else of the worker's;
- where the worker runs as root, it runs as an unprivileged user (ORCH_AGENT_USER, default `orch-agent`);
- under bubblewrap (ORCH_SANDBOX=bwrap, or auto where it works) it sees the system read-only, its workdir and its
  per-attempt folder read-write, a private /tmp and /run, new pid/ipc/uts namespaces (the worker and other agents
  are invisible), and nothing of ORCH_HOME, the store, orch's configuration or the worker user's home folder
  (but for the programs it needs from there); with `network: none` it has no network at all.

Nothing here reads the store: the runner hands in the attempt's context and the worker's settings.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from orch.errors import OrchError
from orch.log import get_logger
from orch.services.embedded import die_with_parent
from orch.services.hardening import agent_umask
from orch.services.isolation import (
    SAFE_PATH,
    AgentUser,
    Isolation,
    IsolationUnavailable,
    absolute_path,
    current_isolation,
    drop_privileges_to,
    namespace_options,
)
from orch.settings import Settings
from workers.supervision import register_group, spawning

log = get_logger(__name__)

LOCALE_VARIABLES = (
    "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_NUMERIC", "LC_TIME", "LC_COLLATE", "LC_MONETARY", "LC_MESSAGES",
    "LC_PAPER", "LC_NAME", "LC_ADDRESS", "LC_TELEPHONE", "LC_MEASUREMENT", "LC_IDENTIFICATION", "TZ",
)  # fmt: skip
# /run holds the host's service sockets (PostgreSQL's, Docker's…); only the resolver's files are shown again.
RESOLVER_FOLDERS = ("/run/systemd/resolve", "/run/resolvconf")
_PROBE_TIMEOUT = 20.0
# What a workdir may never be or hold: the kernel's and the host's own folders, which the sandbox replaces.
SYSTEM_FOLDERS = tuple(Path(folder) for folder in ("/proc", "/dev", "/sys", "/run", "/tmp"))
_WORKDIR_PROBE = ["test", "-d", ".", "-a", "-w", ".", "-a", "-x", "."]  # as the agent user, in its sandbox


class WorkdirNotWritable(OrchError):
    """The agent's user cannot write the attempt's workdir."""


class UnsafeWorkdir(OrchError):
    """The workdir holds what agents must never reach (the store, ORCH_HOME)."""


# --- what an agent is granted ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    """What one agent process may have: its ids, variables, per-attempt folders, network."""

    attempt_ids: Mapping[str, str]
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    passthrough: tuple[str, ...] = ()  # names of the worker's variables the agent type's `env:` grants
    extra: Mapping[str, str] = field(default_factory=dict)  # what the executor adds (the python executor's files)
    home: Path | None = None
    tmp: Path | None = None
    network: Literal["host", "none"] = "host"


def agent_environment(worker_env: Mapping[str, str], grant: Grant) -> dict[str, str]:
    """The agent's whole environment: an allow-list, never the worker's environment less a deny-list."""
    env = {"PATH": absolute_path(worker_env.get("PATH"))}
    env.update({name: worker_env[name] for name in LOCALE_VARIABLES if name in worker_env})
    env.update({name: worker_env[name] for name in grant.passthrough if name in worker_env})
    if grant.home is not None:
        env["HOME"] = str(grant.home)
    if grant.tmp is not None:
        env["TMPDIR"] = str(grant.tmp)
    env.update(grant.secrets)
    env.update(grant.extra)
    env.update(grant.attempt_ids)
    return env


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


# --- the sandbox's filesystem ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """What an agent sees under bubblewrap, besides the read-only system."""

    workdir: Path
    writable: tuple[Path, ...]  # the workdir, the attempt's own folder
    readable: tuple[Path, ...] = ()  # programs it needs from folders that are otherwise hidden (a venv, the CLI)
    hidden: tuple[Path, ...] = ()  # folders it must not see: ORCH_HOME, orch's configuration, the worker's home
    hidden_files: tuple[Path, ...] = ()  # files it must not see (an env file, a store file outside ORCH_HOME)
    network: bool = True
    workdir_fd: int | None = None  # the workdir as opened and checked: bound by its descriptor, not its path again


_Mount = tuple[str, Path]  # ("tmpfs" | "ro" | "rw" | "nofile", path)


def bwrap_arguments(layout: Layout, privileged: bool | None = None) -> list[str]:
    """bubblewrap's options for `layout` (everything before `--`), for bwrap run by root (`privileged`, by default
    whether this process is) or by another user. Mounts go shallowest first, so a folder hidden inside the workdir
    (ORCH_HOME beside a plan) is hidden after the workdir is bound, and a program shown from inside a hidden folder
    after that folder is hidden."""
    privileged = os.geteuid() == 0 if privileged is None else privileged
    args = [*namespace_options(privileged), "--die-with-parent", "--new-session"]
    if not layout.network:
        args.append("--unshare-net")
    args += ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    args += ["--perms", "1777", "--tmpfs", "/tmp", "--perms", "0755", "--tmpfs", "/run"]
    mounts: list[_Mount] = [("tmpfs", Path("/tmp")), ("tmpfs", Path("/run"))]
    planned: list[_Mount] = [("ro", Path(folder)) for folder in RESOLVER_FOLDERS if Path(folder).is_dir()]
    planned += [("tmpfs", path) for path in layout.hidden]
    planned += [("ro", path) for path in layout.readable]
    planned += [("rw", path) for path in layout.writable]
    planned += [("nofile", path) for path in layout.hidden_files]
    order = {"tmpfs": 0, "ro": 1, "rw": 2, "nofile": 3}
    for kind, path in sorted(planned, key=lambda mount: (len(mount[1].parts), order[mount[0]], str(mount[1]))):
        covering = _covering(mounts, path)
        if kind in ("tmpfs", "nofile") and covering in ("tmpfs", "nofile"):
            continue  # already out of sight
        if kind == "ro" and covering == "ro":
            continue  # already visible read-only (inside the workdir it is bound again, read-only on top)
        if covering == "tmpfs":
            args += _parent_folders(mounts, path)
        mounts.append((kind, path))
        if kind == "tmpfs":
            args += ["--perms", "0755", "--tmpfs", str(path)]
        elif kind == "nofile":
            args += ["--ro-bind", "/dev/null", str(path)]
        elif kind == "rw" and path == layout.workdir and layout.workdir_fd is not None:
            args += ["--bind-fd", str(layout.workdir_fd), str(path)]
        else:
            args += ["--bind" if kind == "rw" else "--ro-bind", str(path), str(path)]
    args += ["--chdir", str(layout.workdir)]
    return args


def _covering(mounts: Sequence[_Mount], path: Path) -> str:
    """The kind of the deepest mount so far that holds `path` ("ro" for the read-only root); of two on the same
    folder, the later (it lies on top)."""
    best, depth = "ro", 0
    for kind, mounted in mounts:
        if (path == mounted or mounted in path.parents) and len(mounted.parts) >= depth:
            best, depth = kind, len(mounted.parts)
    return best


def _parent_folders(mounts: list[_Mount], path: Path) -> list[str]:
    """Folders bwrap must create inside a tmpfs to reach `path`, made 0755 (bwrap's own default is 0700, which an
    agent's user could not walk through)."""
    args: list[str] = []
    for parent in reversed(path.parents):
        if _covering(mounts, parent) == "tmpfs" and not any(parent == mounted for _kind, mounted in mounts):
            args += ["--perms", "0755", "--dir", str(parent)]
            mounts.append(("tmpfs", parent))  # a folder of the tmpfs: what it holds is still out of sight
    return args


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
    if workdir == kept.home or kept.home in workdir.parents:
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


def layout_for(
    workdir: Path,
    scratch: Path | None,
    kept: WorkerSecrets,
    network: str,
    programs: Sequence[Path],
    workdir_fd: int | None = None,
) -> Layout:
    workdir = workdir.resolve()
    hidden = [kept.home, kept.config_dir]
    if kept.user_home is not None:
        hidden.append(kept.user_home)
    files = [path for path in (kept.env_file, kept.store_file) if path is not None and path.exists()]
    if kept.store_file is not None:  # its journals too, where they exist now (ORCH_HOME hides all of them)
        files += [Path(f"{kept.store_file}{suffix}") for suffix in ("-wal", "-shm", "-journal")]
    return Layout(
        workdir=workdir,
        writable=(workdir, *([scratch] if scratch is not None else [])),
        readable=tuple(dict.fromkeys(path.resolve() for path in programs if path.exists())),
        hidden=tuple(dict.fromkeys(path for path in hidden if path.exists())),  # nothing there, nothing to hide
        hidden_files=tuple(dict.fromkeys(path for path in files if path.exists())),
        network=network != "none",
        workdir_fd=workdir_fd,
    )


def runtime_folders() -> list[Path]:
    """What an agent may need to read from folders a sandbox hides: this Python (the python executor runs it) and
    orch's own packages (workers.python_entry), not the checkout around them."""
    import orch
    import workers

    packages = [Path(orch.__file__).resolve().parent, Path(workers.__file__).resolve().parent]
    return [Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), *packages]


# --- starting an agent ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """One agent process to start: its command, workdir, grant, and what else it must be able to read."""

    argv: list[str]  # a list, not any Sequence: a str would pass the type check and run letter by letter
    workdir: Path
    grant: Grant
    scratch: Path | None = None
    programs: tuple[Path, ...] = ()


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
        programs = [*runtime_folders(), *kept.readable, *launch.programs]
        layout = layout_for(workdir, launch.scratch, kept, launch.grant.network, programs, workdir_fd)
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


# --- the per-attempt folder -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scratch:
    """An attempt's own folder, outside its workdir: the agent's HOME and TMPDIR, and files orch hands it."""

    root: Path

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"


def give_to_agent(path: Path, settings: Settings) -> None:
    """Make a file or folder orch wrote for an agent its agent user's (when agents run as another user). Never
    through a link: orch writes these in a folder of its own, which no agent can write."""
    user = current_isolation(settings).user
    if user is not None:
        os.chown(path, user.uid, user.gid, follow_symlinks=False)


@contextlib.contextmanager
def attempt_scratch(settings: Settings) -> Iterator[Scratch]:
    """A fresh folder for one attempt, removed afterwards with all the agent left. The folder is the worker's (0711:
    the agent can pass, not write it), so what orch puts there for the agent (the python executor's files) is safe
    from it; its `home` and `tmp` are the agent user's."""
    root = Path(tempfile.mkdtemp(prefix="orch-attempt-"))
    scratch = Scratch(root)
    try:
        root.chmod(0o711)
        scratch.home.mkdir(mode=0o700)
        scratch.tmp.mkdir(mode=0o700)
        for path in (scratch.home, scratch.tmp):
            give_to_agent(path, settings)
        yield scratch
    finally:
        shutil.rmtree(root, ignore_errors=True)
