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
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Literal

from orch.embedded import die_with_parent
from orch.errors import OrchError
from orch.hardening import agent_umask
from orch.isolation import (
    SAFE_PATH,
    AgentUser,
    Isolation,
    IsolationUnavailable,
    current_isolation,
    drop_privileges_to,
    namespace_options,
    proc_options,
)
from orch.log import get_logger
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
    env = {"PATH": worker_env.get("PATH") or SAFE_PATH}
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


_Mount = tuple[str, Path]  # ("tmpfs" | "ro" | "rw" | "nofile", path)


def bwrap_arguments(layout: Layout, own_proc: bool = True, privileged: bool | None = None) -> list[str]:
    """bubblewrap's options for `layout` (everything before `--`), for bwrap run by root (`privileged`, by default
    whether this process is) or by another user. Mounts go shallowest first, so a folder hidden inside the workdir
    (ORCH_HOME beside a plan) is hidden after the workdir is bound, and a program shown from inside a hidden folder
    after that folder is hidden."""
    privileged = os.geteuid() == 0 if privileged is None else privileged
    args = [*namespace_options(privileged), "--die-with-parent", "--new-session"]
    if not layout.network:
        args.append("--unshare-net")
    args += ["--ro-bind", "/", "/", "--dev", "/dev", *proc_options(own_proc)]
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
        if kind == "ro" and covering != "tmpfs":
            continue  # already visible, read-only or (inside the workdir) as the workdir is
        if covering == "tmpfs":
            args += _parent_folders(mounts, path)
        mounts.append((kind, path))
        if kind == "tmpfs":
            args += ["--perms", "0755", "--tmpfs", str(path)]
        elif kind == "nofile":
            args += ["--ro-bind", "/dev/null", str(path)]
        else:
            args += ["--bind" if kind == "rw" else "--ro-bind", str(path), str(path)]
    args += ["--chdir", str(layout.workdir)]
    return args


def _covering(mounts: Sequence[_Mount], path: Path) -> str:
    """The kind of the deepest mount so far that holds `path` ("ro" for the read-only root)."""
    best, depth = "ro", 0
    for kind, mounted in mounts:
        if (path == mounted or mounted in path.parents) and len(mounted.parts) > depth:
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
        )


def check_workdir(workdir: Path, kept: WorkerSecrets, roots: Sequence[Path] = ()) -> None:
    """An attempt's workdir may hold ORCH_HOME (it is hidden), but must not be inside it, nor hold the store; and
    where this worker names allowed roots (ORCH_WORKDIR_ROOTS), it must lie inside one."""
    workdir = workdir.resolve()
    if roots and not any(workdir == root or root in workdir.parents for root in roots):
        shown = ", ".join(str(root) for root in roots)
        raise UnsafeWorkdir(f"workdir {workdir} is outside this worker's ORCH_WORKDIR_ROOTS ({shown})")
    if workdir == kept.home or kept.home in workdir.parents:
        raise UnsafeWorkdir(f"workdir {workdir} is inside ORCH_HOME ({kept.home}), which agents must never reach")
    store = kept.store_file
    if store is not None and workdir in store.parents and kept.home not in store.parents:
        raise UnsafeWorkdir(
            f"the store {store} lies inside workdir {workdir}, where agents could write it; move the store "
            f"(ORCH_DATABASE_URL) or ORCH_HOME out of the workdir"
        )


def layout_for(
    workdir: Path, scratch: Path | None, kept: WorkerSecrets, network: str, programs: Sequence[Path]
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
    )


def runtime_folders() -> list[Path]:
    """What an agent may need to read from folders a sandbox hides: this Python (the python executor runs it) and
    orch's own code (workers.python_entry)."""
    code_root = Path(__file__).resolve().parent.parent
    return [Path(sys.prefix), Path(sys.base_prefix), Path(sys.exec_prefix), code_root]


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
    check_workdir(launch.workdir, kept, settings.workdir_root_paths)
    if isolation.user is not None:
        ensure_writable(launch.workdir, isolation, kept)
    argv, cwd, as_user = _isolated(launch, isolation, kept)
    with spawning():
        return _spawn(argv, cwd, as_user, launch.grant, isolation.sandbox == "bwrap", stdin, stdout, stderr)


def _spawn(
    argv: list[str],
    cwd: Path,
    as_user: AgentUser | None,
    grant: Grant,
    sandboxed: bool,
    stdin: IO[bytes] | int | None,
    stdout: IO[bytes] | int | None,
    stderr: IO[bytes] | int | None,
) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        argv,
        cwd=cwd,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        env=agent_environment(os.environ, grant),
        start_new_session=True,  # its own process group: pgid == pid
        preexec_fn=die_with_parent(signal.SIGKILL),  # a SIGKILLed worker takes its agent along
        umask=agent_umask(),
        user=as_user.uid if as_user else None,
        group=as_user.gid if as_user else None,
        extra_groups=[] if as_user else None,
    )
    register_group(process.pid, sandboxed=sandboxed)
    return process


def _isolated(launch: Launch, isolation: Isolation, kept: WorkerSecrets) -> tuple[list[str], Path, AgentUser | None]:
    """The command line, folder and user to start `launch` with: inside bubblewrap (which starts in / and drops to
    the agent's user itself), or as the agent's user directly."""
    if isolation.sandbox == "bwrap" and isolation.bwrap is not None:
        programs = [*runtime_folders(), *launch.programs]
        layout = layout_for(launch.workdir, launch.scratch, kept, launch.grant.network, programs)
        options = bwrap_arguments(layout, isolation.own_proc)
        sandboxed = [isolation.bwrap, *options, "--", *drop_privileges_to(isolation.user)]
        return [*sandboxed, *launch.argv], Path("/"), None
    return list(launch.argv), launch.workdir, isolation.user


_writable_workdirs: set[tuple[str, int]] = set()


def ensure_writable(workdir: Path, isolation: Isolation, kept: WorkerSecrets) -> None:
    """Whether the agent's user can write `workdir`, asked of that user in the agent's own sandbox (permissions,
    ACLs and the sandbox's view all count); a yes is remembered for the process, a no raises WorkdirNotWritable."""
    user = isolation.user
    assert user is not None
    key = (str(workdir.resolve()), user.uid)
    if key in _writable_workdirs:
        return
    probe = Launch(_WORKDIR_PROBE, workdir, Grant(attempt_ids={}, network="none"))
    argv, cwd, as_user = _isolated(probe, isolation, kept)
    try:
        done = subprocess.run(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_PROBE_TIMEOUT,
            env={"PATH": SAFE_PATH},
            user=as_user.uid if as_user else None,
            group=as_user.gid if as_user else None,
            extra_groups=[] if as_user else None,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
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
    """Make a file or folder orch wrote for an agent its agent user's (when agents run as another user)."""
    user = current_isolation(settings).user
    if user is not None:
        os.chown(path, user.uid, user.gid)


@contextlib.contextmanager
def attempt_scratch(settings: Settings) -> Iterator[Scratch]:
    """A fresh folder for one attempt (0700, its agent user's), removed afterwards with all the agent left."""
    root = Path(tempfile.mkdtemp(prefix="orch-attempt-"))
    scratch = Scratch(root)
    try:
        scratch.home.mkdir(mode=0o700)
        scratch.tmp.mkdir(mode=0o700)
        for path in (root, scratch.home, scratch.tmp):
            give_to_agent(path, settings)
        yield scratch
    finally:
        shutil.rmtree(root, ignore_errors=True)
