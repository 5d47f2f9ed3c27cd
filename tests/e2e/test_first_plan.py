"""A newcomer's first plan: `orch init` scaffolds one that validates and runs as it is, and the walk-through in
docs/first-plan.md runs as written (its `$ ` commands extracted from the Markdown, each checked for its exit code
and for the output the page shows)."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from orch.cli.scaffold import plan_name_for
from tests.e2e.conftest import BIN, orch_env, run_orch


def test_init_writes_a_commented_plan_that_validates(tmp_path: Path) -> None:
    folder = tmp_path / "My first project!"
    folder.mkdir()
    env = orch_env(tmp_path)
    done = run_orch(["init"], folder, env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "wrote plan.yaml: plan 'My-first-project' with 3 shell tasks, commented"
    text = (folder / "plan.yaml").read_text()
    assert text.count("\n#") + text.count("  # ") > 20  # commented: every field says what it does
    checked = run_orch(["validate", "plan.yaml"], folder, env)
    assert checked.returncode == 0 and "plan 'My-first-project': 3 tasks, 2 dependencies" in checked.stdout


def test_init_never_overwrites_unless_forced(tmp_path: Path) -> None:
    env = orch_env(tmp_path)
    plan = tmp_path / "plan.yaml"
    plan.write_text("mine\n")
    refused = run_orch(["init"], tmp_path, env)
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr == "orch: plan.yaml already exists (--force overwrites it)\n"
    assert plan.read_text() == "mine\n"
    forced = run_orch(["init", "--force", "--name", "demo"], tmp_path, env)
    assert forced.returncode == 0 and "name: demo " in plan.read_text()


def test_init_names_a_bad_name_or_folder_in_one_line(tmp_path: Path) -> None:
    env = orch_env(tmp_path)
    bad_name = run_orch(["init", "--name", "no spaces"], tmp_path, env)
    assert bad_name.returncode == 2 and bad_name.stderr.count("\n") == 1 and "'no spaces'" in bad_name.stderr
    no_folder = run_orch(["init", "nowhere/plan.yaml"], tmp_path, env)
    assert no_folder.returncode == 2 and "'nowhere' does not exist" in no_folder.stderr
    assert not (tmp_path / "nowhere").exists() and not (tmp_path / "plan.yaml").exists()


def test_plan_names_from_folder_names() -> None:
    assert plan_name_for(Path("/x/hello")) == "hello"
    assert plan_name_for(Path("/x/My project (v2)")) == "My-project-v2"
    assert plan_name_for(Path("/x/...")) == "my-plan"
    assert plan_name_for(Path("/")) == "my-plan"


# ---- docs/first-plan.md, run as written ----

WALK_THROUGH = Path(__file__).resolve().parents[2] / "docs" / "first-plan.md"
EXIT_NOTE = re.compile(r"#\s*exit (\d+)\s*$")
VARYING = [
    (re.compile(r"\b([A-Za-z0-9._-]+)-[0-9a-f]{8}\b"), r"\1-<id>"),  # plan ids
    (re.compile(r"\b\d{4}-\d\d-\d\d\b"), "<date>"),
    (re.compile(r"\b\d\d:\d\d:\d\d\b"), "<time>"),
    (re.compile(r"\borch-run-\d+@\S+?(?=\)|\s|$)"), "<worker>"),
    (re.compile(r"\b\d+(\.\d+)?(ms|s|m|h)\b"), "<duration>"),
]


@dataclass
class Step:
    command: str
    expected: list[str] = field(default_factory=list)
    exit_code: int = 0
    only_as_root: bool = False


def walk_through_steps(markdown: str) -> list[Step]:
    """The `$ ` lines of the page's console blocks, each with the lines shown after it."""
    steps: list[Step] = []
    for block in re.findall(r"^```console\n(.*?)^```", markdown, flags=re.M | re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                command = line[2:]
                note = EXIT_NOTE.search(command)
                code = int(note.group(1)) if note else 0
                steps.append(Step(command, exit_code=code, only_as_root="only as root" in command))
            else:
                steps[-1].expected.append(line)
    return steps


def normalized(line: str) -> str:
    for pattern, replacement in VARYING:
        line = pattern.sub(replacement, line)
    return " ".join(line.split())


def shows(expected: list[str], output: str) -> str | None:
    """None if `output` shows the expected lines in order (a line with `…` matches a line it begins, `…` alone
    anything); else the first expected line not found."""
    actual = [normalized(line) for line in output.splitlines()]
    position = 0
    for want in expected:
        if want.strip() == "…":
            continue
        head, ellipsis, _ = normalized(want).partition("…")
        head = head.strip()
        while position < len(actual) and not matches(actual[position], head, prefix=bool(ellipsis)):
            position += 1
        if position == len(actual):
            return want
        position += 1
    return None


def matches(line: str, head: str, prefix: bool) -> bool:
    return line.startswith(head) if prefix else line == head


def run_steps(steps: list[Step], folder: Path, env: dict[str, str]) -> list[tuple[str, int]]:
    """Every step in one bash session (so `cd` carries on), each step's output and exit code apart."""
    script = ["exec 2>&1 </dev/null"]
    for number, step in enumerate(steps):
        command = f'[ "$(id -u)" != 0 ] || {step.command}' if step.only_as_root else step.command
        script += [f"printf '\\n@@start {number}\\n'", command, f"printf '\\n@@end {number} %s\\n' $?"]
    bash = ["bash", "-c", "\n".join(script)]
    done = subprocess.run(bash, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    results = re.findall(r"@@start (\d+)\n(.*?)\n@@end \1 (\d+)\n", done.stdout, flags=re.S)
    assert len(results) == len(steps), done.stdout[-2000:]
    return [(output, int(code)) for _, output, code in results]


def test_the_first_plan_walk_through_runs_as_written(tmp_path: Path) -> None:
    steps = walk_through_steps(WALK_THROUGH.read_text(encoding="utf-8"))
    assert any(step.command == "orch init" for step in steps) and len(steps) >= 10
    folder = tmp_path / "hello"
    for step in steps:
        step.command = step.command.replace("/tmp/hello", str(folder))
    env = orch_env(tmp_path)
    del env["ORCH_HOME"]  # the page relies on the default: .orch in the folder it runs in
    env.update(HOME=str(tmp_path), PATH=f"{BIN}:{env['PATH']}")
    for step, (output, code) in zip(steps, run_steps(steps, tmp_path, env), strict=True):
        assert code == step.exit_code, f"$ {step.command}\n{output}"
        missing = shows(step.expected, output)
        assert missing is None, f"$ {step.command}: the page shows {missing!r}; it printed:\n{output}"


def test_the_walk_through_check_catches_output_the_page_does_not_show() -> None:
    shown = ["hello succeeded  3/3 done  succeeded: 3", "…", "## orch report: …"]
    assert shows(shown, "hello succeeded 3/3 done  succeeded: 3\nx\n## orch report: `hello`\n") is None
    assert shows(shown, "hello failed  2/3 done\n## orch report: `hello`\n") == shown[0]
    assert shows(["23:00:27 task test #1: running -> succeeded"], "09:01:02 task test #1: running -> succeeded") is None
    assert shows(["plan hello-ee89fa1b"], "plan hello-0123abcd") is None
