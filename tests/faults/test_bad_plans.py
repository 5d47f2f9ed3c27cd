"""Scenario 10: bad and hostile plans, through the real `orch` command line.

Bad plans (cycles, unknown dependencies, duplicate ids, unknown agent types, path traversal, a 10 MB description,
ids and names with hostile unicode or shell metacharacters) are rejected by `orch validate`, `orch submit` and
`orch run` with exit code 2 and one line per problem naming the offender, and nothing is stored. Hostile but
allowed text (titles, descriptions) is stored and shown verbatim, and running it injects nothing: arguments
never pass through a shell unless the task's own `command` does, which the source scan at the end checks too.
"""

from __future__ import annotations

import ast
import json
import os
import re
import resource
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess
from typing import Any

import pytest
import sqlalchemy as sa

from orch.intake.plan import quoted
from tests.conftest import SANDBOX_READ
from tests.faults.conftest import RecordFigures
from tests.faults.harness import ORCH, REPO, FaultRun, Store, run_orch

pytestmark = [pytest.mark.faults]

FAKE_CLAUDE = REPO / "tests" / "fakes" / "fake_claude.py"
SOURCE_DIRS = ("orch", "workers", "beat")
SHELL_EXECUTOR = "workers/executors/shell.py"


@dataclass(frozen=True)
class BadPlan:
    name: str
    document: dict[str, Any]
    offenders: tuple[str, ...]  # every problem line names one of these (as orch prints it), and each is named
    problems: int = 1  # how many lines orch must print
    commands: tuple[str, ...] = ("validate", "submit")  # the `orch` commands that must reject it


def task(key: str, **fields: Any) -> dict[str, Any]:
    title = f"task {key}".replace("\x00", "NUL")  # the id is the offender under test, not the title
    return {"id": key, "title": title, "executor": "noop", **fields}


def bad_plans(pwned: Path) -> list[BadPlan]:
    hostile_ids = {
        "id-command-substitution": f"$(touch {pwned})",
        "id-backticks": f"`touch {pwned}`",
        "id-semicolon": f"a;touch {pwned}",
        "id-pipe-and": f"a|touch {pwned}&&x",
        "id-rtl-override": "evil\u202etxt.exe",
        "id-nul": "a\x00b",
        "id-newline": "a\nplan.yaml: task 'b': fake problem line",
        "id-path": "../../etc/passwd",
        "id-unicode-letters": "tâche-ünïcödé",
        "id-too-long": "a" * 129,
    }
    plans = [
        BadPlan(
            "cycle",
            {"name": "cycle", "tasks": [task("a", after=["c"]), task("b", after=["a"]), task("c", after=["b"])]},
            ("dependency cycle: ",),
            commands=("validate", "submit", "run"),
        ),
        BadPlan("unknown-dep", {"name": "dep", "tasks": [task("a"), task("b", after=["ghost"])]}, ("'ghost'",)),
        BadPlan(
            "duplicate-id", {"name": "dup", "tasks": [task("a"), task("b"), task("a")]}, ("duplicate task id 'a'",)
        ),
        BadPlan("unknown-agent", {"name": "agent", "tasks": [task("a", agent="wizard")]}, ("'wizard'",)),
        BadPlan("traversal", {"name": "trav", "tasks": [task("a", files=["../x"])]}, ("'../x'",)),
        BadPlan("traversal-nested", {"name": "nest", "tasks": [task("a", files=["src/../../x"])]}, ("'src/../../x'",)),
        BadPlan("absolute-path", {"name": "abs", "tasks": [task("a", files=["/etc/passwd"])]}, ("'/etc/passwd'",)),
        BadPlan(
            "10MB-description",
            {"name": "huge", "tasks": [task("a", description="x" * (10 * 1024 * 1024))]},
            ("description",),
        ),
        BadPlan("plan-name", {"name": f"$(touch {pwned})", "tasks": [task("a")]}, (quoted(f"$(touch {pwned})"),)),
        BadPlan(
            "agent-metachars",
            {"name": "agentmeta", "tasks": [task("a", agent=f"x; touch {pwned}")]},
            (quoted(f"x; touch {pwned}"),),
            problems=2,  # not a known agent type, and not a valid name at all
        ),
        BadPlan(
            "executor-metachars",
            {"name": "execmeta", "tasks": [task("a", executor=f"sh -c 'touch {pwned}'")]},
            (quoted(f"sh -c 'touch {pwned}'"),),
        ),
        BadPlan(
            "call-metachars",
            {"name": "callmeta", "tasks": [{**task("a"), "executor": "python", "call": f"os:system;touch {pwned}"}]},
            (quoted(f"os:system;touch {pwned}"),),
        ),
        BadPlan(
            "after-metachars",
            {"name": "aftermeta", "tasks": [task("a", after=[f"$(touch {pwned})"])]},
            (quoted(f"$(touch {pwned})"),),
            problems=2,  # not a valid id, and no such task
        ),
    ]
    # Each hostile id alone, then all of them in one plan: one line each, in order, and the plan stored nowhere.
    plans += [
        BadPlan(name, {"name": "ids", "tasks": [task(key)]}, (quoted(key),), commands=("validate",))
        for name, key in hostile_ids.items()
    ]
    plans.append(
        BadPlan(
            "all-hostile-ids",
            {"name": "ids", "tasks": [task(key) for key in hostile_ids.values()]},
            tuple(quoted(key) for key in hostile_ids.values()),
            problems=len(hostile_ids),
            commands=("validate", "submit", "run"),
        )
    )
    return plans


