"""Running git hardened: git's absolute path, an environment of its own, the `-c` overrides and the flags each
subcommand must have, a timeout; and reading what it prints. See the package's docstring for why."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final

from orch.errors import OrchError

GIT_TIMEOUT_S: Final = 60.0

# Keys naming a program (or enabling one) git might run, with values that run nothing. The command line is read
# after every config file, so these win over single-valued keys; multi-valued and per-driver keys are why an
# untrusted worktree is read through a private git dir instead.
SAFE_CONFIG: Final[tuple[tuple[str, str], ...]] = (
    ("core.fsmonitor", "false"),
    ("core.hooksPath", "/dev/null"),
    ("core.untrackedCache", "false"),
    ("core.pager", "cat"),
    ("pager.status", "false"),
    ("pager.diff", "false"),
    ("pager.log", "false"),
    ("pager.show", "false"),
    ("core.sshCommand", "false"),
    ("core.askPass", ""),
    ("credential.helper", ""),  # the empty value resets the list of helpers
    ("diff.external", ""),
    ("core.editor", ":"),
    ("sequence.editor", ":"),
    ("gpg.program", "false"),
    ("gpg.ssh.program", "false"),
    ("gpg.x509.program", "false"),
    ("commit.gpgSign", "false"),
    ("tag.gpgSign", "false"),
    ("log.showSignature", "false"),
    ("merge.verifySignatures", "false"),
    ("protocol.allow", "never"),
    *((f"protocol.{name}.allow", "never") for name in ("ext", "file", "git", "ssh", "http", "https")),
    ("submodule.recurse", "false"),
    ("fetch.recurseSubmodules", "false"),
    ("status.submoduleSummary", "false"),
    ("core.attributesFile", "/dev/null"),
    ("core.excludesFile", "/dev/null"),
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
)

# Environment variables git prefers over its config: set, they make the repository's own value moot.
_SAFE_ENV: Final[Mapping[str, str]] = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_ATTR_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_OPTIONAL_LOCKS": "0",
    "GIT_NO_REPLACE_OBJECTS": "1",
    "GIT_PROTOCOL_FROM_USER": "0",
    "GIT_PAGER": "cat",
    "GIT_EDITOR": ":",
    "GIT_SEQUENCE_EDITOR": ":",
    "GIT_ASKPASS": "",
    "GIT_SSH_COMMAND": "false",
    "GIT_PROXY_COMMAND": "",
    "LANG": "C",
    "LC_ALL": "C",
}

# Flags added right after these subcommands, so no caller can forget them.
_SUBCOMMAND_FLAGS: Final[Mapping[str, tuple[str, ...]]] = {
    "diff": ("--no-ext-diff", "--no-textconv"),
    "log": ("--no-ext-diff", "--no-textconv"),
    "show": ("--no-ext-diff", "--no-textconv"),
    "status": ("--ignore-submodules=all",),
    "hash-object": ("--no-filters",),
}

_MAX_STDERR_SHOWN: Final = 200


class GitFailed(OrchError):
    """A git command orch ran failed, timed out or could not start; the message names the command and folder.

    `returncode` (None: it did not run to an end), `stdout` and `stderr` are git's own, for callers that read an
    expected failure (exit 1 of `merge-tree`, a refused push's `--porcelain` lines)."""

    def __init__(self, message: str, *, returncode: int | None = None, stdout: str = "", stderr: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr

    @property
    def first_line(self) -> str:
        """git's first line on stderr (bounded), or "" when it printed nothing."""
        return next(iter(self.stderr.strip().splitlines()), "")[:_MAX_STDERR_SHOWN]


def _absolute_path_entries() -> list[str]:
    """This process' PATH without relative entries: git runs in the agent's workdir, where `.` is the agent's."""
    return [entry for entry in os.get_exec_path() if os.path.isabs(entry)]


def git_environment(home: Path) -> dict[str, str]:
    """The whole environment of a git process: PATH, the safe overrides above, HOME at a folder holding nothing.
    Nothing else of this process' environment (orch's secrets, GIT_*) is passed on."""
    return {"PATH": os.pathsep.join(_absolute_path_entries()), "HOME": str(home), **_SAFE_ENV}


def git_executable() -> str:
    """git's absolute path, from the absolute entries of PATH; GitFailed when there is none."""
    found = shutil.which("git", path=os.pathsep.join(_absolute_path_entries()))
    if found is None:
        raise GitFailed("git is not installed (no `git` on PATH)")
    return found


def git_argv(args: Sequence[str], extra_config: Sequence[tuple[str, str]] = ()) -> list[str]:
    """git, the config overrides, then `args` with the flags its subcommand must always have.

    `extra_config` comes after SAFE_CONFIG, so for a single-valued key (`protocol.file.allow`) it wins: a caller
    re-allows one thing by name (the transport of the one URL it fetches from) instead of SAFE_CONFIG allowing it."""
    overrides = [item for key, value in (*SAFE_CONFIG, *extra_config) for item in ("-c", f"{key}={value}")]
    if not args:
        raise ValueError("a git command needs a subcommand")
    subcommand, *rest = args
    return [git_executable(), "--no-pager", *overrides, subcommand, *_SUBCOMMAND_FLAGS.get(subcommand, ()), *rest]


def run_git(
    args: Sequence[str],
    *,
    git_dir: Path,
    cwd: Path,
    work_tree: Path | None = None,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    home: Path | None = None,
    timeout: float = GIT_TIMEOUT_S,
    extra_config: Sequence[tuple[str, str]] = (),
) -> str:
    """Run git on an explicit git dir (never discovery) and return its stdout; GitFailed if it fails.

    The repository's own config is read: for a repository an agent can write, use `open_worktree_view`."""
    if home is None:
        with tempfile.TemporaryDirectory(prefix="orch-git-home-") as empty_home:
            return run_git(
                args,
                git_dir=git_dir,
                cwd=cwd,
                work_tree=work_tree,
                env=env,
                stdin=stdin,
                home=Path(empty_home),
                timeout=timeout,
                extra_config=extra_config,
            )
    full_env = {**git_environment(home), **(env or {}), "GIT_DIR": str(git_dir)}
    if work_tree is not None:
        full_env["GIT_WORK_TREE"] = str(work_tree)
    where = f"git {args[0] if args else ''} in {cwd}"
    try:
        done = run_bounded(git_argv(args, extra_config), cwd, full_env, stdin, timeout)
    except subprocess.TimeoutExpired as exc:
        raise GitFailed(f"{where}: no answer within {timeout:.0f} s") from exc
    except OSError as exc:
        raise GitFailed(f"{where}: could not start git ({exc.strerror})") from exc
    if done.returncode != 0:
        first_line = next(iter(done.stderr.strip().splitlines()), "")[:_MAX_STDERR_SHOWN]
        raise GitFailed(
            f"{where}: exit status {done.returncode}: {first_line}",
            returncode=done.returncode,
            stdout=done.stdout,
            stderr=done.stderr,
        )
    return done.stdout


def run_bounded(
    argv: list[str], cwd: Path, env: Mapping[str, str], stdin: str | None, timeout: float
) -> subprocess.CompletedProcess[str]:
    """subprocess.run's capture, its time limit kept by a timer that kills git: a wait with a timeout polls (1 ms,
    2 ms, … sleeps), which cost each git command some 1.8 ms more than git itself (bench/worktree_cost.py)."""
    process = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        encoding="utf-8",
        errors="surrogateescape",  # paths are bytes to git: any name an agent makes must survive a round trip
        start_new_session=True,  # its group: what git started (ssh, a remote helper, receive-pack) ends with it
    )
    expired = threading.Event()

    def kill() -> None:
        expired.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        stdout, stderr = process.communicate(stdin)
    except BaseException:  # Ctrl-C (KeyboardInterrupt) too: the child has a session of its own, no terminal's signal
        _kill_and_reap(process)
        raise
    finally:
        timer.cancel()
    if expired.is_set():
        raise subprocess.TimeoutExpired(argv, timeout, stdout, stderr)
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def _kill_and_reap(process: subprocess.Popen[str]) -> None:
    """End a process and its group now (SIGKILL), close its pipes and wait for it: nothing is left running."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    process.wait()


def iter_nul(text: str) -> Iterator[str]:
    """The non-empty items of a NUL-separated listing (`-z`)."""
    return (item for item in text.split("\0") if item)


def git_version() -> str:
    """`git version` as git says it ("git version 2.39.5"), without the prefix; GitFailed when there is no git."""
    with tempfile.TemporaryDirectory(prefix="orch-git-home-") as home:
        try:
            done = subprocess.run(
                [git_executable(), "version"],
                env=git_environment(Path(home)),
                capture_output=True,
                text=True,
                timeout=GIT_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise GitFailed(f"git version: {exc}") from exc
    return done.stdout.strip().removeprefix("git version ") or "git (version unknown)"
