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
    bwrap: str | None = None
    warning: str | None = None  # said at start and by `orch check`: agents are not sandboxed, and why
    problem: str | None = None
    # A container's runtime masks parts of /proc, and the kernel then refuses a new procfs: there the sandbox shows
    # the container's /proc read-only (the worker's own entries stay unreadable: it is non-dumpable).
    own_proc: bool = True

    def describe(self) -> str:
        who = f"user {self.user.name} (uid {self.user.uid})" if self.user else f"the worker's user (uid {os.getuid()})"
        how = "no sandbox"
        if self.sandbox == "bwrap":
            how = "bubblewrap sandbox" + ("" if self.own_proc else " (with the container's /proc, read-only)")
        return f"agents run as {who}, {how}"


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
    bwrap = shutil.which("bwrap")
    failure = "bubblewrap (bwrap) is not installed" if bwrap is None else probe_bwrap(bwrap, user, own_proc=True)
    if failure is None:
        return Isolation("bwrap", user, bwrap=bwrap)
    if bwrap is not None and probe_bwrap(bwrap, user, own_proc=False) is None:
        return Isolation("bwrap", user, bwrap=bwrap, own_proc=False)
    if settings.sandbox == "bwrap":
        return Isolation("none", user, problem=f"ORCH_SANDBOX=bwrap, but {failure}")
    return Isolation(
        "none",
        user,
        warning=f"ORCH_SANDBOX=auto found no usable sandbox ({failure}): agents run without one; install "
        f"bubblewrap (Debian: apt-get install bubblewrap) where user namespaces are allowed",
    )


def probe_bwrap(bwrap: str, user: AgentUser | None, own_proc: bool) -> str | None:
    """None when bubblewrap can build this module's sandbox here; else why not (its own message)."""
    argv = [bwrap, *namespace_options(os.geteuid() == 0), "--unshare-net", "--ro-bind", "/", "/", "--dev", "/dev"]
    argv += proc_options(own_proc)
    argv += ["--", *drop_privileges_to(user), "/bin/true"]
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


def proc_options(own_proc: bool) -> list[str]:
    return ["--proc", "/proc"] if own_proc else ["--ro-bind", "/proc", "/proc"]


def namespace_options(privileged: bool) -> list[str]:
    # Run by root, bwrap makes the namespaces itself and setpriv drops to the agent's user inside; run by another
    # user, bwrap needs a user namespace, mapping that user to itself.
    options = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    return options if privileged else ["--unshare-user", *options]


def drop_privileges_to(user: AgentUser | None) -> list[str]:
    """setpriv's command line that becomes `user` with no capabilities and no way to regain any."""
    if user is None or os.geteuid() != 0:
        return []
    return [
        "setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups",
        "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs", "--",
    ]  # fmt: skip