def cli_env(folder: Path) -> dict[str, str]:
    """`orch`'s environment: a fresh SQLite store in `folder` (migrated), the embedded broker for `orch run`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(
        ORCH_HOME=str(folder / ".orch"),
        ORCH_CONFIG_DIR=str(REPO / "config"),
        ORCH_DATABASE_URL=f"sqlite:///{folder / '.orch' / 'store.db'}",  # in ORCH_HOME: agents never see it
        ORCH_TICK_SECONDS="0.2",
        ORCH_RETRY_BACKOFF_BASE="0.1",
        **SANDBOX_READ,
    )
    upgraded = run_orch(["db", "upgrade"], folder, env)
    assert upgraded.returncode == 0, upgraded.stderr
    return env


@pytest.fixture
def cli(fault_run: FaultRun) -> dict[str, str]:
    return cli_env(fault_run.folder)


def pwned_files(folder: Path) -> list[Path]:
    """Files an injected `touch` made: anywhere in the scenario's folder (its workdir, the processes' cwd, the
    absolute target), and in the repository's and this process's working folders."""
    return sorted({*folder.rglob("pwned*"), *REPO.glob("pwned*"), *Path.cwd().glob("pwned*")})


@pytest.mark.timeout(120)
def test_bad_plans_are_rejected_whole_with_one_line_per_problem(
    fault_run: FaultRun, cli: dict[str, str], record_figures: RecordFigures
) -> None:
    folder = fault_run.folder
    pwned = folder / "pwned"
    cases = bad_plans(pwned)
    files: dict[str, Path] = {}
    for case in cases:
        files[case.name] = folder / f"{case.name}.json"  # JSON: a NUL and a newline in an id are plain escapes
        files[case.name].write_text(json.dumps(case.document), encoding="utf-8")

    commands = [(case, command) for case in cases for command in case.commands]
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda c: run_orch([c[1], str(files[c[0].name])], folder, cli, timeout=60), commands))

    failures: list[str] = []
    rejected = 0
    bad_cases: set[str] = set()
    for (case, command), result in zip(commands, results, strict=True):
        lines = result.stderr.splitlines()
        path = str(files[case.name])
        why = []
        if result.returncode != 2:
            why.append(f"exit {result.returncode}")
        if len(lines) != case.problems:
            why.append(f"{len(lines)} lines, expected {case.problems}")
        if not all(line.startswith(f"{path}: ") for line in lines):
            why.append("a line does not start with the plan file")
        if not all(any(o in line for o in case.offenders) for line in lines):
            why.append(f"a line does not name {case.offenders}")
        if not all(any(o in line for line in lines) for o in case.offenders):
            why.append("an offender is not named")
        if len(result.stderr) > 4000:
            why.append(f"{len(result.stderr)} characters of errors (the input echoed back?)")
        if any(c in result.stderr for c in "\x00\u202e\u202c\x1b"):
            why.append("raw control or bidi characters in the output")
        if result.stdout.strip():
            why.append(f"stdout: {result.stdout[:200]!r}")
        if why:
            failures.append(f"orch {command} {case.name}: {'; '.join(why)}\n{result.stderr[:1000]}")
            bad_cases.add(case.name)
        else:
            rejected += 1

    cycle = next(r for (c, cmd), r in zip(commands, results, strict=True) if c.name == "cycle")
    found = re.search(r"dependency cycle: (\w) -> (\w) -> (\w) -> (\w)$", cycle.stderr.strip())
    with Store(cli["ORCH_DATABASE_URL"]) as store:
        stored = store.plan_count()
    injected = pwned_files(folder)
    figures = {
        "plans rejected": (len(cases) - len(bad_cases), len(cases)),
        "orch commands exiting 2 as specified": (rejected, len(commands)),
        "plans stored": stored,
        "injections": len(injected),
    }
    record_figures("10 bad plans: rejected", figures)

    assert not failures, "\n".join(failures)
    assert found and found.group(1) == found.group(4) and set(found.group(1, 2, 3)) == {"a", "b", "c"}, cycle.stderr
    assert stored == 0, "a rejected plan left rows in the store"
    assert not injected, injected


# --- hostile plan files: what the parser and the reader see --------------------------------------------

MEMORY_CAP = 2 * 1024**3  # address space per `orch`: a blow-up fails the test instead of the machine
TASK_YAML = "  - id: a\n    title: t\n"


@dataclass(frozen=True)
class HostileFile:
    name: str
    text: str | None  # None: `make` creates it
    says: str  # what its one problem line must hold
    commands: tuple[str, ...] = ("validate",)


def hostile_files() -> list[HostileFile]:
    return [
        HostileFile("fifo.yaml", None, "is a named pipe (FIFO), not a plan file", ("validate", "submit", "run")),
        HostileFile("zero.yaml", None, "is a character device, not a plan file", ("validate", "submit")),
        HostileFile("deep.json", "[" * 200_000, "nested more than 32 levels deep"),
        HostileFile(
            "bigint.json",
            '{"name": "b", "tasks": [{"id": "a", "title": "t",\n"priority": ' + "9" * 5000 + "}]}",
            "line 2: an integer of more than 4300 digits",
        ),
        HostileFile(
            "bigint.yaml", f"name: b\ntasks:\n{TASK_YAML}    priority: {'9' * 5000}\n", "line 5: an integer of more"
        ),
        HostileFile(  # passed validate and crashed `orch submit` with the document in a traceback
            "binary.yaml",
            "name: b\ntasks:\n  - id: a\n    title: !!binary aGVsbG8=\n",
            "line 4: the tag '!!binary' is not allowed",
            ("validate", "submit", "run"),
        ),
        HostileFile(
            "set.yaml",
            f"name: b\ntasks:\n{TASK_YAML}    after: !!set {{a: null}}\n",
            "line 5: the tag '!!set' is not allowed",
            ("validate", "submit"),
        ),
        HostileFile(
            "dupkey.json",
            '{"name": "d", "tasks": [{"id": "a", "title": "t",\n"command": "true",\n"command": "rm -rf ~"}]}',
            "line 3: duplicate key 'command' (first at line 2)",
            ("validate", "submit"),
        ),
        HostileFile(
            "dupkey.yaml",
            f"name: d\ntasks:\n{TASK_YAML}    title: u\n",
            "line 5: duplicate key 'title' (first at line 4)",
        ),
        HostileFile(  # the review's: 1 MB that reached 3 GB, each alias copied into a problem line
            "aliases.yaml",
            f'name: amp\ntasks:\n{TASK_YAML}    after: [&x "{"x" * (1 << 20)}", {", ".join(["*x"] * 3000)}]\n',
            "holds more than 67,108,864 characters of text (counting each use of a YAML alias)",
            ("validate", "submit"),
        ),
        HostileFile(  # 2 million problem lines were built before 50 were shown
            "unknown-deps.json",
            json.dumps({"name": "u", "tasks": [{"id": "a", "title": "t", "after": ["g"] * 2_000_000}]}),
            "task 'a': field 'after': 2000000 dependencies, more than the 10000 allowed",
        ),
        HostileFile(
            "workdir-root.yaml",
            f"name: w\nworkdir: /\ntasks:\n{TASK_YAML}",
            "workdir '/' resolves to /, outside the allowed roots (the plan's folder ",
            ("validate", "submit", "run"),
        ),
        HostileFile(
            "workdir-up.yaml",
            f"name: w\nworkdir: ../../../../../../../../etc\ntasks:\n{TASK_YAML}",
            "resolves to /etc, outside the allowed roots",
        ),
    ]


def run_orch_capped(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 60) -> CompletedProcess[str]:
    """`orch` as run_orch runs it, its address space capped at MEMORY_CAP."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))

    return subprocess.run(
        [ORCH, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        preexec_fn=cap,  # safe here: the runs are sequential, this process starts no threads
    )


@pytest.mark.timeout(600)
def test_hostile_plan_files_are_one_line_and_exit_2_in_bounded_memory(
    fault_run: FaultRun, cli: dict[str, str], record_figures: RecordFigures
) -> None:
    folder = fault_run.folder
    cases = hostile_files()
    for case in cases:
        path = folder / case.name
        if case.text is not None:
            path.write_text(case.text, encoding="utf-8")
    os.mkfifo(folder / "fifo.yaml")
    (folder / "zero.yaml").symlink_to("/dev/zero")

    failures: list[str] = []
    runs = 0
    for case in cases:
        path = folder / case.name
        for command in case.commands:
            runs += 1
            result = run_orch_capped([command, str(path)], folder, cli)
            lines = result.stderr.splitlines()
            why = []
            if result.returncode != 2:
                why.append(f"exit {result.returncode}")
            if len(lines) != 1:
                why.append(f"{len(lines)} lines")
            elif not lines[0].startswith(f"{path}: ") or case.says not in lines[0] or len(lines[0]) > 1000:
                why.append("the line does not name the file and the problem, briefly")
            if result.stdout.strip():
                why.append(f"stdout: {result.stdout[:200]!r}")
            if why:
                failures.append(f"orch {command} {case.name}: {'; '.join(why)}\n{result.stderr[-1500:]}")
    with Store(cli["ORCH_DATABASE_URL"]) as store:
        stored = store.plan_count()
    record_figures(
        "10 bad plans: hostile files",
        {"orch runs exiting 2 with one line": (runs - len(failures), runs), "plans stored": stored},
    )
    assert not failures, "\n".join(failures)
    assert stored == 0


@pytest.mark.timeout(120)
def test_orch_workdir_roots_widens_where_a_workdir_may_be(fault_run: FaultRun, cli: dict[str, str]) -> None:
    folder = fault_run.folder
    (folder / "plans").mkdir()
    work = folder / "work"
    work.mkdir()  # validate also checks the workdir is a folder on this host
    plan_file = folder / "plans" / "plan.yaml"
    plan_file.write_text(f"name: w\nworkdir: {work}\ntasks:\n{TASK_YAML}", encoding="utf-8")

    refused = run_orch(["validate", str(plan_file)], folder, cli)
    allowed = run_orch(["validate", str(plan_file)], folder, {**cli, "ORCH_WORKDIR_ROOTS": f"/nonexistent:{folder}"})

    assert refused.returncode == 2, refused.stderr
    assert refused.stderr.strip() == (
        f"{plan_file}: line 2: workdir {str(work)!r} resolves to {work.resolve()}, outside the allowed roots "
        f"(the plan's folder {plan_file.parent.resolve()}; ORCH_WORKDIR_ROOTS widens them)"
    )
    assert allowed.returncode == 0, allowed.stderr


HOSTILE = (
    "$(touch {pwned}) `touch {pwned}` ; touch {pwned} | touch {pwned} && touch pwned-relative; "
    "'single' \"double\" \\backslash %s %n {{braces}} ${{HOME}} $ORCH_DATABASE_URL <script>alert(1)</script> "
    "\u202eevil\u202c ünïcödé 🙂 zero\u200bwidth\ttab"
)


MARKUP = "[/bold] [red]not red[/red] [link=file:///etc/passwd]x[/link]"


def hostile_plan(text: str) -> dict[str, Any]:
    return {
        "name": "hostile-text",
        "description": text,
        "tasks": [
            {"id": "noop-text", "title": text, "description": text, "executor": "noop"},
            {
                "id": "shell-text",
                "title": text,
                "description": text,
                # The task's own command is the one place a shell runs; it prints the text, quoted, untouched.
                "command": "printf '%s\\n' 'it said: $(touch pwned-by-own-command-if-unquoted)'",
                "after": ["noop-text"],
            },
            {
                "id": "python-text",
                "title": text,
                "description": text + "\nsecond line",
                "call": "hostile_call:echo",  # copied into the workdir, where the python executor imports from
                "retries": 0,
            },
            {"id": "claude-text", "title": text, "description": text, "executor": "claude-code", "retries": 0},
            # Fails, and its error (the output's last line) looks like console markup.
            {"id": "markup-error", "title": text, "command": f"printf '%s\\n' '{MARKUP}'; exit 3", "retries": 0},
        ],
    }


def python_wrapper(path: Path, script: Path) -> Path:
    """An executable that runs `script` with this interpreter, with no shell in between."""
    path.write_text(f"#!{sys.executable}\nimport runpy\nrunpy.run_path({str(script)!r}, run_name='__main__')\n")
    path.chmod(0o755)
    return path


@dataclass(frozen=True)
class HostileRun:
    folder: Path
    env: dict[str, str]
    text: str
    ran: subprocess.CompletedProcess[str]
    status: subprocess.CompletedProcess[str]
    table: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory: pytest.TempPathFactory) -> HostileRun:
    """One `orch run` of the hostile-text plan (the embedded default: private Redis, SQLite), shared by the tests
    that judge it."""
    folder = tmp_path_factory.mktemp("hostile")
    folder.chmod(0o777)  # the plan's workdir: as root, agents run as orch-agent, which must be able to write it
    text = HOSTILE.format(pwned=folder / "pwned")
    plan_file = folder / "hostile.json"
    plan_file.write_text(json.dumps(hostile_plan(text)), encoding="utf-8")
    claude = python_wrapper(folder / "claude", FAKE_CLAUDE)
    shutil.copy(REPO / "tests" / "faults" / "hostile_call.py", folder / "hostile_call.py")
    # wide enough that the final table does not fold the error cell, so it can be found whole
    env = {**cli_env(folder), "ORCH_CLAUDE_BIN": str(claude), "COLUMNS": "400"}
    validated = run_orch(["validate", str(plan_file)], folder, env)
    assert validated.returncode == 0, validated.stderr
    ran = run_orch(["run", str(plan_file)], folder, env, timeout=90)
    status = run_orch(["status", "hostile-text", "--json"], folder, env)
    table = run_orch(["status", "hostile-text"], folder, env)
    return HostileRun(folder, env, text, ran, status, table)


