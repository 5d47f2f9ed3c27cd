"""What an agent is granted: its whole environment (an allow-list, never the worker's less a deny-list), and its
own per-attempt folder outside the workdir (its HOME and TMPDIR, and files orch hands it)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from orch.services.isolation import absolute_path, current_isolation
from orch.settings import Settings

LOCALE_VARIABLES = (
    "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_NUMERIC", "LC_TIME", "LC_COLLATE", "LC_MONETARY", "LC_MESSAGES",
    "LC_PAPER", "LC_NAME", "LC_ADDRESS", "LC_TELEPHONE", "LC_MEASUREMENT", "LC_IDENTIFICATION", "TZ",
)  # fmt: skip


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
