"""Hostile plan files: whatever the input, one clear line naming the file (and the line, the task or the value),
in bounded time and memory, and never a traceback."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from orch.errors import PlanInvalid
from orch.intake import plan_document
from orch.intake.agents import load_agents_file
from orch.intake.plan import MAX_DEPENDENCIES_PER_TASK, MAX_FILE_PATTERN_CHARS, MAX_FILE_PATTERN_SETS, MAX_QUOTED_CHARS
from orch.intake.plan_document import MAX_DOCUMENT_CHARS, MAX_MAPPING_KEYS, MAX_NESTING, MAX_PLAN_BYTES
from orch.intake.plan_validation import MAX_PROBLEMS_SHOWN, WorkdirRoots, load_plan, validate_plan

REGISTRY = load_agents_file(Path(__file__).parents[2] / "config" / "agents.yaml")
TASK = "  - id: a\n    title: t\n"


def problems_of(path: Path, roots: list[Path] | None = None) -> list[str]:
    with pytest.raises(PlanInvalid) as caught:
        load_plan(path, REGISTRY, roots=roots or [])
    return caught.value.problems


def only_problem(path: Path, roots: list[Path] | None = None) -> str:
    problems = problems_of(path, roots)
    assert len(problems) == 1, [p[:300] for p in problems[:5]]
    assert problems[0].startswith(f"{path}: "), problems[0][:300]
    assert len(problems[0]) < 1000, problems[0][:300]
    return problems[0]


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def write_json(folder: Path, name: str, document: Any) -> Path:
    return write(folder, name, json.dumps(document))


def tasks(*items: dict[str, Any], **header: Any) -> dict[str, Any]:
    return {"name": "p", **header, "tasks": list(items)}


# --- only regular files, and only so much of them -----------------------------------------------------


@pytest.mark.timeout(10)
def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "plan.yaml"
    os.mkfifo(fifo)
    assert only_problem(fifo) == f"{fifo}: is a named pipe (FIFO), not a plan file"


@pytest.mark.timeout(10)
def test_dev_zero_behind_a_symlink_is_refused_before_a_byte_is_read(tmp_path: Path) -> None:
    link = tmp_path / "plan.yaml"
    link.symlink_to("/dev/zero")  # its size says 0, and reading it never ends
    assert only_problem(link) == f"{link}: is a character device, not a plan file"


def test_a_socket_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(path))
        assert only_problem(path) == f"{path}: is a socket, not a plan file"


def test_a_folder_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "plan.yaml"
    folder.mkdir()
    assert only_problem(folder) == f"{folder}: is a folder, not a plan file"


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    with path.open("wb") as sparse:
        sparse.truncate(MAX_PLAN_BYTES + 1)
    assert only_problem(path) == f"{path}: {MAX_PLAN_BYTES + 1} bytes is over the {MAX_PLAN_BYTES} byte limit"


# --- nesting and numbers --------------------------------------------------------------------------------


def test_json_nested_past_the_parsers_recursion_limit_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, "plan.json", "[" * 200_000)
    assert only_problem(path) == f"{path}: nested more than {MAX_NESTING} levels deep"


@pytest.mark.parametrize("name", ["plan.json", "plan.yaml"])
def test_a_document_nested_deeper_than_a_plan_needs_is_refused(tmp_path: Path, name: str) -> None:
    deep = "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1)
    path = write(tmp_path, name, '{"name": "p", "tasks": [{"id": "a", "title": "t", "description": ' + deep + "}]}")
    assert only_problem(path) == f"{path}: nested more than {MAX_NESTING} levels deep"


def test_json_integer_beyond_pythons_digit_limit_names_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path, "plan.json", '{"name": "p",\n "tasks": [{"id": "a", "title": "t",\n "priority": ' + "9" * 5000 + "}]}"
    )
    assert only_problem(path) == f"{path}: line 3: an integer of more than 4300 digits"


@pytest.mark.parametrize("digits", ["9" * 5000, "1" + ":59" * 100_000])  # decimal, and YAML's base 60
def test_yaml_integer_beyond_pythons_digit_limit_names_its_line(tmp_path: Path, digits: str) -> None:
    path = write(tmp_path, "plan.yaml", f"name: p\ntasks:\n{TASK}    priority: {digits}\n")
    assert only_problem(path) == f"{path}: line 5: an integer of more than 4300 digits"


def test_a_timeout_beyond_any_float_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = write(
        tmp_path, "plan.json", '{"name": "p", "tasks": [{"id": "a", "title": "t", "timeout": ' + "9" * 400 + "}]}"
    )
    problem = only_problem(path)
    assert problem.startswith(f"{path}: task 'a': field 'timeout': not a duration: 99999")
    assert problem.endswith("… is beyond any timeout")


# --- YAML gives only what JSON has -----------------------------------------------------------------------

TAGGED = {
    "binary": ("description: !!binary aGVsbG8=", "!!binary"),
    "set": ("after: !!set {a: null}", "!!set"),
    "omap": ("budget: !!omap [usd: 1]", "!!omap"),
    "pairs": ("budget: !!pairs [usd: 1]", "!!pairs"),
    "timestamp": ("description: !!timestamp 2024-01-01", "!!timestamp"),
    "python object": ("command: !!python/object/apply:os.system [echo hi]", "!!python/object/apply:os.system"),
    "local tag": ("description: !secret t", "!secret"),
}


@pytest.mark.parametrize(("line", "tag"), TAGGED.values(), ids=TAGGED.keys())
def test_yaml_tags_for_values_json_lacks_are_refused_naming_the_line(tmp_path: Path, line: str, tag: str) -> None:
    path = write(tmp_path, "plan.yaml", f"name: p\ntasks:\n  - id: a\n    {line}\n    title: t\n")
    assert only_problem(path) == (
        f"{path}: line 4: the tag {tag!r} is not allowed: a plan holds only text, numbers, true/false, null, lists "
        "and mappings"
    )


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("priority: !!int high", "'high' is not a valid !!int"),
        ("timeout: !!float soon", "'soon' is not a valid !!float"),
        ("retries: !!bool maybe", "'maybe' is not a valid !!bool"),
    ],
)
def test_a_scalar_its_tag_cannot_read_names_its_line(tmp_path: Path, line: str, problem: str) -> None:
    path = write(tmp_path, "plan.yaml", f"name: p\ntasks:\n{TASK}    {line}\n")
    assert only_problem(path) == f"{path}: line 5: {problem}"


def test_a_character_yaml_refuses_is_one_line_naming_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "plan.yaml", f"name: p\ntasks:\n{TASK}    description: a\x00b\n")
    assert only_problem(path) == (
        f"{path}: line 5: invalid YAML: character '\\x00' is not allowed (control characters are not allowed)"
    )


def test_a_list_that_holds_itself_is_refused_as_too_deep(tmp_path: Path) -> None:
    path = write(tmp_path, "plan.yaml", f"name: p\ntasks:\n{TASK}    after: &a [x, *a]\n")
    assert only_problem(path) == f"{path}: nested more than {MAX_NESTING} levels deep"


def test_dates_and_equals_signs_stay_text(tmp_path: Path) -> None:
    path = write(tmp_path, "plan.yaml", "name: p\ntasks:\n  - id: a\n    title: 2024-01-01\n    command: =\n")
    (only,) = load_plan(path, REGISTRY).tasks
    assert (only.title, only.command) == ("2024-01-01", "=")


def test_yaml_merge_keys_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "plan.yaml", "name: p\nbase: &b {title: t}\ntasks:\n  - <<: *b\n    id: a\n")
    assert only_problem(path) == (
        f"{path}: line 4: merge keys ('<<') are not supported in plans; `defaults:` sets fields for every task"
    )


# --- duplicate keys -------------------------------------------------------------------------------------


def test_a_duplicate_json_key_names_both_lines(tmp_path: Path) -> None:
    text = '{"name": "p",\n "tasks": [\n  {"id": "a", "title": "t",\n   "command": "true",\n   "command": "rm -rf ~"}]}'
    path = write(tmp_path, "plan.json", text)
    assert only_problem(path) == f"{path}: line 5: duplicate key 'command' (first at line 4)"


def test_a_duplicate_json_key_on_one_line_with_escapes_is_found(tmp_path: Path) -> None:
    path = write(tmp_path, "plan.json", r'{"name": "p", "tasks": [{"id": "a\"}", "title": "t", "ti\u0074le": "u"}]}')
    assert only_problem(path) == f"{path}: line 1: duplicate key 'title' (first at line 1)"


@pytest.mark.parametrize(
    ("text", "line", "key", "first"),
    [
        ("name: p\nname: q\ntasks:\n" + TASK, 2, "name", 1),
        ("name: p\ntasks:\n" + TASK + "    command: 'true'\n    command: rm -rf ~\n", 6, "command", 5),
        ("name: p\ntasks: [{id: a, title: t, id: b}]\n", 2, "id", 2),
    ],
    ids=["top level", "in a task", "flow mapping"],
)
def test_a_duplicate_yaml_key_names_both_lines(tmp_path: Path, text: str, line: int, key: str, first: int) -> None:
    path = write(tmp_path, "plan.yaml", text)
    assert only_problem(path) == f"{path}: line {line}: duplicate key {key!r} (first at line {first})"


def test_a_mapping_of_too_many_keys_is_refused_before_validation(tmp_path: Path) -> None:
    extra = {f"k{i}": i for i in range(100_000)}  # pydantic would build an error for each
    path = write_json(tmp_path, "plan.json", tasks({"id": "a", "title": "t", **extra}))
    assert only_problem(path) == f"{path}: line 1: an object of more than {MAX_MAPPING_KEYS} keys; no plan has one"

    yaml_path = write(tmp_path, "plan.yaml", "name: p\ntasks:\n" + TASK + "".join(f"    k{i}: 1\n" for i in range(100)))
    assert only_problem(yaml_path) == (
        f"{yaml_path}: line 3: a mapping of 102 keys; no mapping in a plan has more than {MAX_MAPPING_KEYS}"
    )


# --- what YAML aliases expand to ------------------------------------------------------------------------


def test_a_long_string_repeated_through_aliases_is_refused_in_one_short_line(tmp_path: Path) -> None:
    """The review's 1 MB file that reached 3 GB: each alias was copied into a problem line."""
    text = "name: p\ntasks:\n" + TASK + '    after: [&x "' + "x" * (1 << 20) + '", ' + ", ".join(["*x"] * 70) + "]\n"
    path = write(tmp_path, "plan.yaml", text)
    assert only_problem(path) == (
        f"{path}: holds more than {MAX_DOCUMENT_CHARS:,} characters of text (counting each use of a YAML alias)"
    )


