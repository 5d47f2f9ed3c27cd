"""The isolation a worker gives the agents it starts, as this host allows it: the user they run as and whether
bubblewrap can sandbox them. Decided (and probed) here, in orch, so that `orch check` can report it for its host;
workers.sandbox builds each agent's sandbox from it."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from typing import Literal

from orch.errors import OrchError
from orch.settings import Settings

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_PROBE_TIMEOUT = 20.0


class IsolationUnavailable(OrchError):
    """The isolation this worker must give agents cannot be had here (no bubblewrap, no agent user…)."""


@dataclass(frozen=True)
class AgentUser:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class Isolation:
    """How this worker isolates its agents; `problem` says why it cannot (attempts then fail with it)."""

    sandbox: Literal["bwrap", "none"]
    user: AgentUser | None  # None: agents run as the worker's own user
    bwrap: str | None = None  # absolute
    setpriv: str | None = None  # absolute; where the worker is root, the sandbox drops to the agent's user with it
    warning: str | None = None  # said at start and by `orch check`: agents are not sandboxed, and why
    problem: str | None = None

    def describe(self) -> str:
        who = f"user {self.user.name} (uid {self.user.uid})" if self.user else f"the worker's user (uid {os.getuid()})"
        return f"agents run as {who}, {'bubblewrap sandbox' if self.sandbox == 'bwrap' else 'no sandbox'}"


def absolute_path(path: str | None) -> str:
    """PATH without its relative and empty entries (which mean the current folder: an agent's workdir). orch looks
    its own programs up only there, and gives agents only that."""
    return ":".join(entry for entry in (path or "").split(":") if entry.startswith("/")) or SAFE_PATH


def program(name: str) -> str | None:
    """The absolute path of one of orch's own helper programs (bubblewrap, setpriv): PATH's absolute entries, then
    the system's folders."""
    return shutil.which(name, path=f"{absolute_path(os.environ.get('PATH'))}:{SAFE_PATH}")


def resolve_isolation(settings: Settings) -> Isolation:
    """Decide (and, for bubblewrap, probe) the isolation ORCH_SANDBOX and ORCH_AGENT_USER ask for on this host."""
    user: AgentUser | None = None
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam(settings.agent_user)
        except KeyError:
            return Isolation(
                "none",
                None,
                problem=(
                    f"the worker runs as root, so agents run as ORCH_AGENT_USER={settings.agent_user}, and no such "
                    f"user exists on this host: create it (`useradd --system --no-create-home --shell "
                    f"/usr/sbin/nologin {settings.agent_user}`) or set ORCH_AGENT_USER to an unprivileged user"
                ),
            )
        if entry.pw_uid == 0:
            return Isolation(
                "none", None, problem=f"ORCH_AGENT_USER={settings.agent_user} is root; name an unprivileged user"
            )
        user = AgentUser(entry.pw_name, entry.pw_uid, entry.pw_gid)
    if settings.sandbox == "none":
        return Isolation("none", user, warning="ORCH_SANDBOX=none: agents run without a sandbox")
    bwrap, setpriv = program("bwrap"), program("setpriv") if user is not None else None
    failure: str | None
    if user is not None and setpriv is None:
        failure = "setpriv (util-linux), which drops a root worker's agents to their user, is not installed"
    elif bwrap is None:
        failure = "bubblewrap (bwrap) is not installed"
    else:
        failure = probe_bwrap(bwrap, user, setpriv)
    if failure is None:
        return Isolation("bwrap", user, bwrap=bwrap, setpriv=setpriv)
    if settings.sandbox == "bwrap":
        return Isolation("none", user, problem=f"ORCH_SANDBOX=bwrap, but {failure}")
    return Isolation(
        "none",
        user,
        warning=f"ORCH_SANDBOX=auto found no usable sandbox ({failure}): agents run without one; install "
        f"bubblewrap (Debian: apt-get install bubblewrap) where user namespaces are allowed",
    )


def probe_bwrap(bwrap: str, user: AgentUser | None, setpriv: str | None) -> str | None:
    """None when bubblewrap can build this module's sandbox here; else why not (its own message). A sandbox needs
    a /proc of its own: where a container's runtime masks /proc, the kernel refuses one, and showing the container's
    instead would let agents read each other's environments, so there is then no sandbox (Kubernetes: run workers
    with `hostUsers: false` and `procMount: Unmasked`, deploy/README.md)."""
    argv = [bwrap, *namespace_options(os.geteuid() == 0), "--unshare-net", "--ro-bind", "/", "/", "--dev", "/dev"]
    argv += ["--proc", "/proc", "--", *drop_privileges_to(user, setpriv), "/bin/true"]
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=_PROBE_TIMEOUT, env={"PATH": SAFE_PATH}
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap could not run: {exc}"
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        return f"bwrap fails here: {reason[-1] if reason else f'exit status {done.returncode}'}"
    return None


_isolations: dict[tuple[str, str, int], Isolation] = {}


def current_isolation(settings: Settings) -> Isolation:
    """This process's isolation (probed once per setting)."""
    key = (settings.sandbox, settings.agent_user, os.geteuid())
    if key not in _isolations:
        _isolations[key] = resolve_isolation(settings)
    return _isolations[key]


def namespace_options(privileged: bool) -> list[str]:
    # Run by root, bwrap makes the namespaces itself and setpriv drops to the agent's user inside; run by another
    # user, bwrap needs a user namespace, mapping that user to itself.
    options = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    return options if privileged else ["--unshare-user", *options]


def drop_privileges_to(user: AgentUser | None, setpriv: str | None) -> list[str]:
    """setpriv's command line (by its absolute path: bwrap would look a bare name up in the agent's PATH, as root)
    that becomes `user` with no capabilities and no way to regain any."""
    if user is None or setpriv is None or os.geteuid() != 0:
        return []
    return [
        setpriv, f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups",
        "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--",
    ]  # fmt: skip
