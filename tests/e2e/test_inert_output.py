"""Escape sequences from a plan and an agent reach no terminal: a real `orch run` of a JSON plan whose title holds
OSC and CSI sequences and a bidi override, and whose shell task prints the review's spoof (retitle the window,
erase the line, print a green "succeeded") then fails. Every view of it (`orch run`, `status`, `watch`, `graph`,
`logs`, `report`), piped and on a pseudo-terminal, shows those characters as visible escapes; `orch logs --raw`
gives the bytes back unchanged."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.conftest import ORCH, Processes, orch_env, run_orch
from tests.e2e.test_watch import Terminal
from tests.helpers import wait_for

SPOOF = b"\x1b]0;PWNED\x07\x1b[2K\r\x1b[32msucceeded\x1b[0m"
SPOOF_SHOWN = "\\x1b]0;PWNED\\x07\\x1b[2K\\r\\x1b[32msucceeded\\x1b[0m"
TITLE = "T1 \x1b]0;X\x07\x1b[2J \u202eevil title"
TITLE_SHOWN = "T1 \\x1b]0;X\\x07\\x1b[2J \\u202eevil title"
PRINT_SPOOF = "printf '\\033]0;PWNED\\007\\033[2K\\r\\033[32msucceeded\\033[0m\\n'"
PLAN = {
    "name": "inert",
    "description": "a plan whose texts try to drive the terminal \x1b]0;D\x07",
    "tasks": [
        {"id": "spoof", "title": TITLE, "agent": "general-purpose", "retries": 0, "command": f"{PRINT_SPOOF}; exit 1"},
        {"id": "plain", "title": "prints it and succeeds \u202e", "agent": "general-purpose", "command": PRINT_SPOOF},
    ],
}
FIRST_LINE = f"€ {SPOOF_SHOWN} a0\n"  # of the task that orch logs -f follows
BIDI_CONTROLS = {"LRE", "RLE", "PDF", "LRO", "RLO", "LRI", "RLI", "FSI", "PDI"}


def raw_controls(output: bytes) -> list[str]:
    """Every character of `output` that could act on a terminal rather than show as itself (newline and tab
    aside): what a view that is piped must never print."""
    return [
        hex(ord(c))
        for c in output.decode("utf-8", "replace")
        if (unicodedata.category(c) == "Cc" and c not in "\n\t") or unicodedata.bidirectional(c) in BIDI_CONTROLS
    ]


def assert_nothing_of_the_plan_drives(screen: bytes) -> None:
    """On a terminal rich styles its own text with CSI sequences; nothing else may be raw there: no BEL, no OSC,
    no 8-bit control, no bidi override, no screen clear."""
    for forbidden in (b"\x07", b"\x1b]", "\u202e".encode(), b"\xc2\x9b", b"\x1b[2J", b"\x1b[2K\r\x1b[32msucceeded"):
        assert forbidden not in screen, (forbidden, screen)


@dataclass(frozen=True)
class Ran:
    home: Path
    env: dict[str, str]
    plan_file: Path
    piped: subprocess.CompletedProcess[bytes]
    on_terminal: bytes


def run_bytes(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([ORCH, *args], cwd=cwd, env=env, capture_output=True, timeout=180, stdin=subprocess.DEVNULL)


def on_terminal(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, bytes]:
    terminal = Terminal([ORCH, *args], {**env, "TERM": "xterm-256color", "COLUMNS": "120"}, cwd)
    try:
        wait_for(lambda: terminal.process.poll() is not None, 180, f"orch {' '.join(args)} on a terminal to exit")
    finally:
        terminal.close()
    return terminal.process.returncode, b"".join(terminal.chunks)


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Ran:
    """The plan run twice by `orch run`: piped, then on a terminal (its live view)."""
    folder = tmp_path_factory.mktemp("inert")
    folder.chmod(0o777)  # the plan's workdir: as root, agents run as orch-agent, which must be able to write it
    plan_file = folder / "inert.json"
    plan_file.write_text(json.dumps(PLAN))  # ASCII JSON: the control characters are \\u escapes in the file
    env = orch_env(folder, COLUMNS="200")
    piped = run_bytes(["run", str(plan_file)], folder, env)
    assert piped.returncode == 1, piped.stderr  # the spoof task failed
    code, screen = on_terminal(["run", str(plan_file)], folder, env)
    assert code == 1, screen
    return Ran(folder / ".orch", env, plan_file, piped, screen)


def test_orch_run_shows_the_plan_and_the_agent_inert_piped_and_on_a_terminal(ran: Ran) -> None:
    assert not raw_controls(ran.piped.stdout) and not raw_controls(ran.piped.stderr)
    out = ran.piped.stdout.decode()
    assert "\\x1b[32msucceeded\\x1b[0m" in out  # the failed task's error, as visible escapes
    events = ran.piped.stderr.decode()
    assert "task spoof #1: running -> failed  (command failed: exit status 1: \\x1b[32msucceeded\\x1b[0m " in events
    assert_nothing_of_the_plan_drives(ran.on_terminal)
    assert b"\\x1b[32msucceeded\\x1b[0m" in ran.on_terminal


@pytest.mark.parametrize("args", [["status"], ["status", "inert"], ["watch", "inert"], ["graph", "inert"]])
def test_views_of_the_stored_plan_are_inert_piped_and_on_a_terminal(ran: Ran, args: list[str]) -> None:
    piped = run_bytes(args, ran.home.parent, ran.env)
    assert piped.returncode in (0, 1), piped.stderr
    assert not raw_controls(piped.stdout) and not raw_controls(piped.stderr), piped.stdout
    code, screen = on_terminal(args, ran.home.parent, ran.env)
    assert code == piped.returncode
    assert_nothing_of_the_plan_drives(screen)
    if args == ["status", "inert"]:
        assert "\\x1b[32msucceeded\\x1b[0m" in piped.stdout.decode()
    if args == ["graph", "inert"]:
        assert TITLE_SHOWN in piped.stdout.decode()


def test_graph_of_the_plan_file_is_inert(ran: Ran) -> None:
    piped = run_bytes(["graph", str(ran.plan_file)], ran.home.parent, ran.env)
    assert piped.returncode == 0 and not raw_controls(piped.stdout + piped.stderr)
    assert TITLE_SHOWN in piped.stdout.decode()
    code, screen = on_terminal(["graph", str(ran.plan_file)], ran.home.parent, ran.env)
    assert code == 0 and b"\x1b" not in screen and TITLE_SHOWN.encode() in screen


def test_logs_are_inert_unless_raw(ran: Ran) -> None:
    shown = run_bytes(["logs", "inert", "spoof"], ran.home.parent, ran.env)
    assert shown.returncode == 0 and shown.stdout == (SPOOF_SHOWN + "\n").encode()
    code, screen = on_terminal(["logs", "inert", "spoof"], ran.home.parent, ran.env)
    assert code == 0 and b"\x1b" not in screen and b"\x07" not in screen and SPOOF_SHOWN.encode() in screen
    raw = run_bytes(["logs", "inert", "spoof", "--raw"], ran.home.parent, ran.env)
    assert raw.returncode == 0 and raw.stdout == SPOOF + b"\n"

    # Without the log file (the attempt ran on another host), the output tail kept in the store, the same way.
    logs = list((ran.home / "logs").glob("inert-*/spoof.1.log"))
    assert len(logs) == 2
    for log in logs:
        log.rename(log.with_suffix(".moved"))
    try:
        tail = run_bytes(["logs", "inert", "spoof"], ran.home.parent, ran.env)
        raw_tail = run_bytes(["logs", "inert", "spoof", "--raw"], ran.home.parent, ran.env)
    finally:
        for log in logs:
            log.with_suffix(".moved").rename(log)
    assert tail.returncode == 0 and b"log file not on this host" in tail.stderr
    assert tail.stdout == (SPOOF_SHOWN + "\n").encode()
    assert raw_tail.returncode == 0 and raw_tail.stdout == SPOOF + b"\n"


def test_the_report_is_inert_as_markdown(ran: Ran) -> None:
    markdown = run_bytes(["report", "inert"], ran.home.parent, ran.env)
    assert markdown.returncode == 0 and not raw_controls(markdown.stdout)
    assert "\\\\x1b\\[32msucceeded\\\\x1b\\[0m" in markdown.stdout.decode()  # Markdown-escaped visible escapes


def test_the_report_and_status_as_json_are_valid_and_hold_nothing_raw(ran: Ran) -> None:
    as_json = run_bytes(["report", "inert", "--format", "json"], ran.home.parent, ran.env)
    assert as_json.returncode == 0 and not raw_controls(as_json.stdout)
    report = json.loads(as_json.stdout)
    tasks = {t["id"]: t for t in report["tasks"]}
    assert tasks["spoof"]["title"] == TITLE and tasks["plain"]["title"] == PLAN["tasks"][1]["title"]  # type: ignore[index]
    assert tasks["spoof"]["error"].endswith("\x1b[32msucceeded\x1b[0m")  # the data itself, unchanged
    status = run_bytes(["status", "inert", "--json"], ran.home.parent, ran.env)
    assert {t["title"] for t in json.loads(status.stdout)["tasks"]} == {TITLE, "prints it and succeeds \u202e"}


def follow_the_log(folder: Path, env: dict[str, str]) -> tuple[bytes, bytes, subprocess.Popen[bytes]]:
    """`orch logs -f` of the running task once its log has its first lines; the test's go is given once it has
    printed the first. Returns the rest of what it printed, its stderr and the process."""

    def first_lines_in_its_log() -> bool:
        logs = run_orch(["logs", "follow", "slow"], folder, env)
        return logs.returncode == 0 and logs.stdout.startswith(FIRST_LINE)

    wait_for(first_lines_in_its_log, 120, "the running task's first lines in its log")
    follow = subprocess.Popen(
        [ORCH, "logs", "follow", "slow", "--follow"],
        cwd=folder,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        bufsize=0,  # unbuffered: the first line read here leaves the rest to communicate()
    )
    try:
        assert follow.stdout is not None
        assert select.select([follow.stdout], [], [], 60)[0], "orch logs -f printed nothing in 60 s"
        assert follow.stdout.readline() == FIRST_LINE.encode()
        (folder / "go").touch()
        rest, errors = follow.communicate(timeout=60)
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.communicate(timeout=10)
    return rest, errors, follow


def test_logs_follow_stays_inert_across_reads_that_split_a_character_or_a_sequence(
    tmp_path: Path, processes: Processes
) -> None:
    # Lines of a "€" and the spoof, enough that the worker's buffered log file is written in blocks that end
    # anywhere (inside a character, inside a sequence); the second half waits for the test's go, so that
    # `orch logs -f` reads the log while the attempt runs.
    line = "printf '\\342\\202\\254 \\033]0;PWNED\\007\\033[2K\\r\\033[32msucceeded\\033[0m %s\\n'"
    lines = "i=0; while [ $i -lt 400 ]; do {line} {half}$i; i=$((i+1)); done"
    command = "; ".join(
        [lines.format(line=line, half="a"), "while [ ! -e go ]; do sleep 0.1; done", lines.format(line=line, half="b")]
    )
    plan = {"name": "follow", "tasks": [{"id": "slow", "title": "prints in pieces", "command": command}]}
    plan_file = tmp_path / "follow.json"
    plan_file.write_text(json.dumps(plan))
    env = orch_env(tmp_path)
    run = processes.start([ORCH, "run", str(plan_file)], tmp_path, env, tmp_path / "run.log")
    try:
        rest, errors, follow = follow_the_log(tmp_path, env)
        assert run.wait(120) == 0
    finally:
        if run.poll() is None:  # a failure above: Ctrl-C, so that orch run cancels the plan and stops its worker
            (tmp_path / "go").touch()
            run.send_signal(signal.SIGINT)
            run.wait(60)
    assert follow.returncode == 0, errors
    expected = "".join(f"€ {SPOOF_SHOWN} {half}{i}\n" for half in "ab" for i in range(400))
    assert FIRST_LINE.encode() + rest == expected.encode()