@pytest.mark.timeout(120)
def test_hostile_text_is_stored_and_shown_verbatim_and_never_executed(
    hostile_run: HostileRun, record_figures: RecordFigures
) -> None:
    folder, text = hostile_run.folder, hostile_run.text
    assert hostile_run.status.returncode == 0, hostile_run.status.stderr + hostile_run.ran.stderr
    report = json.loads(hostile_run.status.stdout)
    plan_id = report["plan"]["id"]
    logs = run_orch(["logs", plan_id, "shell-text"], folder, hostile_run.env)
    with Store(hostile_run.env["ORCH_DATABASE_URL"]) as store:
        snapshot = store.snapshot(plan_id)
        with store.engine.connect() as conn:
            tasks_t, plans_t, attempts_t = store.table("tasks"), store.table("plans"), store.table("attempts")
            descriptions = {key: value for key, value in conn.execute(sa.select(tasks_t.c.key, tasks_t.c.description))}
            plan_description = conn.execute(sa.select(plans_t.c.description)).scalar_one()
            joined = sa.select(tasks_t.c.key, attempts_t.c.result).join(
                attempts_t, attempts_t.c.task_pk == tasks_t.c.pk
            )
            results = {key: value for key, value in conn.execute(joined)}
    shown = {t["id"]: t["title"] for t in report["tasks"]}
    statuses = {t["id"]: t["status"] for t in report["tasks"]}
    verbatim = [key for key, title in shown.items() if title == text]
    echoed = json.loads(results["python-text"] or "null")
    claude_log = next(a.log_path for a in snapshot.attempts if a.log_path and "claude-text" in a.log_path)
    init = json.loads(Path(claude_log).read_text().splitlines()[0])
    assert init["prompt_from"] == "stdin" and text not in " ".join(init["args"])  # never in argv
    prompt = init["prompt"]
    injected = pwned_files(folder)
    figures = {
        "tasks": len(shown),
        "succeeded": sum(1 for status in statuses.values() if status == "succeeded"),
        "titles shown verbatim": (len(verbatim), len(shown)),
        "injections": len(injected),
    }
    record_figures("10 bad plans: hostile text", figures)

    assert not injected, injected
    assert statuses == {**dict.fromkeys(shown, "succeeded"), "markup-error": "failed"}, report
    assert report["plan"]["status"] == "failed"
    assert verbatim == list(shown), {k: v for k, v in shown.items() if v != text}
    assert plan_description == text
    assert descriptions["noop-text"] == text and descriptions["python-text"] == text + "\nsecond line"
    # Through the python executor's context file to the user's function and back, untouched.
    assert echoed == {"task_id": "python-text", "title": text, "description": text + "\nsecond line"}
    # Claude Code got the text as one argument (no shell to split or expand it), and answered.
    assert f"# Task claude-text: {text}" in prompt
    assert results["claude-text"] == f"did: # Task claude-text: {text}"
    # The task's own command ran in its shell: its single quotes kept the text literal.
    assert "it said: $(touch pwned-by-own-command-if-unquoted)" in logs.stdout
    # The failing task's error is its output's last line, stored and shown as it was printed.
    errors = {t["id"]: t["error"] for t in report["tasks"]}
    assert errors["markup-error"] == f"command failed: exit status 3: {MARKUP}"


