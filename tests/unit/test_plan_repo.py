"""A plan's repository (`repo:`, `target:`) and its tasks' `isolation:` and `merge:`: what a valid plan resolves to,
and one line per problem, naming the file, the line and the task, otherwise (issue 15)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from orch.errors import PlanInvalid
from orch.intake.agents import load_agents_file
from orch.intake.plan import MAX_GATES, MAX_TEXT_CHARS, Repository, RepoSpec
from orch.intake.plan_validation import load_plan, validate_plan
from orch.intake.targets import Targets

REGISTRY = load_agents_file(Path(__file__).parents[2] / "config" / "agents.yaml")


def git_init(path: Path, *, bare: bool = False) -> Path:
    subprocess.run(["git", "init", "-q", *(["--bare"] if bare else []), str(path)], check=True)
    return path


def write_plan(folder: Path, document: Any, name: str = "plan.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    text = json.dumps(document) if name.endswith(".json") else yaml.safe_dump(document, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def write_text(folder: Path, text: str) -> Path:
    path = folder / "plan.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def plan(*tasks: dict[str, Any], **header: Any) -> dict[str, Any]:
    return {"name": "demo", **header, "tasks": list(tasks)}


def task(key: str, **fields: Any) -> dict[str, Any]:
    return {"id": key, "title": f"Task {key}", **fields}


def problems_of(path: Path, targets: Targets | None = None) -> list[str]:
    with pytest.raises(PlanInvalid) as caught:
        load_plan(path, REGISTRY, targets=targets)
    return caught.value.problems


def only_problem(path: Path, targets: Targets | None = None) -> str:
    problems = problems_of(path, targets)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"{path}: "), problems[0]
    return problems[0]


def unlined(problems: list[str]) -> list[str]:
    return [re.sub(r": line \d+: ", ": ", problem, count=1) for problem in problems]


def target(name: str, url: str = "https://git.example.com/x.git", **fields: Any) -> Repository:
    defaults: dict[str, Any] = {
        "base": "main",
        "land": "branch",
        "gates": (),
        "on_conflict": "resolve",
        "relock": (),
        "gate_timeout": 1800.0,
    }
    return Repository(name=name, url=url, **{**defaults, **fields})


TARGETS = Targets("/etc/orch/targets.yaml", (target("api"), target("web", context="Web app: React 19.")))


# --- valid plans --------------------------------------------------------------------------------------


def test_a_plan_without_repo_runs_every_task_in_its_shared_workdir(tmp_path: Path) -> None:
    loaded = load_plan(write_plan(tmp_path, plan(task("a"), task("b", merge=False))), REGISTRY)
    assert loaded.repositories == ()
    assert [(t.repository, t.merge) for t in loaded.tasks] == [(None, True), (None, False)]


def test_repo_resolves_with_its_defaults_and_tasks_default_to_worktrees_in_it(tmp_path: Path) -> None:
    repo = git_init(tmp_path / "project")
    path = write_plan(tmp_path, plan(task("a"), task("b", isolation="worktree"), repo={"url": "project"}))
    loaded = load_plan(path, REGISTRY)
    assert loaded.repositories == (
        Repository(
            name="repo",
            url=str(repo.resolve()),
            base="main",
            land="branch",
            gates=(),
            on_conflict="resolve",
            relock=(),
            gate_timeout=1800.0,
        ),
    )
    assert [(t.repository, t.merge) for t in loaded.tasks] == [("repo", True), ("repo", True)]


def test_every_repo_field_is_kept_relock_in_the_order_written(tmp_path: Path) -> None:
    git_init(tmp_path)
    repo = {
        "url": ".",
        "base": "release/2.x",
        "land": "base",
        "gates": ["python -m pytest -q", "ruff check ."],
        "on_conflict": "fail",
        "relock": {"uv.lock": "uv lock", "package-lock.json": "npm install --package-lock-only", "*.lock": "make"},
        "gate_timeout": "10m",
    }
    (repository,) = load_plan(write_plan(tmp_path, plan(task("a"), repo=repo)), REGISTRY).repositories
    assert repository.url == str(tmp_path.resolve())
    assert (repository.base, repository.land, repository.on_conflict) == ("release/2.x", "base", "fail")
    assert repository.gates == ("python -m pytest -q", "ruff check .")
    assert repository.relock == (
        ("uv.lock", "uv lock"),
        ("package-lock.json", "npm install --package-lock-only"),
        ("*.lock", "make"),
    )
    assert repository.gate_timeout == 600.0
    assert repository.context == ""


def test_shared_isolation_and_merge_false_from_the_task_or_the_defaults(tmp_path: Path) -> None:
    git_init(tmp_path)
    document = plan(
        task("a"),
        task("b", isolation="shared"),
        task("c", merge=True),
        task("d", isolation="worktree", merge=False),
        repo={"url": "."},
        defaults={"merge": False},
    )
    loaded = load_plan(write_plan(tmp_path, document), REGISTRY)
    assert [(t.key, t.repository, t.merge) for t in loaded.tasks] == [
        ("a", "repo", False),
        ("b", None, False),
        ("c", "repo", True),
        ("d", "repo", False),
    ]

    document = plan(task("a"), task("b", isolation="worktree"), repo={"url": "."}, defaults={"isolation": "shared"})
    loaded = load_plan(write_plan(tmp_path, document), REGISTRY)
    assert [t.repository for t in loaded.tasks] == [None, "repo"]


def test_a_bare_repository_and_a_linked_worktree_are_git_repositories(tmp_path: Path) -> None:
    bare = git_init(tmp_path / "remote.git", bare=True)
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / ".git").write_text("gitdir: /somewhere/else\n", encoding="utf-8")
    for url, expected in (("remote.git", bare), ("linked", tmp_path / "linked"), (str(bare), bare)):
        (repository,) = load_plan(write_plan(tmp_path, plan(task("a"), repo={"url": url})), REGISTRY).repositories
        assert repository.url == str(expected.resolve())


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/example/project.git",
        "http://git.internal:8080/project",
        "ssh://git@github.com/example/project.git",
        "ssh://git@[::1]:2222/srv/project.git",
        "git@github.com:example/project.git",
        "file:///srv/git/project.git",
        "https://git.example.com:8443/team/project.git",
    ],
)
def test_a_url_with_a_scheme_or_scp_like_is_only_syntax_checked(tmp_path: Path, url: str) -> None:
    (repository,) = load_plan(write_plan(tmp_path, plan(task("a"), repo={"url": url})), REGISTRY).repositories
    assert repository.url == url


def test_a_local_path_url_is_relative_to_the_plan_files_folder_not_the_cwd(tmp_path: Path, monkeypatch) -> None:
    repo = git_init(tmp_path / "project")
    path = write_plan(tmp_path / "plans", plan(task("a"), repo={"url": "../project"}))
    monkeypatch.chdir(tmp_path / "project")
    assert load_plan(path, REGISTRY).repositories[0].url == str(repo.resolve())


def test_targets_of_the_plan_and_of_tasks_name_their_repositories_in_first_use_order(tmp_path: Path) -> None:
    document = plan(task("a"), task("b", target="web"), task("c", target="api"), task("d", target="web"), target="api")
    loaded = load_plan(write_plan(tmp_path, document), REGISTRY, targets=TARGETS)
    assert [t.repository for t in loaded.tasks] == ["api", "web", "api", "web"]
    assert loaded.repositories == (TARGETS.get("api"), TARGETS.get("web"))
    assert loaded.repositories[1].context == "Web app: React 19."


def test_a_tasks_target_beside_the_plans_own_repo(tmp_path: Path) -> None:
    git_init(tmp_path)
    document = plan(task("a"), task("b", target="web"), task("c", isolation="shared"), repo={"url": "."})
    loaded = load_plan(write_plan(tmp_path, document), REGISTRY, targets=TARGETS)
    assert [t.repository for t in loaded.tasks] == ["repo", "web", None]
    assert [r.name for r in loaded.repositories] == ["repo", "web"]


def test_a_target_in_the_defaults_applies_to_every_task(tmp_path: Path) -> None:
    document = plan(task("a"), task("b", target="api"), defaults={"target": "web", "isolation": "worktree"})
    loaded = load_plan(write_plan(tmp_path, document), REGISTRY, targets=TARGETS)
    assert [t.repository for t in loaded.tasks] == ["web", "api"]
    assert [r.name for r in loaded.repositories] == ["web", "api"]


def test_a_plan_built_in_memory_takes_targets_too(tmp_path: Path) -> None:
    document = plan(task("a"), target="web")
    loaded = validate_plan(document, REGISTRY, source="mem", base_dir=tmp_path, targets=TARGETS)
    assert loaded.tasks[0].repository == "web"


# --- one line per problem -------------------------------------------------------------------------------


def test_a_missing_local_path_names_the_url_the_path_and_the_line(tmp_path: Path) -> None:
    path = write_text(tmp_path, "name: demo\nrepo:\n  base: main\n  url: nope\ntasks:\n  - {id: a, title: t}\n")
    assert only_problem(path) == (
        f"{path}: line 4: field 'repo.url': 'nope' is {tmp_path.resolve() / 'nope'}, which does not exist"
    )


def test_a_folder_that_is_not_a_git_repository_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "file").write_text("x", encoding="utf-8")
    (tmp_path / "half.git").mkdir()
    (tmp_path / "half.git" / "HEAD").write_text("ref: refs/heads/main\n", encoding="utf-8")
    where = tmp_path.resolve()
    for url, problem in (
        ("plain", f"'plain' is {where / 'plain'}, which is not a git repository (no .git in it, and not a bare one)"),
        (
            "half.git",
            f"'half.git' is {where / 'half.git'}, which is not a git repository (no .git in it, and not a bare one)",
        ),
        ("file", f"'file' is {where / 'file'}, which is not a folder"),
    ):
        path = write_plan(tmp_path, plan(task("a"), repo={"url": url}))
        assert unlined([only_problem(path)]) == [f"{path}: field 'repo.url': {problem}"]


REFUSED_URLS = {
    "ext helper": ("ext::sh -c touch% /tmp/pwned", "uses git's '<transport>::<address>' form, which orch refuses"),
    "fd helper": ("fd::3", "uses git's '<transport>::<address>' form, which orch refuses"),
    "option": ("-uhttps://example.com/x", "starts with '-', which git would take for an option"),
    "option path": ("--upload-pack=touch x", "starts with '-', which git would take for an option"),
    "newline": ("https://example.com/x\nfoo", "contains a line break or another control character"),
    "tab": ("/srv/x\tfoo", "contains a line break or another control character"),
    "nul": ("/srv/x\x00y", "contains a NUL character"),
    "scheme": (
        "ftp://example.com/x.git",
        "has the scheme 'ftp'; orch fetches over https://, http://, ssh:// or file://",
    ),
    "git scheme": ("git://example.com/x.git", "has the scheme 'git'; orch fetches over"),
    "no host": ("https:///x.git", "names no host"),
    "file no path": ("file://", "names no path"),
    "password": ("https://me:hunter2@example.com/x.git", "holds a password"),
    "scp no user": ("example.com:x.git", "reads as git's scp-like ssh address"),
    "scp no path": ("git@example.com:", "names no path"),
}


@pytest.mark.parametrize(("url", "problem"), REFUSED_URLS.values(), ids=REFUSED_URLS.keys())
def test_a_url_orch_refuses_is_one_line_naming_it(tmp_path: Path, url: str, problem: str) -> None:
    path = write_plan(tmp_path, plan(task("a"), repo={"url": url}), "plan.json")
    (line,) = problems_of(path)
    assert line.startswith(f"{path}: field 'repo.url': "), line
    assert problem in line
    assert "hunter2" not in line


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://me:hunter2@example.com/x.git", "https://me:***@example.com/x.git"),
        ("https://me:hun@ter2@example.com/x.git", "https://me:***@example.com/x.git"),
        ("ssh://me:hunter2@example.com/x.git", "ssh://me:***@example.com/x.git"),
    ],
)
def test_a_password_in_a_url_is_masked_in_the_message(tmp_path: Path, url: str, shown: str) -> None:
    path = write_plan(tmp_path, plan(task("a"), repo={"url": url}))
    problem = only_problem(path)
    assert f"{shown!r} holds a password" in problem
    assert "ter2" not in problem


@pytest.mark.parametrize(
    ("base", "reason"),
    [
        ("a..b", "it contains '..'"),
        ("a b", "it contains ' '"),
        ("a~1", "it contains '~'"),
        ("a^", "it contains '^'"),
        ("a:b", "it contains ':'"),
        ("a?", "it contains '?'"),
        ("a*", "it contains '*'"),
        ("a[b", "it contains '['"),
        ("a\\b", "it contains '\\\\'"),
        ("a\x7fb", "it contains a control character"),
        ("a\x1bb", "it contains a control character"),
        ("-x", "it starts with '-'"),
        ("/x", "it starts or ends with '/'"),
        ("x/", "it starts or ends with '/'"),
        ("a//b", "it contains '//'"),
        ("x.", "it ends with '.'"),
        (".x", "a part of it starts with '.'"),
        ("x/.y", "a part of it starts with '.'"),
        ("x.lock", "a part of it ends with '.lock'"),
        ("x.lock/y", "a part of it ends with '.lock'"),
        ("a@{1}", "it contains '@{'"),
        ("@", "'@' is not a branch name"),
        ("HEAD", "'HEAD' is not a branch name"),
        ("x" * 256, "it is longer than 255 characters"),
        ("orch", "git could not hold orch's own branches"),
        ("orch-work", "git could not hold orch's own branches"),
    ],
)
def test_a_base_that_is_not_a_valid_branch_name_is_named(tmp_path: Path, base: str, reason: str) -> None:
    git_init(tmp_path)
    path = write_plan(tmp_path, plan(task("a"), repo={"url": ".", "base": base}), "plan.json")
    (line,) = problems_of(path)
    assert line.startswith(f"{path}: field 'repo.base': branch name "), line
    assert line.endswith(f" is not allowed: {reason}") or reason in line, line


@pytest.mark.parametrize("base", ["main", "feature/x-1", "release/2.x", "user@host", "a.b/c_d", "orch/other-plan"])
def test_valid_branch_names_pass(tmp_path: Path, base: str) -> None:
    git_init(tmp_path)
    path = write_plan(tmp_path, plan(task("a"), repo={"url": ".", "base": base}))
    assert load_plan(path, REGISTRY).repositories[0].base == base


@pytest.mark.parametrize(
    ("repo", "expected"),
    [
        ({"gates": [""]}, "field 'repo.gates[0]': must not be empty"),
        ({"gates": ["   "]}, "field 'repo.gates[0]': must not be blank"),
        ({"gates": "pytest"}, "field 'repo.gates': must be a list, not 'pytest'"),
        ({"gates": ["ok", "x\x00"]}, "field 'repo.gates[1]': contains a NUL character"),
        (
            {"gates": ["x" * (MAX_TEXT_CHARS + 1)]},
            f"field 'repo.gates[0]': must be at most {MAX_TEXT_CHARS} characters",
        ),
        ({"relock": {"uv.lock": ""}}, "field 'repo.relock[uv.lock]': must not be empty"),
        ({"relock": {"../x.lock": "make"}}, "field 'repo.relock[../x.lock]': file pattern '../x.lock' contains '..'"),
        ({"relock": {"/x.lock": "make"}}, "field 'repo.relock[/x.lock]': file pattern '/x.lock' is absolute"),
        ({"relock": ["uv.lock"]}, "field 'repo.relock': must be a mapping, not ['uv.lock']"),
        ({"gate_timeout": "soon"}, "field 'repo.gate_timeout': not a duration: 'soon'"),
        ({"gate_timeout": 0}, "field 'repo.gate_timeout': must be at least 1"),
        ({"land": "main"}, "field 'repo.land': must be 'branch', 'base' or 'none', not 'main'"),
        ({"on_conflict": "ours"}, "field 'repo.on_conflict': must be 'resolve' or 'fail', not 'ours'"),
        ({"urll": "x"}, "unknown field 'repo.urll' (did you mean 'url'?)"),
        ({"branch": "main"}, "unknown field 'repo.branch' (did you mean 'base'?)"),
        ({"url": ""}, "field 'repo.url': must not be empty"),
        ({"url": 3}, "field 'repo.url': must be text, not 3"),
    ],
)
def test_repo_field_problems_read_in_orchs_words(tmp_path: Path, repo: dict[str, Any], expected: str) -> None:
    git_init(tmp_path)
    path = write_plan(tmp_path, plan(task("a"), repo={"url": ".", **repo}))
    (problem,) = unlined([only_problem(path)])
    assert problem.startswith(f"{path}: {expected}"), problem
    assert "Input should" not in problem and "Value error" not in problem


def test_too_many_gates_is_one_line(tmp_path: Path) -> None:
    git_init(tmp_path)
    path = write_plan(tmp_path, plan(task("a"), repo={"url": ".", "gates": [3] * 10_000}), "plan.json")
    assert only_problem(path) == (f"{path}: field 'repo.gates': 10000 commands, more than the {MAX_GATES} allowed")


def test_a_repo_that_is_not_a_mapping_or_lacks_a_url(tmp_path: Path) -> None:
    path = write_plan(tmp_path, plan(task("a"), repo="."))
    assert unlined([only_problem(path)]) == [f"{path}: field 'repo': must be a mapping, not '.'"]
    path = write_plan(tmp_path, plan(task("a"), repo={"base": "main"}))
    assert unlined([only_problem(path)]) == [f"{path}: missing required field 'repo.url'"]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"merge": "yes"}, "task 'a': field 'merge': must be true or false, not 'yes'"),
        ({"merge": 1}, "task 'a': field 'merge': must be true or false, not 1"),
        ({"isolation": "private"}, "task 'a': field 'isolation': must be 'worktree' or 'shared', not 'private'"),
        ({"target": "bad name!"}, "task 'a': field 'target': 'bad name!' is not allowed"),
        ({"isolaton": "shared"}, "task 'a': unknown field 'isolaton' (did you mean 'isolation'?)"),
        ({"merg": False}, "task 'a': unknown field 'merg' (did you mean 'merge'?)"),
        ({"repo": "web"}, "task 'a': unknown field 'repo' (did you mean 'target'?)"),
        ({"worktree": True}, "task 'a': unknown field 'worktree' (did you mean 'isolation'?)"),
    ],
)
def test_task_field_problems(tmp_path: Path, fields: dict[str, Any], expected: str) -> None:
    git_init(tmp_path)
    path = write_plan(tmp_path, plan(task("a", **fields), repo={"url": "."}))
    (problem,) = unlined([only_problem(path)])
    assert problem.startswith(f"{path}: {expected}"), problem


def test_a_bad_default_of_the_new_fields_is_reported_once(tmp_path: Path) -> None:
    git_init(tmp_path)
    path = write_plan(tmp_path, plan(task("a"), task("b"), repo={"url": "."}, defaults={"merge": "no", "isolaton": 1}))
    assert unlined(problems_of(path)) == [
        f"{path}: field 'defaults.merge': must be true or false, not 'no'",
        f"{path}: unknown field 'defaults.isolaton' (did you mean 'isolation'?)",
    ]


def test_a_misspelled_header_field_gets_a_did_you_mean(tmp_path: Path) -> None:
    path = write_plan(tmp_path, {"name": "p", "tasks": [task("a")], "repository": {"url": "."}, "targt": "web"})
    assert unlined(problems_of(path)) == [
        f"{path}: unknown field 'repository' (did you mean 'repo'?)",
        f"{path}: unknown field 'targt' (did you mean 'target'?)",
    ]


def test_isolation_worktree_without_a_repository_names_the_task_and_its_line(tmp_path: Path) -> None:
    path = write_text(
        tmp_path,
        "name: demo\n"  # 1
        "tasks:\n"  # 2
        "  - id: a\n"  # 3
        "    title: t\n"  # 4
        "  - id: b\n"  # 5
        "    title: t\n"  # 6
        "    isolation: worktree\n",  # 7
    )
    assert only_problem(path) == (
        f"{path}: line 7: task 'b': isolation: worktree needs a repository; "
        "give the plan repo: or target:, or the task target:"
    )


def test_isolation_worktree_in_the_defaults_without_a_repository_is_one_line(tmp_path: Path) -> None:
    document = plan(*(task(f"t{i}") for i in range(8)), task("web", target="web"), defaults={"isolation": "worktree"})
    path = write_plan(tmp_path, document)
    assert unlined([only_problem(path, TARGETS)]) == [
        f"{path}: field 'defaults.isolation': worktree needs a repository, which tasks 't0', 't1', 't2', 't3', "
        "'t4' and 3 more have none of; give the plan repo: or target:, or those tasks target:"
    ]


def test_shared_isolation_with_a_target_is_a_contradiction(tmp_path: Path) -> None:
    path = write_plan(tmp_path, plan(task("a", isolation="shared", target="web")))
    assert unlined([only_problem(path, TARGETS)]) == [
        f"{path}: task 'a': isolation: shared runs in the plan's workdir, so target 'web' cannot apply; "
        "give one or the other"
    ]


def test_a_plan_gives_repo_or_target_not_both(tmp_path: Path) -> None:
    git_init(tmp_path)
    path = write_text(tmp_path, "name: demo\nrepo: {url: .}\ntarget: web\ntasks:\n  - {id: a, title: t}\n")
    assert only_problem(path, TARGETS) == f"{path}: line 3: give either repo: or target:, not both"


def test_an_unknown_target_without_a_targets_file(tmp_path: Path) -> None:
    path = write_text(tmp_path, "name: demo\ntarget: web\ntasks:\n  - {id: a, title: t}\n")
    assert only_problem(path) == (
        f"{path}: line 2: field 'target': unknown target 'web' (no targets declared in config/targets.yaml)"
    )
    assert only_problem(path, Targets("/etc/orch/targets.yaml")) == (
        f"{path}: line 2: field 'target': unknown target 'web' (no targets declared in /etc/orch/targets.yaml)"
    )


def test_an_unknown_target_names_the_known_ones_and_the_nearest(tmp_path: Path) -> None:
    path = write_text(
        tmp_path,
        "name: demo\n"  # 1
        "target: webb\n"  # 2
        "defaults: {target: apii}\n"  # 3
        "tasks:\n"  # 4
        "  - id: a\n"  # 5
        "    title: t\n"  # 6
        "    target: mobile\n"  # 7
        "  - {id: b, title: t}\n",  # 8
    )
    assert problems_of(path, TARGETS) == [
        f"{path}: line 2: field 'target': unknown target 'webb' (known: api, web; did you mean 'web'?)",
        f"{path}: line 3: field 'defaults.target': unknown target 'apii' (known: api, web; did you mean 'api'?)",
        f"{path}: line 7: task 'a': unknown target 'mobile' (known: api, web)",
    ]


def test_every_problem_is_reported_together(tmp_path: Path) -> None:
    path = write_text(
        tmp_path,
        "name: demo\n"  # 1
        "repo:\n"  # 2
        "  url: missing\n"  # 3
        "  base: a..b\n"  # 4
        "  gates: ['']\n"  # 5
        "tasks:\n"  # 6
        "  - id: a\n"  # 7
        "    title: t\n"  # 8
        "    merge: maybe\n"  # 9
        "  - id: b\n"  # 10
        "    title: t\n"  # 11
        "    target: nowhere\n"  # 12
        "    after: [ghost]\n",  # 13
    )
    missing = tmp_path.resolve() / "missing"
    assert problems_of(path) == [
        f"{path}: line 4: field 'repo.base': branch name 'a..b' is not allowed: it contains '..'",
        f"{path}: line 5: field 'repo.gates[0]': must not be empty",
        f"{path}: line 3: field 'repo.url': 'missing' is {missing}, which does not exist",
        f"{path}: line 9: task 'a': field 'merge': must be true or false, not 'maybe'",
        f"{path}: line 12: task 'b': unknown target 'nowhere' (no targets declared in config/targets.yaml)",
        f"{path}: line 13: task 'b': depends on unknown task 'ghost'",
    ]


def test_a_json_plan_names_the_task_without_lines(tmp_path: Path) -> None:
    path = write_plan(tmp_path, plan(task("a", isolation="worktree")), "plan.json")
    assert only_problem(path) == (
        f"{path}: task 'a': isolation: worktree needs a repository; give the plan repo: or target:, or the task target:"
    )


def test_shared_isolation_with_a_target_in_the_defaults_is_reported_once(tmp_path: Path) -> None:
    path = write_plan(tmp_path, plan(task("a"), task("b"), defaults={"isolation": "shared", "target": "web"}))
    assert unlined([only_problem(path, TARGETS)]) == [
        f"{path}: field 'defaults.target': isolation: shared runs in the plan's workdir, so target 'web' cannot "
        "apply; give one or the other"
    ]


@pytest.mark.parametrize("header", [{"repo": None}, {"target": None}])
def test_a_null_repo_or_target_is_as_if_left_out(tmp_path: Path, header: dict[str, Any]) -> None:
    loaded = load_plan(write_plan(tmp_path, plan(task("a"), **header)), REGISTRY)
    assert (loaded.repositories, loaded.tasks[0].repository) == ((), None)


# orch is stricter than `git check-ref-format --branch` here: '@' alone (git's shorthand for HEAD there, refused as
# refs/heads/@), and the names beside which git could not hold orch's own branches
STRICTER_THAN_GIT = {"@", "orch", "orch-work"}
BRANCH_NAMES = [
    *("a..b", "a b", "a~1", "a^", "a:b", "a?", "a*", "a[b", "a\\b", "a\x7fb", "a\x1bb", "-x", "/x", "x/", "a//b"),
    *("x.", ".x", "x/.y", "x.lock", "x.lock/y", "a@{1}", "@", "HEAD", "x" * 256, "orch", "orch-work", "a/b/"),
    *("main", "feature/x-1", "release/2.x", "user@host", "a.b/c_d", "orch/other-plan", "x.lockx", "@x", "a@b"),
    *("über", "a.b.", "a/.lock", "a/b.lock/c", "v1.0", "a{b}", "a@", "x" * 255, "a!b", "a#b", "a%b", "a'b"),
]


@pytest.mark.parametrize("name", BRANCH_NAMES, ids=[repr(name)[:40] for name in BRANCH_NAMES])
def test_branch_names_are_judged_as_git_judges_them(tmp_path: Path, name: str) -> None:
    gits = subprocess.run(["git", "check-ref-format", "--branch", name], cwd=tmp_path, capture_output=True)
    git_accepts = gits.returncode == 0 and len(name) <= 255  # git has no length limit; orch's store has one
    try:
        RepoSpec.model_validate({"url": "https://example.com/x.git", "base": name})
    except ValidationError:
        orch_accepts = False
    else:
        orch_accepts = True
    assert orch_accepts == (git_accepts and name not in STRICTER_THAN_GIT)


@pytest.mark.parametrize(("task_id", "why"), [("..", "contains '..'"), (".hidden", "starts with '.'"),
                                              ("x.lock", "ends with '.lock'"), ("x.", "ends with '.'")])  # fmt: skip
def test_a_worktree_tasks_id_must_make_a_branch_and_a_folder(tmp_path: Path, task_id: str, why: str) -> None:
    git_init(tmp_path / "project")
    path = write_plan(tmp_path, plan(task(task_id), repo={"url": "project"}))
    assert f"task {task_id!r}: its id {why}: it names the task's git branch and worktree folder" in only_problem(path)
    shared = write_plan(tmp_path, plan(task(task_id, isolation="shared"), repo={"url": "project"}), "shared.yaml")
    load_plan(shared, REGISTRY)  # a task of the shared workdir: any id


def test_a_repo_plans_name_must_begin_branch_names(tmp_path: Path) -> None:
    git_init(tmp_path / "project")
    path = write_plan(tmp_path, {**plan(task("a"), repo={"url": "project"}), "name": ".hidden"})
    assert "field 'name': '.hidden' starts with '.': it begins the plan's git branch names" in only_problem(path)


def test_a_worktree_tasks_id_may_not_look_like_a_resolution_tasks(tmp_path: Path) -> None:
    git_init(tmp_path / "project")
    path = write_plan(tmp_path, plan(task("api.resolve-7"), repo={"url": "project"}))
    assert "its id contains '.resolve-', which orch keeps for its conflict-resolution tasks" in only_problem(path)


def test_an_https_url_with_a_user_is_refused_without_showing_it(tmp_path: Path) -> None:
    path = write_plan(tmp_path, plan(task("a"), repo={"url": "https://ghp_s3cr3tT0ken@github.com/o/r.git"}))
    problem = only_problem(path)
    assert "'https://***@github.com/o/r.git' holds a user name" in problem and "ORCH_GIT_CREDENTIALS" in problem
    assert "s3cr3t" not in problem