def test_values_reached_through_aliases_are_counted_each_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lines = ["name: p", "deps: &d [" + ", ".join(f"t{i}" for i in range(100)) + "]", "tasks:"]
    lines += [f"  - {{id: t{i}, title: t, after: *d}}" for i in range(100)]
    path = write(tmp_path, "plan.yaml", "\n".join(lines) + "\n")
    monkeypatch.setattr(plan_document, "MAX_DOCUMENT_VALUES", 5_000)  # 100 tasks of 100 shared entries pass it
    assert only_problem(path) == f"{path}: holds more than 5,000 values (counting each use of a YAML alias)"


def test_a_yaml_plan_of_too_many_nodes_is_refused_before_they_are_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "plan.yaml", "name: p\ntasks:\n" + TASK + "description: [" + "a, " * 1000 + "a]\n")
    monkeypatch.setattr(plan_document, "MAX_YAML_NODES", 500)
    assert only_problem(path) == f"{path}: line 5: more than 500 YAML nodes; give a plan this large as JSON"


# --- problem lists stay small ---------------------------------------------------------------------------


def test_too_many_dependencies_are_one_line_not_one_per_dependency(tmp_path: Path) -> None:
    many = MAX_DEPENDENCIES_PER_TASK * 2
    path = write_json(tmp_path, "plan.json", tasks({"id": "a", "title": "t", "after": ["ghost"] * many}))
    assert only_problem(path) == (
        f"{path}: task 'a': field 'after': {many} dependencies, more than the {MAX_DEPENDENCIES_PER_TASK} allowed"
    )


