"""Where the store is, said aloud (issue 14, point 4): a command that only reads never creates a store, a file or a
folder, and with no store where the settings point it names that place in one line, exit 2; "not found" names the
store it looked in; a SQLite URL whose folder does not exist is refused by every command, naming the folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.conftest import orch_env, run_orch

READ_ONLY = [
    ["status", "x"],
    ["status"],
    ["report", "x"],
    ["logs", "x", "y"],
    ["watch", "x"],
    ["graph", "x"],
    ["cancel", "x"],
    ["pause", "x"],
    ["resume", "x"],
    ["retry", "x", "y"],
    ["skip", "x", "y"],
]


def everything_in(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.mark.parametrize("args", READ_ONLY, ids=" ".join)
@pytest.mark.parametrize("where", ["home", "url"])
def test_a_command_that_does_not_create_the_store_creates_nothing_and_names_the_store(
    args: list[str], where: str, tmp_path: Path
) -> None:
    """Before: `orch status x` in another folder said "no plan" and left an empty store (and its folders) there."""
    scratch = tmp_path / "empty"
    scratch.mkdir()
    nowhere = tmp_path / "nowhere"
    if where == "home":
        env = orch_env(tmp_path, ORCH_HOME=str(nowhere / ".orch"))
        store = f"sqlite:///{nowhere / '.orch' / 'orch.db'}"
    else:
        nowhere.mkdir()  # the folder exists, the file does not
        store = f"sqlite:///{nowhere / 'orch.db'}"
        env = orch_env(scratch, ORCH_HOME=str(scratch / ".orch"), ORCH_DATABASE_URL=store)
    before = everything_in(tmp_path)
    result = run_orch(args, scratch, env, timeout=60)
    assert everything_in(tmp_path) == before, "a read-only command created files or folders"
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1 and store in result.stderr, result.stderr
    assert result.stderr.startswith("orch: no store at "), result.stderr


def test_plan_not_found_names_the_store_it_looked_in(tmp_path: Path) -> None:
    env = orch_env(tmp_path)
    created = run_orch(["db", "upgrade"], tmp_path, env, timeout=60)
    assert created.returncode == 0, created.stderr
    database = tmp_path / ".orch" / "orch.db"
    for args in (["status", "nope"], ["report", "nope"], ["cancel", "nope"]):
        missing = run_orch(args, tmp_path, env, timeout=60)
        assert missing.returncode == 2
        assert missing.stderr == f"orch: no plan with id or name 'nope' in store at {database}\n", missing.stderr


@pytest.mark.parametrize("args", [["db", "upgrade"], ["status"]], ids=" ".join)
def test_a_sqlite_url_whose_folder_does_not_exist_is_refused_naming_the_folder(args: list[str], tmp_path: Path) -> None:
    """Before: a typo'd folder in ORCH_DATABASE_URL was created, with an empty store in it."""
    typo = tmp_path / "stores-typo" / "deep"
    env = orch_env(tmp_path, ORCH_DATABASE_URL=f"sqlite:///{typo / 'orch.db'}")
    result = run_orch(args, tmp_path, env, timeout=60)
    assert not (tmp_path / "stores-typo").exists()
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1 and f"folder {typo} does not exist" in result.stderr, result.stderr


@pytest.mark.parametrize("missing", ["file", "folder"])
def test_check_reports_a_missing_store_among_its_checks_and_creates_nothing(missing: str, tmp_path: Path) -> None:
    """`orch check` is the command to run when something is wrong: it names the missing store on its `store` line
    and goes on with the other checks (exit 1), creating nothing."""
    folder = tmp_path / "stores"
    if missing == "file":
        folder.mkdir()
    env = orch_env(tmp_path, ORCH_DATABASE_URL=f"sqlite:///{folder / 'orch.db'}")
    before = everything_in(tmp_path)
    result = run_orch(["check", "--timeout", "0.5"], tmp_path, env, timeout=60)
    assert everything_in(tmp_path) == before
    assert result.returncode == 1, result.stdout + result.stderr
    (store,) = [line for line in result.stdout.splitlines() if line.split()[1:2] == ["store"]]
    assert store.startswith("FAIL") and str(folder / "orch.db") in store, store
    said = "no such database file" if missing == "file" else f"folder {folder} does not exist"
    assert said in store, store
    assert any(line.split()[1:2] == ["broker"] for line in result.stdout.splitlines()), result.stdout


def test_db_upgrade_creates_the_file_in_an_existing_folder_and_orch_home_as_before(tmp_path: Path) -> None:
    """`orch db upgrade` (like `orch run` and `orch submit`) may create the store: the file in an existing folder,
    and ORCH_HOME itself (orch's own folder, made private) for the default store."""
    folder = tmp_path / "stores"
    folder.mkdir()
    env = orch_env(tmp_path, ORCH_DATABASE_URL=f"sqlite:///{folder / 'orch.db'}")
    assert run_orch(["db", "upgrade"], tmp_path, env, timeout=60).returncode == 0
    assert (folder / "orch.db").is_file()
    home = tmp_path / "fresh" / ".orch"
    env = orch_env(tmp_path, ORCH_HOME=str(home))
    assert run_orch(["db", "upgrade"], tmp_path, env, timeout=60).returncode == 0
    assert (home / "orch.db").is_file() and oct(os.stat(home).st_mode & 0o777) == "0o700"
    status = run_orch(["status"], tmp_path, env, timeout=60)  # the store exists now: read as before
    assert status.returncode == 0 and "no plans yet" in status.stdout, status.stderr


def test_the_exporter_refuses_to_serve_without_a_store(tmp_path: Path) -> None:
    scratch = tmp_path / "empty"
    scratch.mkdir()
    env = orch_env(tmp_path, ORCH_HOME=str(tmp_path / "nowhere" / ".orch"))
    result = run_orch(["exporter", "--port", "0"], scratch, env, timeout=30)
    assert everything_in(tmp_path) == ["empty"]
    assert result.returncode == 2 and result.stderr.startswith("orch: no store at sqlite:///"), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
