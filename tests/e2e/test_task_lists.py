"""Task lists through the CLI as a user meets them, with real processes: `orch run LIST` ticks boxes as a real worker
finishes tasks (every other byte kept), `--watch` applies saved edits while it runs, `orch sync` follows a list
for a deployment (and survives 1,000 rapid edits: no failed sync, no lost edit, the store equal to the file),
`orch inbox` submits dropped files once, and bad lists are one line each, exit 2, nothing written."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ORCH, Processes, orch_env, run_orch
from tests.helpers import wait_for

CHECKLIST = """\
# Launch checklist

Some prose that mentions T001.002 and is no task.

- [ ] T001.001 Write the release notes
- [X] T001.002 Pick a name
- [ ] T001.003 Tag the release (depends on T001.001)
  - a detail bullet, kept as it is
- [ ] T001.004 Announce it — after T001.003
"""


def tasks_json(tasks: list[dict[str, Any]]) -> str:
    return json.dumps({"master": {"tasks": tasks, "metadata": {"created": "2026-12-01", "owner": "me"}}}, indent=2)


def write_atomically(path: Path, text: str) -> None:
    """As an editor saves: a new file renamed over the old one."""
    temporary = path.with_name(f".{path.name}.swp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def status_json(plan: str, cwd: Path, env: dict[str, str]) -> dict[str, Any]:
    shown = run_orch(["status", plan, "--json"], cwd, env)
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)


def test_orch_run_ticks_the_boxes_of_a_checklist_and_keeps_every_other_byte(tmp_path: Path) -> None:
    listed = tmp_path / "launch.md"
    listed.write_bytes(CHECKLIST.replace("\n", "\r\n").encode())
    env = orch_env(tmp_path)

    run = run_orch(["run", str(listed), "--executor", "shell", "--json"], tmp_path, env, timeout=180)
    assert run.returncode == 0, run.stderr
    expected = CHECKLIST.replace("[ ] T001.00", "[X] T001.00").replace("\n", "\r\n")  # the file's case: X
    assert listed.read_bytes() == expected.encode()
    document = json.loads(run.stdout)
    assert document["plan"]["status"] == "succeeded"
    assert document["plan"]["list"]["format"] == "checklist"
    by_id = {task["id"]: task for task in document["tasks"]}
    assert by_id["T001.003"]["after"] == ["T001.001"]  # the prose mention of T001.002 is no edge
    assert by_id["T001.004"]["after"] == ["T001.003"]
    assert by_id["T001.003"]["source"] == {
        "format": "checklist",
        "file": str(listed.resolve()),
        "line": 7,
        "id": "T001.003",
        "status": " ",
    }
    assert by_id["T001.002"]["status"] == "succeeded"  # done in the list: never run
    report = run_orch(["report", document["plan"]["id"], "--format", "json"], tmp_path, env)
    tasks = {task["id"]: task for task in json.loads(report.stdout)["tasks"]}
    assert tasks["T001.002"]["attempts"] == 0 and tasks["T001.002"]["source"]["line"] == 6


@pytest.mark.parametrize(
    ("listed", "problem"),
    [
        ("- [ ] A1 one\n- [ ] A1 two\n", "list.md:2: duplicate task id 'A1' (first at line 1)"),
        ("- [ ] A1 one (depends on A2)\n- [ ] A2 two (depends on A1)\n", "list.md:1: dependency cycle: "),
        ("- [ ] A1 one\n- [ ] A2 two — blocked by: A9\n", "list.md:2: task 'A2' depends on unknown task 'A9'"),
    ],
)
def test_a_bad_list_is_one_line_exit_2_and_nothing_is_written(tmp_path: Path, listed: str, problem: str) -> None:
    path = tmp_path / "list.md"
    path.write_text(listed)
    env = orch_env(tmp_path)
    for command in (["validate"], ["run"], ["submit"], ["import"]):
        result = run_orch([*command, "list.md"], tmp_path, env)
        assert result.returncode == 2, (command, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(problem), (command, result.stderr)
    assert path.read_text() == listed
    assert not (tmp_path / ".orch" / "store.db").exists()


def test_run_watch_applies_saved_edits_while_the_plan_runs(tmp_path: Path, processes: Processes) -> None:
    listed = tmp_path / "tasks.json"
    first = [
        {"id": 1, "title": "Lay out the project", "status": "pending", "dependencies": []},
        {"id": 2, "title": "Design the cache", "status": "deferred", "dependencies": [1], "x-mine": [1, 2]},
        {"id": 3, "title": "Wire the cache", "status": "pending", "dependencies": ["2"]},
    ]
    listed.write_text(tasks_json(first))
    env = orch_env(tmp_path)
    log = tmp_path / "run.log"
    run = processes.start(
        [ORCH, "run", str(listed), "--watch", "--debounce", "0.5", "--executor", "shell"], tmp_path, env, log
    )

    def statuses() -> dict[int, str]:
        tasks = json.loads(listed.read_text())["master"]["tasks"]
        return {task["id"]: task["status"] for task in tasks}

    wait_for(lambda: statuses()[1] == "done", 120, "task 1 ticked done in the file")
    assert statuses() == {1: "done", 2: "deferred", 3: "pending"}  # 3 waits for 2, which the list holds
    current = json.loads(listed.read_text())["master"]["tasks"]
    current[1]["status"] = "pending"  # the user releases 2 and adds 4 after 3
    current.append({"id": 4, "title": "Document it", "status": "pending", "dependencies": [3]})
    write_atomically(listed, tasks_json(current))
    wait_for(lambda: statuses() == {1: "done", 2: "done", 3: "done", 4: "done"}, 120, "2, 3 and 4 done")
    text = listed.read_text()
    assert json.loads(text)["master"]["metadata"] == {"created": "2026-12-01", "owner": "me"}
    assert '"x-mine": [\n          1,\n          2\n        ]' in text  # the user's own key, as written

    plan = "master"  # the plan's name: its latest plan
    document = wait_for(
        lambda: (d := status_json(plan, tmp_path, env))["plan"]["status"] == "succeeded" and d,
        60,
        "the plan to succeed again",
    )
    assert {t["id"]: t["status"] for t in document["tasks"]} == {
        "1": "succeeded",
        "2": "succeeded",
        "3": "succeeded",
        "4": "succeeded",
    }
    assert document["plan"]["list"]["revision"] >= 2
    assert run.poll() is None  # --watch goes on after the plan ends
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=60) == 130
    output = log.read_text()
    assert "revision 2 of plan" in output, output


def checklist(titles: dict[str, str]) -> str:
    return "# Load\n\n" + "".join(f"- [ ] {key} {title}\n" for key, title in titles.items())


def test_orch_sync_survives_a_thousand_rapid_edits_and_ends_equal_to_the_file(
    tmp_path: Path, processes: Processes
) -> None:
    listed = tmp_path / "load.md"
    titles = {f"K{i}": f"task {i} v0" for i in range(20)}
    listed.write_text(checklist(titles))
    env = orch_env(tmp_path)
    log = tmp_path / "sync.log"
    sync = processes.start([ORCH, "sync", str(listed), "--debounce", "0.3"], tmp_path, env, log)
    plan = wait_for(lambda: log.read_text().split("\n")[0].strip() or None, 60, "orch sync to print the plan id")
    next_key = 20
    for edit in range(1_000):
        kind = edit % 4
        if kind == 0:  # add a task
            titles[f"K{next_key}"] = f"task {next_key} v0"
            next_key += 1
        elif kind == 1 and len(titles) > 5:  # remove one
            del titles[sorted(titles)[edit % len(titles)]]
        else:  # retitle one
            key = sorted(titles)[edit % len(titles)]
            titles[key] = f"{titles[key].rsplit(' v', 1)[0]} v{edit}"
        if edit % 2:
            write_atomically(listed, checklist(titles))
        else:
            listed.write_text(checklist(titles))
        if edit % 100 == 99:
            time.sleep(0.6)  # a pause past the debounce: a revision applies mid-stream

    def store_equals_file() -> bool:
        document = status_json(plan, tmp_path, env)
        live = {t["id"]: t["title"] for t in document["tasks"] if not (t["status"] == "cancelled" and t["hold"])}
        return live == titles

    wait_for(store_equals_file, 60, "the store to equal the file")
    sync.send_signal(signal.SIGINT)
    sync.wait(timeout=90)
    output = log.read_text()
    assert "not applied" not in output and "refused" not in output, output
    revisions = [line for line in output.splitlines() if "revision " in line]
    assert len(revisions) >= 5, output


def test_orch_sync_once_applies_the_list_and_writes_states_back(tmp_path: Path) -> None:
    listed = tmp_path / "todo.md"
    listed.write_text("- [ ] A1 first\n- [ ] A2 second (depends on A1)\n")
    env = orch_env(tmp_path)
    first = run_orch(["sync", str(listed), "--once"], tmp_path, env)
    assert first.returncode == 0, first.stderr
    plan = first.stdout.strip()
    listed.write_text("- [x] A1 first\n- [ ] A2 second, renamed (depends on A1)\n- [ ] A3 third\n")  # A1 by hand
    again = run_orch(["sync", str(listed), "--once"], tmp_path, env)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == plan
    assert "added A3" in again.stderr and "changed A2" in again.stderr and "skipped (ticked) A1" in again.stderr
    tasks = {t["id"]: t for t in status_json(plan, tmp_path, env)["tasks"]}
    assert tasks["A1"]["status"] == "succeeded" and tasks["A2"]["title"] == "second, renamed"
    assert tasks["A3"]["status"] == "pending"


def test_orch_inbox_submits_each_dropped_file_once(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "good.md").write_text("- [ ] A1 first\n")
    (inbox / "bad.md").write_text("- [ ] A1 first\n- [ ] A1 again\n")
    (inbox / "notes.txt").write_text("not a plan\n")
    env = orch_env(tmp_path)
    first = run_orch(["inbox", str(inbox), "--once"], tmp_path, env)
    assert first.returncode == 0, first.stderr
    assert (inbox / "submitted" / "good.md").exists() and (inbox / "notes.txt").exists()
    error = (inbox / "rejected" / "bad.md.error").read_text()
    assert "bad.md:2: duplicate task id 'A1' (first at line 1)" in error
    (inbox / "good.md").write_text("- [ ] A1 first\n")  # the same content dropped again
    again = run_orch(["inbox", str(inbox), "--once"], tmp_path, env)
    assert again.returncode == 0, again.stderr
    assert "submitted before" in again.stderr and again.stdout.strip() == ""
    assert (inbox / "submitted" / "good-2.md").exists()


def test_sync_reads_a_list_as_its_plan_was_read_and_refuses_other_flags(tmp_path: Path) -> None:
    listed = tmp_path / "tasks.json"
    tasks = {
        "master": {"tasks": [{"id": 1, "title": "master one", "status": "pending"}]},
        "feature": {"tasks": [{"id": 1, "title": "feature one", "status": "pending"}]},
    }
    listed.write_text(json.dumps(tasks, indent=2))
    env = orch_env(tmp_path)
    submitted = run_orch(["submit", str(listed), "--tag", "feature", "--executor", "noop"], tmp_path, env)
    assert submitted.returncode == 0, submitted.stderr
    plan = submitted.stdout.strip()
    again = run_orch(["sync", str(listed), "--once"], tmp_path, env)  # no flags: read as it was submitted
    assert again.returncode == 0, again.stderr
    assert "revision 2" not in again.stderr
    (only,) = status_json(plan, tmp_path, env)["tasks"]
    assert (only["title"], only["executor"]) == ("feature one", "noop")
    other = run_orch(["sync", str(listed), "--once", "--tag", "master"], tmp_path, env)
    assert other.returncode == 2
    assert f"plan {plan} follows {listed}, read otherwise than --tag master" in other.stderr


def test_following_a_checklist_needs_an_id_on_every_item(tmp_path: Path) -> None:
    listed = tmp_path / "todo.md"
    listed.write_text("- [ ] A1 first\n- [ ] buy milk\n")
    env = orch_env(tmp_path)
    for command in (["run", str(listed), "--watch"], ["sync", str(listed), "--once"]):
        result = run_orch(command, tmp_path, env)
        assert result.returncode == 2, result.stderr
        assert "todo.md:2: this item has no id (orch calls it L2, after its line)" in result.stderr


def test_orch_inbox_never_follows_a_symbolic_link(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    secret = tmp_path / "elsewhere.md"
    secret.write_text("- [ ] A1 not for the inbox\n")
    (inbox / "link.md").symlink_to(secret)
    result = run_orch(["inbox", str(inbox), "--once"], tmp_path, orch_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
    assert "link.md rejected: a symbolic link" in result.stderr
    assert secret.read_text() == "- [ ] A1 not for the inbox\n"


def test_titles_from_a_list_cannot_drive_the_terminal(tmp_path: Path) -> None:
    listed = tmp_path / "todo.md"
    listed.write_text("- [ ] A1 \x1b]0;owned\x07 title \x1b[31mred\n- [ ] A2 \x1b[2J clear (depends on A1)\n")
    env = orch_env(tmp_path)
    for command in (["import", "todo.md", "--explain"], ["validate", "todo.md"]):
        result = run_orch(command, tmp_path, env)
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout + result.stderr and "\x07" not in result.stdout + result.stderr


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_orch_sync_stops_on_a_signal_even_started_with_sigint_ignored(tmp_path: Path, stop: signal.Signals) -> None:
    """As a shell's background job (SIGINT ignored) or under a service manager (SIGTERM): it stops, writes back."""
    listed = tmp_path / "todo.md"
    listed.write_text("- [ ] A1 first\n")
    log = tmp_path / "sync.log"
    with log.open("w") as out:
        sync = subprocess.Popen(
            [ORCH, "sync", str(listed)],
            cwd=tmp_path,
            env=orch_env(tmp_path),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
        )
    try:
        wait_for(lambda: log.read_text().strip(), 60, "orch sync to print the plan id")
        sync.send_signal(stop)
        assert sync.wait(timeout=30) == 130
    finally:
        if sync.poll() is None:
            os.killpg(sync.pid, signal.SIGKILL)
            sync.wait()
