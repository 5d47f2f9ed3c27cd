"""config/targets.yaml: the repositories a plan or task names with `target:`, loaded like config/agents.yaml, every
problem one line naming the file, the line and the target (issue 15)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from orch.errors import ConfigInvalid
from orch.intake.agents import load_agents_file
from orch.intake.plan import Repository
from orch.intake.plan_validation import load_plan
from orch.intake.targets import MAX_CONTEXT_BYTES, MAX_TARGETS_BYTES, Targets, load_targets, load_targets_file

CONFIG = Path(__file__).parents[2] / "config"
REGISTRY = load_agents_file(CONFIG / "agents.yaml")


def git_init(path: Path) -> Path:
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path


def write_targets(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "targets.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(ConfigInvalid) as caught:
        load_targets_file(path)
    return str(caught.value).split("\n")


def only_problem(path: Path) -> str:
    problems = problems_of(path)
    assert len(problems) == 1, problems
    return problems[0]


def test_the_shipped_targets_file_declares_no_target() -> None:
    targets = load_targets(CONFIG)
    assert targets.names == ()
    assert targets.source == str(CONFIG / "targets.yaml")


def test_a_config_dir_without_a_targets_file_declares_none(tmp_path: Path) -> None:
    targets = load_targets(tmp_path)
    assert targets == Targets(str(tmp_path / "targets.yaml"))
    assert targets.get("web") is None


@pytest.mark.parametrize("text", ["", "targets:\n", "targets: {}\n", "# only comments\n"])
def test_an_empty_targets_file_declares_none(tmp_path: Path, text: str) -> None:
    assert load_targets_file(write_targets(tmp_path, text)).names == ()


def test_targets_resolve_local_paths_and_contexts_relative_to_the_file(tmp_path: Path) -> None:
    config = tmp_path / "config"
    repo = git_init(tmp_path / "api")
    (config / "context").mkdir(parents=True)
    (config / "context" / "web.md").write_text("Web app: React 19.\n", encoding="utf-8")
    path = write_targets(
        config,
        "targets:\n"
        "  api:\n"
        "    url: ../api\n"
        "  web:\n"
        "    url: git@github.com:example/web.git\n"
        "    base: develop\n"
        "    land: base\n"
        "    context: context/web.md\n"
        "    gates: [npm test]\n"
        "    on_conflict: fail\n"
        "    relock: {package-lock.json: npm install}\n"
        "    gate_timeout: 5m\n",
    )
    targets = load_targets(config)
    assert targets.source == str(path)
    assert targets.names == ("api", "web")
    assert targets.get("api") == Repository(
        name="api",
        url=str(repo.resolve()),
        base="main",
        land="branch",
        gates=(),
        on_conflict="resolve",
        relock=(),
        gate_timeout=1800.0,
    )
    assert targets.get("web") == Repository(
        name="web",
        url="git@github.com:example/web.git",
        base="develop",
        land="base",
        gates=("npm test",),
        on_conflict="fail",
        relock=(("package-lock.json", "npm install"),),
        gate_timeout=300.0,
        context="Web app: React 19.\n",
    )


def test_a_plan_naming_a_target_gets_its_repository_and_context(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "web.md").write_text("Use pnpm.", encoding="utf-8")
    write_targets(tmp_path / "config", "targets:\n  web: {url: 'https://example.com/web.git', context: web.md}\n")
    plan = tmp_path / "plan.yaml"
    plan.write_text("name: p\ntarget: web\ntasks:\n  - {id: a, title: t}\n", encoding="utf-8")
    loaded = load_plan(plan, REGISTRY, targets=load_targets(tmp_path / "config"))
    assert loaded.tasks[0].repository == "web"
    assert [(r.name, r.url, r.context) for r in loaded.repositories] == [
        ("web", "https://example.com/web.git", "Use pnpm.")
    ]


def test_every_problem_of_a_targets_file_is_one_line_naming_file_line_and_target(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "plain").mkdir()
    path = write_targets(
        tmp_path,
        "targets:\n"  # 1
        "  api:\n"  # 2
        "    url: ext::sh -c x\n"  # 3
        "    base: a..b\n"  # 4
        "  web:\n"  # 5
        "    urll: https://example.com/web.git\n"  # 6
        "  docs:\n"  # 7
        "    url: plain\n"  # 8
        "    context: folder\n"  # 9
        "  repo:\n"  # 10
        "    url: https://example.com/x.git\n"  # 11
        "  bad name!:\n"  # 12
        "    url: https://example.com/x.git\n"  # 13
        "  cli: https://example.com/cli.git\n"  # 14
        "  ops:\n"  # 15
        "    url: https://example.com/ops.git\n"  # 16
        "    context: missing.md\n",  # 17
    )
    where = tmp_path.resolve()
    assert problems_of(path) == [
        f"{path}: line 3: target 'api': field 'url': 'ext::sh -c x' uses git's '<transport>::<address>' form, "
        "which orch refuses; give a path, an https://, ssh:// or file:// URL, or user@host:path",
        f"{path}: line 4: target 'api': field 'base': branch name 'a..b' is not allowed: it contains '..'",
        f"{path}: line 6: target 'web': missing required field 'url'",
        f"{path}: line 6: target 'web': unknown field 'urll' (did you mean 'url'?)",
        f"{path}: line 8: target 'docs': field 'url': 'plain' is {where / 'plain'}, which is not a git repository "
        "(no .git in it, and not a bare one)",
        f"{path}: line 9: target 'docs': context file {where / 'folder'}: is a folder, not a regular file",
        f"{path}: line 10: target 'repo': the name 'repo' stands for a plan's own repo:; give the target another name",
        f"{path}: line 12: target 'bad name!': the name is not allowed: use letters, digits, '.', '_' or '-' "
        "(at most 64)",
        f"{path}: line 14: target 'cli': must be a mapping with 'url', not 'https://example.com/cli.git'",
        f"{path}: line 17: target 'ops': context file {where / 'missing.md'}: does not exist",
    ]


def test_a_context_file_must_be_small_utf8_text(tmp_path: Path) -> None:
    (tmp_path / "big.md").write_bytes(b"x" * (MAX_CONTEXT_BYTES + 1))
    (tmp_path / "latin1.md").write_bytes(b"caf\xe9\n")
    (tmp_path / "nul.md").write_bytes(b"a\x00b")
    os.mkfifo(tmp_path / "fifo.md")
    path = write_targets(
        tmp_path,
        "targets:\n"
        "  a: {url: 'https://e.com/a', context: big.md}\n"
        "  b: {url: 'https://e.com/b', context: latin1.md}\n"
        "  c: {url: 'https://e.com/c', context: nul.md}\n"
        "  d: {url: 'https://e.com/d', context: fifo.md}\n"
        "  e: {url: 'https://e.com/e', context: ''}\n",
    )
    where = tmp_path.resolve()
    assert problems_of(path) == [
        f"{path}: line 2: target 'a': context file {where / 'big.md'}: {MAX_CONTEXT_BYTES + 1} bytes, "
        f"over the {MAX_CONTEXT_BYTES} byte limit",
        f"{path}: line 3: target 'b': context file {where / 'latin1.md'}: is not UTF-8 text (byte 0xe9 at 3)",
        f"{path}: line 4: target 'c': context file {where / 'nul.md'}: contains a NUL character",
        f"{path}: line 5: target 'd': context file {where / 'fifo.md'}: is a named pipe (FIFO), not a regular file",
        f"{path}: line 6: target 'e': field 'context': must not be empty",
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- a\n- b\n", "a targets file is a mapping with 'targets'"),
        ("target: {}\n", "line 1: unknown field 'target' (did you mean 'targets'?)"),
        ("targets: [a, b]\n", "line 1: field 'targets': must be a mapping of targets by name, not ['a', 'b']"),
        ("targets:\n  a: {url: x\n", "line 3: invalid YAML: "),
        ("targets:\n  a: {url: x}\n  a: {url: y}\n", "line 3: duplicate key 'a' (first at line 2)"),
        ("targets: !!binary aGk=\n", "line 1: the tag '!!binary' is not allowed"),
    ],
)
def test_a_malformed_targets_file_is_one_line(tmp_path: Path, text: str, problem: str) -> None:
    path = write_targets(tmp_path, text)
    assert only_problem(path).startswith(f"{path}: {problem}")


def test_a_targets_file_that_is_not_a_readable_regular_file(tmp_path: Path) -> None:
    (tmp_path / "targets.yaml").mkdir()
    assert only_problem(tmp_path / "targets.yaml") == (f"{tmp_path / 'targets.yaml'}: is a folder, not a targets file")
    big = tmp_path / "big"
    write_targets(big, "#" * (MAX_TARGETS_BYTES + 1))
    assert only_problem(big / "targets.yaml") == (
        f"{big / 'targets.yaml'}: {MAX_TARGETS_BYTES + 1} bytes is over the {MAX_TARGETS_BYTES} byte limit"
    )
    latin = tmp_path / "latin"
    latin.mkdir()
    (latin / "targets.yaml").write_bytes(b"# caf\xe9\n")
    assert only_problem(latin / "targets.yaml").startswith(f"{latin / 'targets.yaml'}: cannot read targets: ")