@pytest.mark.timeout(120)
def test_error_text_with_markup_is_shown_verbatim_by_orch_status(
    hostile_run: HostileRun, record_figures: RecordFigures
) -> None:
    """A task's error is its agent's last output line: arbitrary text, which `orch status` and `orch run`'s final
    table must show as it is, markup-like brackets and all."""
    ran, table = hostile_run.ran, hostile_run.table
    record_figures(
        "10 bad plans: error markup", {"orch run exit": ran.returncode, "orch status exit": table.returncode}
    )
    assert ran.returncode == 1 and "Traceback" not in ran.stderr, ran.stderr[-2000:]  # 1: the plan failed
    assert table.returncode == 0, table.stderr[-2000:]
    assert MARKUP in table.stdout.replace("\n", ""), table.stdout


def scan_source() -> tuple[set[str], list[str]]:
    """Files of orch/, workers/ and beat/ that invoke a shell, and every unsafe construct found."""
    shell_files: set[str] = set()
    problems: list[str] = []
    banned = {
        ("os", "system"),
        ("os", "popen"),
        ("subprocess", "getoutput"),
        ("subprocess", "getstatusoutput"),
        ("pty", "spawn"),
        ("os", "execlp"),
        ("os", "execvp"),
        ("os", "spawnlp"),
        ("os", "spawnvp"),
    }
    for directory in SOURCE_DIRS:
        for path in sorted((REPO / directory).rglob("*.py")):
            name = str(path.relative_to(REPO))
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=name)
            for node in ast.walk(tree):
                where = f"{name}:{getattr(node, 'lineno', '?')}"
                if isinstance(node, ast.Constant) and node.value in ("/bin/sh", "/bin/bash", "sh", "bash"):
                    shell_files.add(name)
                if isinstance(node, ast.Call):
                    func = node.func
                    callee = (
                        (func.value.id, func.attr)
                        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                        else None
                    )
                    if callee in banned:
                        problems.append(f"{where}: {'.'.join(callee)}()")
                    for keyword in node.keywords:
                        if keyword.arg == "shell" and not (
                            isinstance(keyword.value, ast.Constant) and keyword.value.value is False
                        ):
                            problems.append(f"{where}: shell={ast.unparse(keyword.value)}")
                        if keyword.arg == "command" and isinstance(keyword.value, ast.JoinedStr):
                            problems.extend(_unquoted(keyword.value, where))
                if (
                    isinstance(node, ast.Assign)
                    and isinstance(node.value, ast.JoinedStr)
                    and any(isinstance(t, ast.Name) and "command" in t.id for t in node.targets)
                ):
                    problems.extend(_unquoted(node.value, where))
    return shell_files, problems


