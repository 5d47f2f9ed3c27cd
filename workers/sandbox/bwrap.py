"""What an agent sees under bubblewrap: the layout (the read-only system, its workdir and per-attempt folder
read-write, what is hidden and what is shown again) and the bwrap options that build it."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from orch.services.isolation import namespace_options
from workers.sandbox.workdir import WorkerSecrets

# /run holds the host's service sockets (PostgreSQL's, Docker's…); only the resolver's files are shown again.
RESOLVER_FOLDERS = ("/run/systemd/resolve", "/run/resolvconf")


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


def layout_for(
    workdir: Path,
    scratch: Path | None,
    kept: WorkerSecrets,
    network: str,
    programs: Sequence[Path],
    workdir_fd: int | None = None,
    also_writable: Sequence[Path] = (),
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
        writable=(workdir, *([scratch] if scratch is not None else []), *(path.resolve() for path in also_writable)),
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
