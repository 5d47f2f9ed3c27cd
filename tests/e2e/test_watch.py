"""`orch watch` as a user runs it, on a terminal (a pseudo-terminal: the live bars) and piped (a line per change),
against a plan this test advances through the store while it is watched."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import threading
from datetime import UTC, datetime
from pathlib import Path

from orch.decisions.retry import Outcome
from orch.dispatch.reconcile import reconcile_plans
from orch.records import AttemptResult, Claim, Dispatch
from orch.states import AttemptStatus, TaskStatus
from orch.store import attempts, plans
from orch.store.db import write_session
from tests.e2e.conftest import ORCH, orch_env, start_watch
from tests.helpers import SUCCESS, make_plan, registry, wait_for

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
FAILURE = Outcome(TaskStatus.FAILED, AttemptStatus.FAILED)


def now() -> datetime:
    return datetime.now(UTC)


def submit(tasks: list[dict[str, object]]) -> str:
    with write_session() as session:
        return plans.submit_plan(session, make_plan(tasks, name="watched"), now())


def dispatch() -> dict[str, Dispatch]:
    with write_session() as session:
        return {d.key: d for d in reconcile_plans(session, plans.active_plan_ids(session), registry(), now())}


def start(task: Dispatch) -> Claim:
    with write_session() as session:
        claimed = attempts.claim(session, task.task_pk, task.attempt, "worker-1", 1, 60, now=now())
    assert claimed is not None
    claim, _ = claimed
    return claim


def finish(claim: Claim, ok: bool) -> None:
    result = AttemptResult(ok, exit_code=0 if ok else 1, error=None if ok else "command failed: exit 1")
    with write_session() as session:
        assert attempts.record_result(session, claim, result, SUCCESS if ok else FAILURE, now()) is not None


class Terminal:
    """`orch watch` on a pseudo-terminal 120 columns wide, its output collected by a thread."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        self.process = subprocess.Popen(
            args, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, start_new_session=True
        )
        os.close(slave)
        self.master = master
        self.chunks: list[bytes] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            self.chunks.append(data)

    @property
    def text(self) -> str:
        return ANSI.sub("", b"".join(self.chunks).decode("utf-8", "replace"))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        self.reader.join(10)
        os.close(self.master)


def test_watch_on_a_terminal_shows_bars_and_running_tasks_and_exits_0_when_the_plan_succeeds(
    tmp_path: Path, sqlite_url: str
) -> None:
    plan_id = submit(
        [
            {"id": "build", "title": "build it", "agent": "backend-development", "command": "true"},
            {"id": "check", "title": "check it", "agent": "testing-specialist", "after": ["build"], "command": "true"},
        ]
    )
    env = orch_env(tmp_path, ORCH_DATABASE_URL=sqlite_url, COLUMNS="120", TERM="xterm-256color")
    terminal = Terminal([ORCH, "watch", "watched", "--interval", "0.1"], env, tmp_path)
    try:
        wait_for(lambda: "all tasks" in terminal.text, 30, "the first frame of the live view")
        build = start(dispatch()["build"])
        wait_for(lambda: "▶ build (backend-development)" in terminal.text, 30, "the running task in the view")
        finish(build, ok=True)
        check = start(dispatch()["check"])
        wait_for(lambda: "▶ check (testing-specialist)" in terminal.text, 30, "the second running task")
        finish(check, ok=True)
        assert dispatch() == {}  # the plan is finished
        wait_for(lambda: terminal.process.poll() is not None, 30, "orch watch to exit")
        assert terminal.process.returncode == 0, terminal.text
    finally:
        terminal.close()
    final = terminal.text
    assert "━" in final  # rich's bars
    assert re.search(r"all tasks\s+━+\s+2/2", final), final
    assert re.search(r"backend-development\s+━+\s+1/1", final) and re.search(r"testing-specialist\s+━+\s+1/1", final)
    assert "watched succeeded" in final
    assert f"details: orch report {plan_id}" in final


def test_watch_piped_prints_a_line_per_change_then_the_bars_and_exits_1_when_the_plan_fails(
    tmp_path: Path, sqlite_url: str
) -> None:
    submit([{"id": "only", "title": "fail it", "agent": "devops-engineer", "command": "false", "retries": 0}])
    env = orch_env(tmp_path, ORCH_DATABASE_URL=sqlite_url, COLUMNS="120")
    watch = start_watch("watched", tmp_path, env)
    try:
        assert watch.stdout is not None
        assert select.select([watch.stdout], [], [], 30)[0], "orch watch printed nothing in 30 s"
        first = watch.stdout.readline()  # the plan as it was submitted
        assert "watched running  0/1 done" in first, first
        claim = start(dispatch()["only"])
        finish(claim, ok=False)
        assert dispatch() == {}
        stdout, stderr = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.communicate(timeout=10)
    assert watch.returncode == 1, stderr
    assert "watched failed  1/1 done  failed: 1" in stdout
    assert re.search(r"devops-engineer\s+━+\s+1/1 \(1 not succeeded\)", stdout), stdout
    assert not stderr