def _unquoted(value: ast.JoinedStr, where: str) -> list[str]:
    """A command line built by formatting: every interpolated value must be shlex.quote()d."""
    return [
        f"{where}: {ast.unparse(part.value)} goes into a shell command unquoted"
        for part in value.values
        if isinstance(part, ast.FormattedValue)
        and not (
            isinstance(part.value, ast.Call)
            and isinstance(part.value.func, ast.Attribute)
            and part.value.func.attr == "quote"
        )
    ]


def test_only_the_shell_executor_invokes_a_shell(record_figures: RecordFigures) -> None:
    shell_files, problems = scan_source()
    files = sum(1 for d in SOURCE_DIRS for _ in (REPO / d).rglob("*.py"))
    record_figures(
        "10 bad plans: source scan",
        {"files scanned": files, "files invoking a shell": len(shell_files), "unsafe constructs": len(problems)},
    )
    assert shell_files == {SHELL_EXECUTOR}, shell_files
    assert not problems, "\n".join(problems)


@pytest.mark.postgres
@pytest.mark.timeout(60)
def test_text_with_nul_is_rejected_or_stored_verbatim_on_postgres(
    postgres_url: str, fault_run: FaultRun, record_figures: RecordFigures
) -> None:
    folder = fault_run.folder
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(ORCH_HOME=str(folder / ".orch"), ORCH_CONFIG_DIR=str(REPO / "config"), ORCH_DATABASE_URL=postgres_url)
    text = "before\x00after"
    plan_file = folder / "nul.json"
    plan_file.write_text(json.dumps({"name": "nul", "tasks": [{**task("a"), "title": text, "description": text}]}))
    submitted = run_orch(["submit", str(plan_file)], folder, env)
    with Store(postgres_url) as store:
        stored = store.plan_count()
    record_figures(
        "10 bad plans: NUL on PostgreSQL", {"orch submit exit": submitted.returncode, "plans stored": stored}
    )

    if submitted.returncode == 0:  # stored: then shown verbatim
        status = json.loads(run_orch(["status", "nul", "--json"], folder, env).stdout)
        assert status["tasks"][0]["title"] == text
    else:  # rejected: as every bad plan is
        assert submitted.returncode == 2, submitted.stderr[-1500:]
        lines = submitted.stderr.splitlines()
        assert lines == [
            f"{plan_file}: task 'a': field {field!r}: contains a NUL character (\\x00), which no store, argument or "
            f"terminal keeps"
            for field in ("title", "description")
        ]
        assert stored == 0
