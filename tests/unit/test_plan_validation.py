"""Plan parsing and validation: what a valid plan resolves to, and one clear line per problem otherwise."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from orch.errors import PlanInvalid
from orch.intake.agents import load_agents_file, parse_agents
from orch.intake.plan import MAX_TASKS
from orch.intake.plan_validation import load_plan, validate_plan

REGISTRY = load_agents_file(Path(__file__).parents[2] / "config" / "agents.yaml")


def write_plan(folder: Path, document: Any, name: str = "plan.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if name.endswith(".json"):
        path.write_text(json.dumps(document), encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
    return path


def problems_of(path: Path, registry=REGISTRY) -> list[str]:
    with pytest.raises(PlanInvalid) as caught:
        load_plan(path, registry)
    assert caught.value.source == str(path)
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def only_problem(path: Path) -> str:
    problems = problems_of(path)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}: "), problems[0]
    return problems[0]


def unlined(problems: list[str]) -> list[str]:
    """Problems without the line a YAML plan names (`plan.yaml: line 7: task …` -> `plan.yaml: task …`)."""
    return [re.sub(r": line \d+: ", ": ", problem, count=1) for problem in problems]


def plan(*tasks: dict[str, Any], **header: Any) -> dict[str, Any]:
    return {"name": "demo", **header, "tasks": list(tasks)}


def task(key: str, **fields: Any) -> dict[str, Any]:
    return {"id": key, "title": f"Task {key}", **fields}


# --- valid plans -------------------------------------------------------------------------------------

VALID_PLAN = {
    "name": "demo",
    "workdir": "build",
    "defaults": {"timeout": "30m", "retries": 2},
    "tasks": [
        {"id": "api", "title": "Add the users API endpoint"},
        {
            "id": "tests",
            "title": "Write unit tests for the users endpoint",
            "after": ["api"],
            "timeout": "90s",
            "retries": 5,
        },
        {"id": "deploy", "title": "Ship it", "agent": "devops-engineer", "after": ["tests"], "timeout": "2h"},
        {"id": "lint", "title": "Lint the code", "command": "ruff check .", "timeout": 600, "priority": 3},
    ],
}


@pytest.mark.parametrize("name", ["plan.yaml", "plan.json"])
def test_valid_plan_resolves_agents_queues_executors_and_limits(tmp_path: Path, name: str) -> None:
    resolved = load_plan(write_plan(tmp_path, VALID_PLAN, name), REGISTRY)

    by_key = {t.key: t for t in resolved.tasks}
    assert list(by_key) == ["api", "tests", "deploy", "lint"]
    assert [t.seq for t in resolved.tasks] == [0, 1, 2, 3]

    assert by_key["api"].agent == "backend-development"
    assert by_key["tests"].agent == "testing-specialist"
    assert by_key["deploy"].agent == "devops-engineer"
    assert by_key["deploy"].route_reason == "explicit agent: devops-engineer"
    assert by_key["lint"].agent == "general-purpose"
    for t in resolved.tasks:
        assert t.queue == f"agent.{t.agent}"

    assert by_key["lint"].executor == "shell"
    assert by_key["lint"].command == "ruff check ."
    assert by_key["api"].executor == "claude-code"
    assert by_key["api"].command is None

    # defaults apply; a task's own value wins
    assert (by_key["api"].timeout, by_key["api"].retries) == (1800.0, 2)
    assert (by_key["tests"].timeout, by_key["tests"].retries) == (90.0, 5)
    assert by_key["deploy"].timeout == 7200.0
    assert by_key["lint"].timeout == 600.0

    assert by_key["tests"].after == ("api",)
    assert by_key["lint"].priority == 3
    assert resolved.name == "demo"


def test_plan_defaults_beat_the_agent_types_own_limits(tmp_path: Path) -> None:
    registry = parse_agents(
        {
            "defaults": {"timeout": "5m", "retries": 0},
            "agent_types": [{"name": "general-purpose"}],
        }
    )
    document = plan(task("a"), task("b", timeout="10m", retries=7), defaults={"timeout": "30m", "retries": 2})
    resolved = load_plan(write_plan(tmp_path, document), registry)
    a, b = resolved.tasks
    assert (a.timeout, a.retries) == (1800.0, 2)
    assert (b.timeout, b.retries) == (600.0, 7)


def test_without_defaults_the_agent_types_limits_apply(tmp_path: Path) -> None:
    registry = parse_agents({"agent_types": [{"name": "general-purpose", "timeout": "45s", "retries": 9}]})
    (only,) = load_plan(write_plan(tmp_path, plan(task("a"))), registry).tasks
    assert (only.timeout, only.retries) == (45.0, 9)


def test_explicit_executor_wins_over_command(tmp_path: Path) -> None:
    document = plan(task("a", command="true", executor="noop"))
    (only,) = load_plan(write_plan(tmp_path, document), REGISTRY).tasks
    assert only.executor == "noop"


def test_duplicate_dependencies_collapse_in_order(tmp_path: Path) -> None:
    document = plan(task("a"), task("b"), task("c", after=["b", "a", "b"]))
    resolved = load_plan(write_plan(tmp_path, document), REGISTRY)
    assert resolved.tasks[2].after == ("b", "a")


def test_workdir_is_relative_to_the_plan_files_folder_not_the_cwd(tmp_path: Path, monkeypatch) -> None:
    path = write_plan(tmp_path / "plans", plan(task("a"), workdir="build/out"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_plan(path, REGISTRY).workdir == (tmp_path / "plans" / "build" / "out").resolve()

    monkeypatch.chdir(tmp_path)
    assert load_plan(Path("plans/plan.yaml"), REGISTRY).workdir == (tmp_path / "plans" / "build" / "out").resolve()


def test_default_workdir_is_the_plan_files_folder(tmp_path: Path) -> None:
    path = write_plan(tmp_path / "plans", plan(task("a")))
    assert load_plan(path, REGISTRY).workdir == (tmp_path / "plans").resolve()


def test_absolute_workdir_is_kept_inside_the_allowed_roots(tmp_path: Path) -> None:
    target = (tmp_path / "abs").resolve()
    path = write_plan(tmp_path / "plans", plan(task("a"), workdir=str(target)))
    assert load_plan(path, REGISTRY, roots=[tmp_path.resolve()]).workdir == target
    inside = (tmp_path / "plans" / "abs").resolve()
    path = write_plan(tmp_path / "plans", plan(task("a"), workdir=str(inside)))
    assert load_plan(path, REGISTRY).workdir == inside


# --- one line per problem ----------------------------------------------------------------------------

REJECTED = {
    "unknown top-level field": (
        plan(task("a"), owner="me"),
        "unknown field 'owner'",
    ),
    "unknown task field": (
        plan(task("a"), task("b", dependz=["a"])),
        "task 'b': unknown field 'dependz'",
    ),
    "duplicate id": (
        plan(task("a"), task("b"), task("a")),
        "tasks[2]: duplicate task id 'a' (first at tasks[0])",
    ),
    "unknown dependency": (
        plan(task("a"), task("b", after=["a", "ghost"])),
        "task 'b': depends on unknown task 'ghost'",
    ),
    "unknown agent type": (
        plan(task("a", agent="wizard")),
        "task 'a': unknown agent type 'wizard'",
    ),
    "absolute file": (
        plan(task("a", files=["src/ok.py", "/etc/passwd"])),
        ("task 'a': field 'files[1]'", "'/etc/passwd' is absolute"),
    ),
    "windows drive file": (
        plan(task("a", files=["C:/x.txt"])),
        ("task 'a': field 'files[0]'", "'C:/x.txt' is absolute"),
    ),
    "dot-dot in file": (
        plan(task("a", files=["src/../../secret"])),
        ("task 'a': field 'files[0]'", "'src/../../secret' contains '..'"),
    ),
    "bad id characters": (
        plan(task("bad id!")),
        "task 'bad id!': field 'id': 'bad id!' is not allowed",
    ),
    "missing title": (
        plan({"id": "a"}),
        "task 'a': missing required field 'title'",
    ),
    "empty title": (
        plan(task("a", title="")),
        "task 'a': field 'title': must not be empty",
    ),
    "timeout over 24h": (
        plan(task("a", timeout="25h")),
        "task 'a': field 'timeout': must be at most 86400",
    ),
    "timeout nan": (
        plan(task("a", timeout="nan")),
        "task 'a': field 'timeout': ",
    ),
    "timeout zero": (
        plan(task("a", timeout=0)),
        "task 'a': field 'timeout': must be at least 1",
    ),
    "timeout not a duration": (
        plan(task("a", timeout="soon")),
        "task 'a': field 'timeout': not a duration: 'soon'",
    ),
    "unknown executor": (
        plan(task("a", executor="telepathy")),
        "task 'a': field 'executor': unknown executor 'telepathy'",
    ),
    "missing tasks": (
        {"name": "demo"},
        "missing required field 'tasks'",
    ),
    "not a mapping": (
        ["just", "a", "list"],
        "a plan is a mapping with 'name' and 'tasks'",
    ),
}


@pytest.mark.parametrize(("document", "offender"), REJECTED.values(), ids=REJECTED.keys())
def test_each_problem_is_one_line_naming_the_file_and_the_offender(tmp_path: Path, document, offender) -> None:
    path = write_plan(tmp_path, document)
    problem = only_problem(path)
    for fragment in (offender,) if isinstance(offender, str) else offender:
        assert fragment in problem


def test_bad_dependency_id_is_named(tmp_path: Path) -> None:
    path = write_plan(tmp_path, plan(task("a"), task("b", after=["a/b"])))
    problems = unlined(problems_of(path))
    assert all(p.startswith(f"{path}: task 'b': ") for p in problems), problems
    assert any("'a/b' is not allowed" in p for p in problems), problems


def test_every_bad_file_pattern_of_a_task_is_reported(tmp_path: Path) -> None:
    path = write_plan(tmp_path, plan(task("a", files=["/abs", "ok/*.py", "../up"])))
    problems = problems_of(path)
    assert len(problems) == 2, problems
    assert "'/abs' is absolute" in problems[0]
    assert "'../up' contains '..'" in problems[1]


def test_cycle_is_printed_in_run_order(tmp_path: Path) -> None:
    document = plan(task("a", after=["c"]), task("b", after=["a"]), task("c", after=["b"]), task("d", after=["a"]))
    path = write_plan(tmp_path, document)
    assert only_problem(path) == f"{path}: dependency cycle: a -> b -> c -> a"


def test_self_dependency_is_a_cycle(tmp_path: Path) -> None:
    path = write_plan(tmp_path, plan(task("a", after=["a"])))
    assert only_problem(path) == f"{path}: dependency cycle: a -> a"


def test_a_dependant_may_be_listed_before_its_dependency(tmp_path: Path) -> None:
    path = write_plan(tmp_path, plan(task("late", after=["early"]), task("early")))
    loaded = load_plan(path, REGISTRY)
    assert [(t.key, t.after) for t in loaded.tasks] == [("late", ("early",)), ("early", ())]


def test_several_problems_give_several_lines(tmp_path: Path) -> None:
    document = plan(
        task("a", agent="wizard"),
        task("b", after=["ghost"]),
        task("c", dependz=["a"]),
        task("a"),
        owner=None,
    )
    path = write_plan(tmp_path, document)
    # a bad header hides nothing: its problem first, then every task's
    problems = unlined(problems_of(path))
    assert problems[0] == f"{path}: unknown field 'owner'"
    assert len(problems) == 5, problems
    assert all(p.startswith(f"{path}: ") for p in problems)
    joined = "\n".join(problems)
    for offender in ("unknown field 'dependz'", "duplicate task id 'a'", "unknown task 'ghost'", "'wizard'"):
        assert offender in joined


def test_too_many_tasks_is_rejected(tmp_path: Path) -> None:
    document = plan(*({"id": f"t{i}", "title": "t"} for i in range(MAX_TASKS + 1)))
    with pytest.raises(PlanInvalid) as caught:
        validate_plan(document, REGISTRY, source="huge.json", base_dir=tmp_path)
    (problem,) = caught.value.problems
    assert problem.startswith("huge.json: field 'tasks': ")
    assert f"at most {MAX_TASKS}" in problem


def test_invalid_yaml_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("name: demo\ntasks:\n  - id: a\n    title: t\n   - id: b\n", encoding="utf-8")
    problem = only_problem(path)
    assert problem.startswith(f"{path}: line 5: invalid YAML: ")


def test_yaml_tab_indentation_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "plan.yml"
    path.write_text("name: demo\ntasks:\n\t- id: a\n", encoding="utf-8")
    assert only_problem(path).startswith(f"{path}: line 3: invalid YAML: ")


def test_invalid_json_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text('{"name": "demo",\n "tasks": [\n  {"id": "a",}\n]}', encoding="utf-8")
    assert only_problem(path).startswith(f"{path}: line 3: invalid JSON: ")


def test_missing_file_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert "cannot read plan" in only_problem(path)


def test_too_long_agent_name_states_the_agent_name_limit(tmp_path: Path) -> None:
    path = write_plan(tmp_path, plan(task("a", agent="x" * 65)))
    problems = problems_of(path)
    assert any("at most 64" in p for p in problems), problems


# --- scale -------------------------------------------------------------------------------------------


def test_a_100k_task_json_plan_validates(tmp_path: Path) -> None:
    assert MAX_TASKS == 100_000
    tasks = []
    for i in range(MAX_TASKS):
        after = [f"t{i - 1}"] if i else []
        if i >= 100 and i % 10 == 0:
            after.append(f"t{i - 100}")  # a few longer edges: a layered DAG rather than a bare chain
        tasks.append({"id": f"t{i}", "title": f"Write unit tests for module {i}", "after": after})
    path = write_plan(tmp_path, {"name": "big", "tasks": tasks}, "big.json")

    resolved = load_plan(path, REGISTRY)

    assert len(resolved.tasks) == 100_000
    assert resolved.tasks[-1].after == ("t99998",)
    assert resolved.tasks[99_990].after == ("t99989", "t99890")


def test_a_long_list_of_problems_is_cut_with_a_count(tmp_path: Path) -> None:
    document = plan(*(task(f"t{i}", after=["ghost"]) for i in range(60)))
    path = write_plan(tmp_path, document)
    problems = problems_of(path)
    assert len(problems) == 51
    assert problems[-1] == f"{path}: ... and 10 more problems"


def test_one_problem_past_the_cut_is_one_problem(tmp_path: Path) -> None:
    document = plan(*(task(f"t{i}", after=["ghost"]) for i in range(51)))
    path = write_plan(tmp_path, document)
    assert problems_of(path)[-1] == f"{path}: ... and 1 more problem"  # not "1 more problems"


# --- issue 14, point 11: validation's rough edges -------------------------------------------------------------


def test_a_bad_plan_name_does_not_hide_the_tasks_problems(tmp_path: Path) -> None:
    path = write_plan(tmp_path, {"name": "bad name!", "tasks": [task("a", agent="wizard"), task("b", after=["x"])]})
    problems = unlined(problems_of(path))
    assert len(problems) == 3, problems
    assert problems[0].startswith(f"{path}: field 'name': 'bad name!' is not allowed")
    assert any("task 'a': unknown agent type 'wizard'" in p for p in problems), problems
    assert any("task 'b': depends on unknown task 'x'" in p for p in problems), problems


def test_a_bad_default_is_reported_once_naming_defaults_dot_field(tmp_path: Path) -> None:
    path = write_plan(tmp_path, plan(task("a"), task("b"), task("c", timeout="1h"), defaults={"timeout": 86401}))
    assert unlined(problems_of(path)) == [f"{path}: field 'defaults.timeout': must be at most 86400"]


@pytest.mark.parametrize(
    ("written", "meant"),
    [("comand", "command"), ("titel", "title"), ("dependsOn", "after"), ("depends_on", "after"), ("retry", "retries")],
)
def test_a_misspelled_task_field_gets_a_did_you_mean(tmp_path: Path, written: str, meant: str) -> None:
    path = write_plan(tmp_path, plan(task("a"), {"id": "b", "title": "x", written: "y"}))
    assert unlined([only_problem(path)]) == [f"{path}: task 'b': unknown field {written!r} (did you mean {meant!r}?)"]


def test_a_misspelled_default_or_header_field_gets_a_did_you_mean(tmp_path: Path) -> None:
    path = write_plan(tmp_path, {"name": "p", "tasks": [task("a")], "defualts": {}, "defaults": {"retires": 1}})
    assert unlined(problems_of(path)) == [
        f"{path}: unknown field 'defualts' (did you mean 'defaults'?)",
        f"{path}: unknown field 'defaults.retires' (did you mean 'retries'?)",
    ]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"timeout": 0}, "task 'a': field 'timeout': must be at least 1"),
        ({"retries": "many"}, "task 'a': field 'retries': must be a whole number, not 'many'"),
        ({"priority": 2_000_000}, "task 'a': field 'priority': must be at most 1000000"),
        ({"title": ""}, "task 'a': field 'title': must not be empty"),
        ({"after": "b"}, "task 'a': field 'after': must be a list, not 'b'"),
        ({"scope": "tight"}, "task 'a': field 'scope': must be 'loose' or 'strict', not 'tight'"),
        ({"budget": {"usd": -1}}, "task 'a': field 'budget.usd': must be more than 0"),
        ({"files": ["ok", 3]}, "task 'a': field 'files[1]': must be text, not 3"),
    ],
)
def test_pydantic_errors_read_in_orchs_words(tmp_path: Path, fields: dict[str, Any], expected: str) -> None:
    path = write_plan(tmp_path, plan(task("a", **fields)))
    (problem,) = unlined([only_problem(path)])
    assert problem == f"{path}: {expected}"
    assert "Input should" not in problem and "Value error" not in problem


def test_a_yaml_plans_problems_name_their_lines(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text(
        "name: lines\n"  # 1
        "defaults:\n"  # 2
        "  timeout: 0\n"  # 3
        "tasks:\n"  # 4
        "  - id: a\n"  # 5
        "    title: first\n"  # 6
        "    comand: make\n"  # 7
        "  - id: b\n"  # 8
        "    title: second\n"  # 9
        "    after: [ghost]\n"  # 10
        "    agent: wizard\n"  # 11
        "    retries: -1\n",  # 12
        encoding="utf-8",
    )
    problems = problems_of(path)
    assert problems[:2] == [
        f"{path}: line 3: field 'defaults.timeout': must be at least 1",
        f"{path}: line 7: task 'a': unknown field 'comand' (did you mean 'command'?)",
    ]
    assert set(problems[2:]) == {
        f"{path}: line 11: task 'b': unknown agent type 'wizard' (known: {', '.join(REGISTRY.names)})",
        f"{path}: line 12: task 'b': field 'retries': must be at least 0",
        f"{path}: line 10: task 'b': depends on unknown task 'ghost'",
    }