def test_too_many_defaulted_file_patterns_are_one_line_for_the_defaults(tmp_path: Path) -> None:
    document = tasks({"id": "a", "title": "t"}, {"id": "b", "title": "t"}, defaults={"files": ["x"] * 5000})
    path = write_json(tmp_path, "plan.json", document)
    assert only_problem(path) == f"{path}: field 'defaults.files': 5000 file patterns, more than the 1000 allowed"


def test_unknown_dependencies_past_the_shown_ones_are_only_counted(tmp_path: Path) -> None:
    document = tasks(*({"id": f"t{i}", "title": "t", "after": [f"g{j}" for j in range(1000)]} for i in range(20)))
    path = write_json(tmp_path, "plan.json", document)
    problems = problems_of(path)
    assert len(problems) == MAX_PROBLEMS_SHOWN + 1
    assert problems[0] == f"{path}: task 't0': depends on unknown task 'g0'"
    assert problems[-1] == f"{path}: ... and {20 * 1000 - MAX_PROBLEMS_SHOWN} more problems"


def test_input_quoted_in_a_message_is_cut_short(tmp_path: Path) -> None:
    long_id = "a" * 1_000_000
    path = write_json(tmp_path, "plan.json", tasks({"id": long_id, "title": "t", "after": [long_id]}, owner=None))
    problems = problems_of(path)
    assert problems[0] == f"{path}: unknown field 'owner'"
    assert all(len(p) < 1000 for p in problems), [len(p) for p in problems]  # the task's problems, quoted short

    path = write_json(tmp_path, "plan.json", tasks({"id": long_id, "title": "t", "agent": long_id}))
    problems = problems_of(path)
    assert problems, problems
    assert all(len(p) < 1000 for p in problems), [len(p) for p in problems]
    assert f"task {'a' * MAX_QUOTED_CHARS!r}…: unknown agent type {'a' * MAX_QUOTED_CHARS!r}…" in problems[0]


