"""e2e fixtures: the real `orch` and `celery` commands as child processes that stop by themselves."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from orch.services.processes import die_with_parent, stop_process
from tests.conftest import SANDBOX_READ

BIN = Path(sys.executable).parent
ORCH = str(BIN / "orch")
REPO = Path(__file__).resolve().parents[2]


def orch_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update({"ORCH_HOME": str(tmp_path / ".orch"), "ORCH_CONFIG_DIR": str(REPO / "config"), **SANDBOX_READ})
    env.update(extra)
    return env


def run_orch(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ORCH, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def start_watch(plan: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """`orch watch PLAN` polling every 0.1 s, its output piped, in a session of its own."""
    return subprocess.Popen(
        [ORCH, "watch", plan, "--interval", "0.1"],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


class Processes:
    """Child processes of a test, each in its own session, killed with the test process if it dies."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, args: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            process = subprocess.Popen(
                args,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(signal.SIGKILL),
            )
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in reversed(self.started):
            stop_process(process, signal.SIGTERM, 20)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # whatever the process left in its group


@pytest.fixture
def processes() -> Iterator[Processes]:
    procs = Processes()
    try:
        yield procs
    finally:
        procs.stop_all()


@pytest.fixture
def demo_copy(tmp_path: Path) -> Path:
    """examples/demo.yaml in a scratch folder, so its work lands there (in `scratch/`, its workdir)."""
    target = tmp_path / "demo.yaml"
    shutil.copy(REPO / "examples" / "demo.yaml", target)
    (tmp_path / "scratch").mkdir()
    return target
