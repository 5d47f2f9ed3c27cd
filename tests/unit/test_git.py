"""orch.services.git without running git: the environment and argv it builds, and what it reads from a repository's
files (discovery, HEAD, the config's format) — including the odd files an agent could plant."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orch.services.git import command, repository
from orch.services.git.repository import Repository, StateNotKnown

SHA1 = "a" * 40
SHA256 = "b" * 64


def test_the_environment_holds_no_worker_secret_and_no_inherited_git_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {
        "ANTHROPIC_API_KEY": "sk-ant-api03-planted",
        "ORCH_DATABASE_URL": "postgresql://orch:planted-password@db/orch",
        "ORCH_BROKER_URL": "redis://:planted@redis:6379/0",
        "AWS_SECRET_ACCESS_KEY": "planted-aws",
        "GIT_DIR": "/elsewhere/.git",
        "GIT_CONFIG_PARAMETERS": "'core.fsmonitor'='touch /tmp/x'",
        "GIT_CONFIG_COUNT": "7",
        "GIT_EXTERNAL_DIFF": "touch /tmp/x",
        "LD_PRELOAD": "/tmp/evil.so",
    }
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    env = command.git_environment(Path("/nonexistent/home"))
    assert set(env) <= {"PATH", "HOME", "LANG", "LC_ALL"} | {key for key in env if key.startswith("GIT_")}
    assert not set(secrets) & set(env)
    assert not any(value in env.values() for value in secrets.values())
    assert {key: env[key] for key in ("GIT_CONFIG_NOSYSTEM", "GIT_CONFIG_GLOBAL", "GIT_TERMINAL_PROMPT")} == {
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
    }
    assert env["HOME"] == "/nonexistent/home" and env["LC_ALL"] == "C" and env["GIT_OPTIONAL_LOCKS"] == "0"
    assert env["PATH"] == os.environ["PATH"]


def test_relative_path_entries_are_dropped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """git runs in the agent's workdir: a `git` the agent drops there must never be the one that runs."""
    planted = tmp_path / "git"
    planted.write_text("#!/bin/sh\ntouch planted\n")
    planted.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", f".:{os.environ['PATH']}:")
    assert command.git_environment(tmp_path)["PATH"].split(os.pathsep) == [
        entry for entry in os.environ["PATH"].split(os.pathsep) if entry.startswith("/")
    ]
    assert command.git_executable() != str(planted) and os.path.isabs(command.git_executable())


def test_every_command_carries_the_overrides_and_its_subcommands_flags() -> None:
    argv = command.git_argv(["diff", "--name-only", "a", "b"])
    assert os.path.isabs(argv[0]) and Path(argv[0]).name == "git" and argv[1] == "--no-pager"
    overrides = dict(argv[i + 1].split("=", 1) for i, item in enumerate(argv) if item == "-c")
    for key in ("core.fsmonitor", "core.hooksPath", "core.untrackedCache", "diff.external", "credential.helper"):
        assert key in overrides
    assert overrides["core.fsmonitor"] == "false" and overrides["core.hooksPath"] == "/dev/null"
    assert overrides["credential.helper"] == "" and overrides["protocol.ext.allow"] == "never"
    assert argv[argv.index("diff") + 1 :] == ["--no-ext-diff", "--no-textconv", "--name-only", "a", "b"]
    assert "--ignore-submodules=all" in command.git_argv(["status"])
    assert command.git_argv(["hash-object", "--stdin-paths"])[-2:] == ["--no-filters", "--stdin-paths"]
    with pytest.raises(ValueError):
        command.git_argv([])


def make_git_dir(folder: Path, head: str = "ref: refs/heads/main\n") -> Path:
    for sub in ("objects", "refs/heads"):
        (folder / sub).mkdir(parents=True)
    (folder / "HEAD").write_text(head)
    return folder


def test_discovery_walks_up_to_the_nearest_git_folder(tmp_path: Path) -> None:
    top = tmp_path / "top"
    make_git_dir(top / ".git")
    (top / "a" / "b").mkdir(parents=True)
    expected = Repository(top, top / ".git", top / ".git")
    assert repository.find_repository(top) == expected
    assert repository.find_repository(top / "a" / "b") == expected
    assert repository.find_repository(top / ".git") is None  # inside the git dir: no worktree
    assert repository.find_repository(tmp_path / "missing") is None


def test_a_git_folder_that_is_no_repository_is_walked_past(tmp_path: Path) -> None:
    top = tmp_path / "top"
    make_git_dir(top / ".git")
    (top / "inner" / ".git").mkdir(parents=True)  # no HEAD, objects or refs: git ignores it too
    assert repository.find_repository(top / "inner") == Repository(top, top / ".git", top / ".git")


def test_a_gitdir_file_and_a_linked_worktrees_commondir(tmp_path: Path) -> None:
    main = make_git_dir(tmp_path / "main" / ".git")
    linked_git_dir = main / "worktrees" / "wt"
    linked_git_dir.mkdir(parents=True)
    (linked_git_dir / "HEAD").write_text(SHA1 + "\n")
    (linked_git_dir / "commondir").write_text("../..\n")
    worktree = tmp_path / "wt"
    worktree.mkdir()
    (worktree / ".git").write_text(f"gitdir: {linked_git_dir}\n")
    assert repository.find_repository(worktree) == Repository(worktree, linked_git_dir, main)

    submodule = tmp_path / "main" / "sub"
    submodule.mkdir()
    make_git_dir(main / "modules" / "sub")
    (submodule / ".git").write_text("gitdir: ../.git/modules/sub\n")
    assert repository.find_repository(submodule) == Repository(
        submodule, main / "modules" / "sub", main / "modules" / "sub"
    )