def test_a_long_cycle_is_cut_in_the_middle(tmp_path: Path) -> None:
    count = 1000
    document = tasks(*({"id": f"t{i}", "title": "t", "after": [f"t{(i + 1) % count}"]} for i in range(count)))
    problem = only_problem(write_json(tmp_path, "plan.json", document))
    assert problem.endswith(f"-> … ({count + 1 - 20} more) -> t0")
    assert problem.count(" -> ") == 20


def test_a_cycle_through_ids_that_are_not_valid_quotes_them(tmp_path: Path) -> None:
    document = tasks({"id": "a\nb", "title": "t", "after": ["a\nb"]})
    problems = problems_of(write_json(tmp_path, "plan.json", document))
    assert problems[-1].endswith("dependency cycle: 'a\\nb' -> 'a\\nb'")
    assert all("\n" not in p for p in problems)


# --- workdir --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("workdir", "resolved"), [("/", "/"), ("../../../../../../../../etc", "/etc")])
def test_a_workdir_outside_the_plans_folder_is_refused(tmp_path: Path, workdir: str, resolved: str) -> None:
    path = write_json(tmp_path, "plan.json", tasks({"id": "a", "title": "t"}, workdir=workdir))
    assert only_problem(path) == (
        f"{path}: workdir {workdir!r} resolves to {resolved}, outside the allowed roots "
        f"(the plan's folder {tmp_path.resolve()}; ORCH_WORKDIR_ROOTS widens them)"
    )


def test_a_symlink_out_of_the_plans_folder_is_followed_before_the_check(tmp_path: Path) -> None:
    (tmp_path / "plans").mkdir()
    (tmp_path / "plans" / "escape").symlink_to(tmp_path / "elsewhere")
    path = write_json(tmp_path / "plans", "plan.json", tasks({"id": "a", "title": "t"}, workdir="escape/src"))
    assert f"resolves to {(tmp_path / 'elsewhere' / 'src').resolve()}, outside" in only_problem(path)


def test_a_workdir_through_a_symlink_loop_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "loop").symlink_to("loop")
    path = write_json(tmp_path, "plan.json", tasks({"id": "a", "title": "t"}, workdir="loop/src"))
    assert only_problem(path).startswith(f"{path}: workdir 'loop/src' cannot be resolved: ")


