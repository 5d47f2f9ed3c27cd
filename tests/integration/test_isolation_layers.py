"""The two layers that keep an agent from the worker, each on its own: the unprivileged user (the worker runs as
root, ORCH_SANDBOX=none), bubblewrap as a worker that is not root builds it, and the worker's non-dumpable flag
against an agent of its own user. A worker that cannot have the isolation it is told to use refuses to start."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from orch.settings import get_settings
from tests.conftest import require_bwrap
from tests.e2e.conftest import BIN
from tests.helpers import attempt_context, wait_for
from workers.executors.base import AttemptContext
from workers.executors.shell import ShellExecutor
from workers.sandbox.bwrap import Layout, bwrap_arguments

AGENT_USER = "orch-agent"
AS_NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: agents switch user only under a root worker")


def shell_context(tmp_path: Path, command: str) -> AttemptContext:
    work = tmp_path / "work"
    work.mkdir(parents=True, exist_ok=True)
    return attempt_context(
        tmp_path,
        task={"key": "probe", "title": "probe", "command": command, "workdir": str(work), "timeout": 30.0,
              "agent": "general-purpose", "executor": "shell"},
        settings={"output_tail_bytes": 65536, "log_max_bytes": 1 << 20, "kill_grace_seconds": 1.0},
        network="none",
    )  # fmt: skip


@ROOT_ONLY
def test_without_a_sandbox_a_root_workers_agent_is_the_unprivileged_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCH_SANDBOX", "none")
    get_settings.cache_clear()
    home = get_settings().home
    home.mkdir(mode=0o700, parents=True)
    (home / "orch.db").write_text("the store")
    (home / "orch.db").chmod(0o600)
    (home / "orch.db").parent.chmod(0o700)
    outside = tmp_path / "root-only"
    outside.mkdir(mode=0o755)
    outside.chmod(0o755)
    probe = f"""
        echo "uid=$(id -u)"
        cat {home}/orch.db >/dev/null 2>&1 && echo "store: read" || echo "store: denied"
        cat /proc/1/environ >/dev/null 2>&1 && echo "init environ: read" || echo "init environ: denied"
        touch {outside}/planted 2>/dev/null && echo "outside: written" || echo "outside: denied"
        touch ./mine && echo "workdir: written"
    """
    result = ShellExecutor().run(shell_context(tmp_path, textwrap.dedent(probe)))
    assert result.succeeded, result.error
    said = result.output_tail
    assert f"uid={pwd.getpwnam(AGENT_USER).pw_uid}" in said
    for line in ("store: denied", "init environ: denied", "outside: denied", "workdir: written"):
        assert line in said, said
    assert not (outside / "planted").exists()


@ROOT_ONLY
def test_a_workdir_the_agent_user_cannot_write_fails_at_once_naming_the_path_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for sandbox in ("none", "bwrap" if shutil.which("bwrap") else "none"):
        monkeypatch.setenv("ORCH_SANDBOX", sandbox)
        get_settings.cache_clear()
        ctx = shell_context(tmp_path / sandbox, "echo ran > ran.txt")
        ctx.workdir.chmod(0o755)  # root's, as a checkout made by root is
        result = ShellExecutor().run(ctx)
        assert result.failure_class == "workdir_not_writable", (sandbox, result.error)
        assert f"cannot write workdir {ctx.workdir}" in (result.error or "")
        assert f"chown -R {AGENT_USER} {ctx.workdir}" in (result.error or "")
        assert not (ctx.workdir / "ran.txt").exists()


@pytest.fixture
def open_folder() -> Iterator[Path]:
    """A folder in /tmp that any user may walk into (pytest's own are its user's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="orch-layers-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_bwraps_sandbox_holds_for_a_worker_that_is_not_root(open_folder: Path) -> None:
    """What a non-root worker's bwrap builds (a user namespace of its own), run as `nobody`: the workdir is
    writable, what the worker hides is empty, nothing else is writable, and only the sandbox's processes show."""
    tmp_path = open_folder
    bwrap = require_bwrap()
    runner = AS_NOBODY if os.geteuid() == 0 else []
    work, hidden = tmp_path / "work", tmp_path / "orch-home"
    for folder in (work, hidden):
        folder.mkdir()
        folder.chmod(0o777)
    (hidden / "orch.db").write_text("the store")
    (hidden / "orch.db").chmod(0o644)
    layout = Layout(workdir=work, writable=(work,), hidden=(hidden,), network=False)
    outside = Path("/var/tmp") / f"{tmp_path.name}-planted"  # writable by anyone on the host; not in the sandbox
    script = f"""
        touch {work}/mine && echo "workdir: written"
        ls -A {hidden} | wc -l | sed 's/^/hidden entries: /'
        touch {outside} 2>/dev/null && echo "outside: written" || echo "outside: denied"
        touch /etc/planted 2>/dev/null && echo "etc: written" || echo "etc: denied"
        echo "processes: $(ls /proc | grep -c '^[0-9]')"
        (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null && echo "redis: reached" || echo "redis: unreachable"
    """
    argv = [*runner, bwrap, *bwrap_arguments(layout, privileged=False), "--", "/bin/bash", "-c", script]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    said = done.stdout
    for line in ("workdir: written", "hidden entries: 0", "outside: denied", "etc: denied", "redis: unreachable"):
        assert line in said, said
    processes = int(said.split("processes: ")[1].split()[0])
    assert processes <= 5, said  # bwrap's init, bash, its $(...) subshell, ls, grep: no worker, no other agent
    assert (work / "mine").exists() and not outside.exists()


def test_a_non_dumpable_worker_keeps_its_environment_from_a_process_of_its_own_user(tmp_path: Path) -> None:
    """Same uid, no sandbox between them (the `ORCH_SANDBOX=none` case for a worker that is not root): only the
    worker's non-dumpable flag keeps an agent from /proc/<worker>/environ. Both run as one unprivileged user inside
    bwrap, which only shows them this Python."""
    bwrap = require_bwrap()
    ready = tmp_path / "ready"
    tmp_path.chmod(0o777)
    code_root = Path(__file__).resolve().parents[2]
    worker = textwrap.dedent(
        f"""
        import os, sys, time
        sys.path.insert(0, {str(code_root)!r})
        if sys.argv[1] == "hardened":
            from orch.hardening import harden_process
            harden_process()
        open({str(ready)!r} + sys.argv[1], "w").write(str(os.getpid()))
        time.sleep(30)
        """
    )
    programs = (Path(sys.prefix), Path(sys.base_prefix), code_root)
    layout = Layout(workdir=tmp_path, writable=(tmp_path,), readable=programs, hidden=(Path.home(),), network=False)
    reader = "cat /proc/$(cat {ready}{mode})/environ >/dev/null 2>&1 && echo {mode}: read || echo {mode}: denied"
    script = " & ".join(f"{sys.executable} -c {shq(worker)} {mode}" for mode in ("plain", "hardened"))
    script += f" & for i in $(seq 400); do [ -f {ready}plain ] && [ -f {ready}hardened ] && break; sleep 0.05; done; "
    script += "; ".join(reader.format(ready=ready, mode=mode) for mode in ("plain", "hardened"))
    script += "; kill %1 %2"
    user = AS_NOBODY if os.geteuid() == 0 else []
    argv = [bwrap, *bwrap_arguments(layout), "--", *user, "/bin/bash", "-c", script]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert "plain: read" in done.stdout, done.stdout + done.stderr  # the control: same user, readable
    assert "hardened: denied" in done.stdout, done.stdout + done.stderr


def shq(text: str) -> str:
    import shlex

    return shlex.quote(text)


@ROOT_ONLY
def test_a_worker_that_cannot_isolate_agents_as_told_refuses_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(
        ORCH_HOME=str(tmp_path / ".orch"),
        ORCH_BROKER_URL="redis://127.0.0.1:1/0",
        ORCH_AGENT_USER="no-such-agent-user",  # a root worker's agents would have no user to run as
    )
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [str(BIN / "celery"), "-A", "orch", "worker", "-Q", "agent.general-purpose", "--pool", "solo"],
            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    try:
        code = worker.wait(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
    said = log.read_text()
    assert code == 2, said
    assert "orch: the worker runs as root, so agents run as ORCH_AGENT_USER=no-such-agent-user" in said
    wait_for(lambda: worker.poll() is not None, 5, "the worker to be gone")