@pytest.mark.parametrize(
    "plant",
    ["gitdir: /nowhere/at/all\n", "not a gitdir line\n", "gitdir: a\ngitdir: b\n", b"gitdir: \xff\n", "fifo", "huge",
     "symlink-to-dev-zero", "commondir-fifo"],
)  # fmt: skip
def test_an_odd_git_file_means_not_known(tmp_path: Path, plant: str | bytes) -> None:
    worktree = tmp_path / "wt"
    worktree.mkdir()
    dot_git = worktree / ".git"
    if plant == "fifo":
        os.mkfifo(dot_git)
    elif plant == "huge":
        dot_git.write_bytes(b"gitdir: " + b"x" * (2 << 20))
    elif plant == "symlink-to-dev-zero":
        dot_git.symlink_to("/dev/zero")
    elif plant == "commondir-fifo":
        target = make_git_dir(tmp_path / "gd")
        os.mkfifo(target / "commondir")
        dot_git.write_text(f"gitdir: {target}\n")
    elif isinstance(plant, bytes):
        dot_git.write_bytes(plant)
    else:
        dot_git.write_text(plant)
    assert repository.find_repository(worktree) is None


def test_head_through_a_loose_ref_a_packed_ref_a_symref_or_detached(tmp_path: Path) -> None:
    git_dir = make_git_dir(tmp_path / ".git")
    assert repository.resolve_head(git_dir, git_dir) is None  # unborn
    (git_dir / "packed-refs").write_text(
        f"# pack-refs with: peeled fully-peeled sorted \n{'c' * 40} refs/heads/feature/main\n{SHA1} refs/heads/main\n"
        f"^{'d' * 40}\n"
    )
    assert repository.resolve_head(git_dir, git_dir) == SHA1
    (git_dir / "refs" / "heads" / "main").write_text("e" * 40 + "\n")
    assert repository.resolve_head(git_dir, git_dir) == "e" * 40
    (git_dir / "refs" / "heads" / "main").write_text("ref: refs/heads/other\n")
    (git_dir / "refs" / "heads" / "other").write_text("f" * 40 + "\n")
    assert repository.resolve_head(git_dir, git_dir) == "f" * 40
    (git_dir / "HEAD").write_text(SHA256 + "\n")
    assert repository.resolve_head(git_dir, git_dir, hex_length=64) == SHA256


def test_a_linked_worktrees_head_reads_shared_refs_from_the_common_dir(tmp_path: Path) -> None:
    common = make_git_dir(tmp_path / "common")
    own = tmp_path / "own"
    own.mkdir()
    (own / "HEAD").write_text("ref: refs/heads/side\n")
    (common / "refs" / "heads" / "side").write_text(SHA1 + "\n")
    assert repository.resolve_head(own, common) == SHA1


@pytest.mark.parametrize(
    "head",
    ["ref: refs/../../etc/passwd\n", "ref: /etc/passwd\n", "ref: refs/heads/.hidden\n", "ref: refs/heads/a.lock\n",
     "ref: refs/heads/a b\n", "ref: HEAD\n", "garbage\n", "A" * 40 + "\n", "a" * 39 + "\n"],
)  # fmt: skip
def test_a_head_that_names_no_ref_or_commit_is_not_known(tmp_path: Path, head: str) -> None:
    git_dir = make_git_dir(tmp_path / ".git", head)
    with pytest.raises(StateNotKnown):
        repository.resolve_head(git_dir, git_dir)


def test_odd_ref_files_are_not_known(tmp_path: Path) -> None:
    git_dir = make_git_dir(tmp_path / ".git")
    (git_dir / "refs" / "heads" / "main").write_text("ref: refs/heads/main\n")
    with pytest.raises(StateNotKnown, match="symbolic refs"):
        repository.resolve_head(git_dir, git_dir)
    (git_dir / "refs" / "heads" / "main").unlink()
    os.mkfifo(git_dir / "refs" / "heads" / "main")
    with pytest.raises(StateNotKnown):
        repository.resolve_head(git_dir, git_dir)
    (git_dir / "refs" / "heads" / "main").unlink()
    (git_dir / "packed-refs").write_text("not-a-commit refs/heads/main\n")
    with pytest.raises(StateNotKnown):
        repository.resolve_head(git_dir, git_dir)
    (git_dir / "HEAD").unlink()
    (git_dir / "HEAD").symlink_to("/dev/zero")
    with pytest.raises(StateNotKnown):
        repository.resolve_head(git_dir, git_dir)


def test_config_listing_and_format() -> None:
    entries = repository.parse_config_list(
        "core.repositoryformatversion\n1\0extensions.objectformat\nsha256\0core.bare\nfalse\0core.filemode\0"
        "core.filemode\nfalse\0core.fsmonitor\ntouch /tmp/x\0core.checkstat\n$(touch /tmp/x)\0core.autocrlf\nInput\0"
    )
    assert ("core.filemode", None) in entries
    repo_format = repository.read_format(entries)
    assert repo_format.object_format == "sha256"
    # Only the data-only keys, and only with values from their short lists.
    assert repo_format.mirrored == (("core.filemode", "false"), ("core.autocrlf", "input"))
    assert repository.read_format([]).object_format == "sha1"


@pytest.mark.parametrize(
    "entries",
    [[("core.repositoryformatversion", "2")], [("core.repositoryformatversion", "1"), ("extensions.refstorage", "x")],
     [("core.repositoryformatversion", "1"), ("extensions.objectformat", "md5")],
     [("extensions.objectformat", "sha256")]],
)  # fmt: skip
def test_a_format_git_would_refuse_is_not_known(entries: list[tuple[str, str | None]]) -> None:
    with pytest.raises(StateNotKnown):
        repository.read_format(entries)
