"""`orch run`'s life as a user sees it when things go wrong: SIGKILLed (nothing keeps running, the next command
cancels its plan), Ctrl-C twice, a store whose disk fills up or that is read-only, a corrupted store, other users
on the machine. Every failure is one line naming what to do, and nothing is left behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.e2e.conftest import ORCH, orch_env, run_orch
from tests.e2e.test_cli import list_processes
from tests.helpers import wait_for
from tests.rootfs import as_nobody, fill, remount, shared_scratch, small_tmpfs

SLEEPERS = """\
name: sleepers
tasks:
  - {id: s1, title: sleep one, command: "sleep 300"}
  - {id: s2, title: sleep two, command: "sleep 300"}
  - {id: s3, title: sleep three, command: "sleep 300"}
  - {id: s4, title: sleep four, command: "sleep 300"}
"""
ONE = """\
name: one
tasks:
  - {id: a, title: say hello, command: "echo hello"}
"""
# An agent that outlives a polite SIGTERM: stopping the worker takes the pool's kill grace (2 s) at least.
STUBBORN = """\
name: stubborn
tasks:
  - {id: nap, title: nap through SIGTERM, command: "trap '' TERM; sleep 300"}
"""
WAITER = """\
name: waiter
tasks:
  - {id: w, title: wait for the go file, command: "while [ ! -e go ]; do sleep 0.1; done; echo finished"}
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