def test_roots_from_settings_replace_the_plans_folder(tmp_path: Path) -> None:
    (tmp_path / "plans").mkdir()
    work = tmp_path / "work" / "repo"
    path = write_json(tmp_path / "plans", "plan.json", tasks({"id": "a", "title": "t"}, workdir=str(work)))
    assert load_plan(path, REGISTRY, roots=[tmp_path / "work"]).workdir == work.resolve()

    inside_plans = write_json(tmp_path / "plans", "here.json", tasks({"id": "a", "title": "t"}, workdir="sub"))
    assert only_problem(inside_plans, roots=[tmp_path / "work"]) == (
        f"{inside_plans}: workdir 'sub' resolves to {(tmp_path / 'plans' / 'sub').resolve()}, outside the allowed "
        f"roots (ORCH_WORKDIR_ROOTS: {tmp_path / 'work'})"
    )


def test_plans_built_in_memory_check_the_workdir_only_when_given_roots(tmp_path: Path) -> None:
    document = tasks({"id": "a", "title": "t"}, workdir="/srv/elsewhere")
    assert validate_plan(document, REGISTRY, source="m.yaml", base_dir=tmp_path).workdir == Path("/srv/elsewhere")
    roots = WorkdirRoots((tmp_path,), "the test's folder")
    with pytest.raises(PlanInvalid) as caught:
        validate_plan(document, REGISTRY, source="m.yaml", base_dir=tmp_path, roots=roots)
    assert caught.value.problems == [
        "m.yaml: workdir '/srv/elsewhere' resolves to /srv/elsewhere, outside the allowed roots (the test's folder)"
    ]


# --- messages -------------------------------------------------------------------------------------------


def test_a_bad_call_says_what_a_call_looks_like(tmp_path: Path) -> None:
    path = write_json(tmp_path, "plan.json", tasks({"id": "a", "title": "t", "call": "os.system"}))
    expected = "task 'a': field 'call': 'os.system' is not allowed: give package.module:function"
    assert only_problem(path) == f"{path}: {expected}"


@pytest.mark.parametrize(("name", "text"), [("plan.yaml", ".nan"), ("plan.json", "NaN"), ("plan.json", "Infinity")])
def test_a_budget_that_is_not_a_finite_number_says_so(tmp_path: Path, name: str, text: str) -> None:
    path = write(tmp_path, name, '{"name": "p", "tasks": [{"id": "a", "title": "t", "budget": {"usd": ' + text + "}}]}")
    line = "line 1: " if name.endswith(".yaml") else ""  # YAML plans name the line; the JSON parser does not say
    assert only_problem(path) == f"{path}: {line}task 'a': field 'budget.usd': must be a finite number"


def test_file_patterns_are_bounded_in_length_and_sets(tmp_path: Path) -> None:
    longest = "a" * MAX_FILE_PATTERN_CHARS
    sets = "[ab]" * MAX_FILE_PATTERN_SETS
    ok = write_json(tmp_path, "ok.json", tasks({"id": "a", "title": "t", "files": [longest, sets]}))
    assert load_plan(ok, REGISTRY).tasks[0].files == (longest, sets)

    too_long = write_json(tmp_path, "long.json", tasks({"id": "a", "title": "t", "files": [longest + "a"]}))
    assert f"must be 1 to {MAX_FILE_PATTERN_CHARS} characters" in only_problem(too_long)
    too_many = write_json(tmp_path, "sets.json", tasks({"id": "a", "title": "t", "files": [sets + "[cd]"]}))
    assert only_problem(too_many) == (
        f"{too_many}: task 'a': field 'files[0]': file pattern {sets + '[cd]'!r} has {MAX_FILE_PATTERN_SETS + 1} [...] "
        f"character sets; at most {MAX_FILE_PATTERN_SETS}"
    )


def test_a_value_json_cannot_hold_is_refused_by_the_walk() -> None:
    assert plan_document._document_size_problem({"tasks": [{"title": {1, 2}}]}) == (
        "holds a value of type set, which a plan cannot hold"
    )


def test_yaml_written_by_safe_dump_still_loads(tmp_path: Path) -> None:
    document = tasks({"id": "a", "title": "yes", "description": "on\n2024-01-01", "priority": 3, "timeout": 1.5e2})
    path = write(tmp_path, "plan.yaml", yaml.safe_dump(document))
    (only,) = load_plan(path, REGISTRY).tasks
    assert (only.title, only.description, only.priority, only.timeout) == ("yes", "on\n2024-01-01", 3, 150.0)