class Run:
    """`orch run PLAN` in its own session, its stderr collected line by line as it comes."""

    def __init__(self, plan: Path, cwd: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [ORCH, "run", str(plan)],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        assert self.process.stderr is not None
        self._reader = threading.Thread(target=self._read, args=(self.process.stderr,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        with stream:  # closed at the end: an open pipe left to the collector is a ResourceWarning
            for line in stream:
                self.lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.process.pid

    def said(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    started: list[Run] = []
    try:
        yield started
    finally:
        for run in started:
            run.stop()


def task_statuses(plan: str, cwd: Path, env: dict[str, str]) -> dict[str, str]:
    status = run_orch(["status", plan, "--json"], cwd, env)
    if status.returncode != 0:
        return {}
    return {t["id"]: t["status"] for t in json.loads(status.stdout)["tasks"]}


def redis_folders(pid: int) -> list[Path]:
    return sorted(Path("/tmp").glob(f"orch-redis-{pid}-*"))


def wait_for_no_process(tmp_path: Path, timeout: float, what: str) -> None:
    """Wait for every process that names `tmp_path` (its command line or environment) to exit; fail naming those
    left."""
    try:
        wait_for(lambda: not list_processes(str(tmp_path)), timeout, what)
    except AssertionError as timed_out:
        raise AssertionError(f"{timed_out}; left: {list_processes(str(tmp_path))}") from None


def orch_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("orch:") or "Traceback" in line or "Aborted" in line]


def test_a_sigkilled_orch_run_leaves_nothing_running_and_the_next_run_is_not_held(
    tmp_path: Path, runs: list[Run]
) -> None:
    env = orch_env(tmp_path)
    run = Run(write(tmp_path / "sleepers.yaml", SLEEPERS), tmp_path, env)
    runs.append(run)
    wait_for(
        lambda: set(task_statuses("sleepers", tmp_path, env).values()) == {"running"}, 120, "the four sleepers to run"
    )
    run.process.kill()  # SIGKILL: no handler, no clean-up of its own
    run.wait(timeout=10)
    # Its worker's main, pool and beat processes, the agents and Redis all end with it, within seconds.
    wait_for_no_process(tmp_path, 20, "every process the killed orch run started to exit")
    assert redis_folders(run.pid), "its Redis folder is left for the next start to sweep"
    # The four sleepers filled general-purpose's cap of 4: the next run cancels their plan, then runs at once.
    started = time.monotonic()
    second = run_orch(["run", str(write(tmp_path / "one.yaml", ONE))], tmp_path, env, timeout=150)
    assert second.returncode == 0, second.stderr
    assert time.monotonic() - started < 120
    reason = f"its orch run (pid {run.pid} on {socket.gethostname()}) died"
    assert "orch: plan sleepers-" in second.stderr and f"cancelled: {reason}" in second.stderr
    assert not redis_folders(run.pid)
    report = json.loads(run_orch(["status", "sleepers", "--json"], tmp_path, env).stdout)
    assert report["plan"]["status"] == "cancelled"
    assert {(t["status"], t["error"]) for t in report["tasks"]} == {("cancelled", reason)}


def test_a_second_ctrl_c_while_stopping_does_not_skip_the_clean_up(tmp_path: Path, runs: list[Run]) -> None:
    env = orch_env(tmp_path)
    run = Run(write(tmp_path / "stubborn.yaml", STUBBORN), tmp_path, env)
    runs.append(run)
    wait_for(lambda: task_statuses("stubborn", tmp_path, env).get("nap") == "running", 120, "the nap to start")
    run.process.send_signal(signal.SIGINT)
    wait_for(lambda: run.said("interrupted: cancelling the plan"), 20, "orch run to start stopping")
    run.process.send_signal(signal.SIGINT)  # while it cancels the plan and stops its worker
    assert run.wait(timeout=60) == 130
    assert orch_lines(run.lines) == [], run.lines  # no "Aborted!", no traceback
    assert run.said("interrupted again: still stopping the worker")
    assert not redis_folders(run.pid)
    wait_for_no_process(tmp_path, 20, "every process orch run started to exit")
    assert set(task_statuses("stubborn", tmp_path, env).values()) == {"cancelled"}


def test_a_run_warns_of_an_unfinished_plan_that_a_live_orch_run_holds(tmp_path: Path, runs: list[Run]) -> None:
    env = orch_env(tmp_path)
    first = Run(write(tmp_path / "stubborn.yaml", STUBBORN), tmp_path, env)
    runs.append(first)
    wait_for(lambda: task_statuses("stubborn", tmp_path, env).get("nap") == "running", 120, "the nap to start")
    second = run_orch(["run", str(write(tmp_path / "one.yaml", ONE))], tmp_path, env, timeout=150)
    assert second.returncode == 0, second.stderr
    notes = [line for line in second.stderr.splitlines() if line.startswith("orch: note:")]
    assert len(notes) == 1 and f"(pid {first.pid} on {socket.gethostname()})" in notes[0], second.stderr
    assert notes[0].startswith("orch: note: orch run still runs stubborn-")
    assert task_statuses("stubborn", tmp_path, env) == {"nap": "running"}  # a live run's plan is left alone


def test_a_full_store_stops_the_worker_and_orch_run_says_so_in_one_line(tmp_path: Path, runs: list[Run]) -> None:
    with small_tmpfs(tmp_path / "home") as home:
        env = orch_env(tmp_path, ORCH_HOME=str(home))
        run = Run(write(tmp_path / "waiter.yaml", WAITER), tmp_path, env)
        runs.append(run)
        wait_for(lambda: task_statuses("waiter", tmp_path, env).get("w") == "running", 120, "the waiter to start")
        filler = fill(home)
        (tmp_path / "go").touch()
        started = time.monotonic()
        assert run.wait(timeout=90) == 1  # not ORCH_STORE_RETRY_SECONDS (600 s) of retries as if unreachable
        assert time.monotonic() - started < 60
        (line,) = orch_lines(run.lines)
        assert line.startswith(f"orch: the worker stopped: store at {home / 'orch.db'} is full: database or disk")
        assert line.endswith(" once the store can be written") and "run `orch cancel waiter-" in line
        wait_for_no_process(tmp_path, 20, "every process orch run started to exit")
        filler.unlink()
        report = json.loads(run_orch(["status", "waiter", "--json"], tmp_path, env).stdout)
        assert report["plan"]["status"] == "cancelled"  # its runner is gone: the next command cancels it


def test_ctrl_c_while_the_store_is_full_says_what_to_do_and_exits_130(tmp_path: Path, runs: list[Run]) -> None:
    with small_tmpfs(tmp_path / "home") as home:
        env = orch_env(tmp_path, ORCH_HOME=str(home))
        run = Run(write(tmp_path / "sleepers.yaml", SLEEPERS), tmp_path, env)
        runs.append(run)
        wait_for(lambda: "running" in task_statuses("sleepers", tmp_path, env).values(), 120, "a sleeper to start")
        filler = fill(home)
        run.process.send_signal(signal.SIGINT)
        assert run.wait(timeout=60) == 130
        (line,) = orch_lines(run.lines)
        assert line.startswith(f"orch: could not record the cancel: store at {home / 'orch.db'} is full: ")
        assert "; run `orch cancel sleepers-" in line and line.endswith("` once the store can be written")
        assert not redis_folders(run.pid)
        wait_for_no_process(tmp_path, 20, "every process orch run started to exit")
        filler.unlink()


def test_a_read_only_or_full_orch_home_is_one_line_before_anything_starts(tmp_path: Path) -> None:
    plan = write(tmp_path / "one.yaml", ONE)
    with small_tmpfs(tmp_path / "home") as home:
        env = orch_env(tmp_path, ORCH_HOME=str(home / "orch"))
        remount(home, "ro")
        try:
            result = run_orch(["run", str(plan)], tmp_path, env, timeout=30)
        finally:
            remount(home, "rw")
        assert result.returncode == 2
        assert result.stderr.splitlines() == [
            f"orch: ORCH_HOME {home / 'orch'} cannot be written (Read-only file system): orch run keeps its store and "
            f"logs there; make it writable or set ORCH_HOME to another folder"
        ]
        filler = fill(home)
        result = run_orch(["run", str(plan)], tmp_path, env, timeout=30)
        assert result.returncode == 2
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"orch: ORCH_HOME {home / 'orch'} is full (0 KiB free; orch run needs 1024 KiB")
        assert not list_processes(str(tmp_path)) and not redis_folders(0)
        filler.unlink()


def test_a_corrupted_store_is_one_line_and_exit_2_for_every_command(tmp_path: Path) -> None:
    env = orch_env(tmp_path)
    home = tmp_path / ".orch"
    home.mkdir(mode=0o700)
    (home / "orch.db").write_bytes(b"SQLite format 2\0" + b"\xff" * 8192)
    plan = write(tmp_path / "one.yaml", ONE)
    for command in (["status"], ["status", "one"], ["run", str(plan)], ["submit", str(plan)], ["cancel", "one"]):
        result = run_orch(command, tmp_path, env, timeout=60)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.splitlines() == [
            f"orch: store at {home / 'orch.db'} is not a valid orch store: file is not a database; move it aside "
            f"(with its -wal and -shm files)"
        ], command
    assert not list_processes(str(tmp_path))


def test_a_password_in_the_database_urls_query_is_never_printed(tmp_path: Path) -> None:
    env = orch_env(tmp_path, ORCH_DATABASE_URL="postgresql://orch@127.0.0.1:1/orch?password=S3cretPassw0rd")
    for command in (["status"], ["run", str(write(tmp_path / "one.yaml", ONE))]):
        result = run_orch(command, tmp_path, env, timeout=60)
        assert result.returncode == 1, result.stderr
        assert "S3cretPassw0rd" not in result.stdout + result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith("orch: database postgresql+psycopg://orch@127.0.0.1:1/orch?password=[redacted] ")


def test_another_user_cannot_read_the_store_or_the_logs_of_a_run(tmp_path: Path) -> None:
    with shared_scratch("run") as folder:
        plan = write(folder / "one.yaml", ONE)
        home = folder / ".orch"
        home.mkdir(mode=0o777)
        home.chmod(0o777)  # as an older release left it under a permissive umask

        def permissive_umask() -> None:
            os.umask(0)

        result = subprocess.run(
            [ORCH, "run", str(plan)],
            cwd=folder,
            env=orch_env(folder),
            capture_output=True,
            text=True,
            timeout=150,
            preexec_fn=permissive_umask,
        )
        assert result.returncode == 0, result.stderr
        logs = home / "logs"
        files = [p for p in home.rglob("*") if p.is_file()]
        assert {p.name for p in files} >= {"orch.db", "redis.log", "a.1.log"}
        assert home.stat().st_mode & 0o777 == 0o700 and logs.stat().st_mode & 0o777 == 0o700
        for path in files:
            assert path.stat().st_mode & 0o077 == 0, path
        assert as_nobody("ls", str(home)).returncode != 0
        for path in files:
            denied = as_nobody("cat", str(path))
            assert denied.returncode != 0 and "Permission denied" in denied.stderr, path
