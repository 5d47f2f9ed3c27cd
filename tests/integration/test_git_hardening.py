"""orch's own git never obeys an agent-writable repository (real git, real files).

Each case plants a command in `.git/config`, `.gitattributes`, `.git/hooks` or an included file that would leave a
marker file when run. A control first runs plain git the way the old snapshot did (or the command that fires the
plant) and sees the marker: the plant is live. Then the snapshots run before and after the "agent" edits files and
commits, and must leave no marker and still give the right changed files. The agent's own git commands carry
AGENT_STEP=1, which the planted commands check, so only a run by orch's git could leave a marker.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from orch.services.git import command as git_command
from orch.services.git import worktree_view
from workers.workspace import changed_since, snapshot

AGENT_ENV = {**os.environ, "AGENT_STEP": "1"}


def git(repo: Path, *args: str, env: dict[str, str] | None = None, stdin: str | None = None, check: bool = True) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], check=check, capture_output=True, text=True, env=env, input=stdin, timeout=60
    )
    return done.stdout


def agent_git(repo: Path, *args: str) -> None:
    """A git command of the agent's own: planted commands see AGENT_STEP and stay quiet."""
    git(repo, f"--work-tree={repo}", "-c", "filter.x.process=", *args, env=AGENT_ENV)


def guarded(markers: Path, name: str) -> str:
    """A shell command that leaves markers/<name> unless the agent's own git runs it."""
    return f'[ -n "$AGENT_STEP" ] || echo hit >> {markers / name}'


def script(path: Path, body: str) -> str:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return str(path)


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    folder = tmp_path / "markers"
    folder.mkdir()
    return folder


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    (work / "src").mkdir(parents=True)
    git(work, "init", "-q")
    git(work, "config", "user.email", "t@example.com")
    git(work, "config", "user.name", "t")
    for name, text in (("keep.py", "keep\n"), ("edit.py", "v1\n"), ("gone.py", "bye\n")):
        (work / "src" / name).write_text(text)
    git(work, "add", "src")
    git(work, "commit", "-qm", "base")
    return work


def configure(config_file: Path, entries: dict[str, str]) -> None:
    for key, value in entries.items():
        subprocess.run(["git", "config", "--file", str(config_file), "--add", key, value], check=True)


def empty_tree(repo: Path) -> str:
    return git(repo, "hash-object", "-t", "tree", "/dev/null").strip()


def on_a_terminal(repo: Path, *args: str) -> None:
    """Plain git with a terminal for its stdout: what makes git start a pager."""
    leader, follower = pty.openpty()
    try:
        subprocess.run(["git", "-C", str(repo), *args], stdout=follower, stderr=subprocess.DEVNULL, timeout=60)
    finally:
        os.close(follower)
        os.close(leader)


def old_status(repo: Path) -> None:
    """What the old snapshot ran: plain `git status`, the worker's whole environment, in the workdir."""
    git(repo, "status", "--porcelain=v1", "-z", "--untracked-files=all", "--no-renames", "--", ".")


def old_hash_object(repo: Path) -> None:
    git(repo, "hash-object", "--stdin-paths", stdin="src/keep.py\n", check=False)


def touch_then_old_status(repo: Path) -> None:
    """A tracked file's stat changes, content not: the old status refreshed the index and wrote it back."""
    keep = repo / "src" / "keep.py"
    os.utime(keep, ns=(time.time_ns(), keep.stat().st_mtime_ns + 2_000_000_000))
    old_status(repo)


def checkout_file(repo: Path) -> None:
    (repo / "src" / "keep.py").unlink()
    git(repo, "checkout", "--", "src/keep.py")


@dataclass
class Plant:
    name: str
    config: Callable[[Path, Path], dict[str, str]]  # (markers, scratch folder) → entries for .git/config
    control: Callable[[Path], object]  # runs plain git in the repo; the plant then leaves a marker
    attributes: str = ""


PLANTS = [
    Plant("fsmonitor", lambda m, s: {"core.fsmonitor": guarded(m, "fsmonitor") + "; false"}, old_status),
    Plant("hooksPath", lambda m, s: {"core.hooksPath": str(s)}, touch_then_old_status),
    Plant("default_hook", lambda m, s: {}, touch_then_old_status),
    Plant(
        "filter_clean", lambda m, s: {"filter.x.clean": guarded(m, "clean") + "; cat"}, old_hash_object, "* filter=x\n"
    ),
    Plant(
        "filter_smudge", lambda m, s: {"filter.x.smudge": guarded(m, "smudge") + "; cat"}, checkout_file, "* filter=x\n"
    ),
    Plant("filter_process", lambda m, s: {"filter.x.process": guarded(m, "process")}, old_hash_object, "* filter=x\n"),
    Plant(
        "diff_textconv",
        lambda m, s: {"diff.x.textconv": guarded(m, "textconv") + "; cat"},
        lambda repo: git(repo, "diff", empty_tree(repo), "HEAD"),
        "* diff=x\n",
    ),
    Plant(
        "diff_command",
        lambda m, s: {"diff.x.command": guarded(m, "command")},
        lambda repo: git(repo, "diff", empty_tree(repo), "HEAD"),
        "* diff=x\n",
    ),
    Plant(
        "diff_external",
        lambda m, s: {"diff.external": guarded(m, "external")},
        lambda repo: git(repo, "diff", empty_tree(repo), "HEAD"),
    ),
    Plant(
        "core_pager",
        lambda m, s: {"core.pager": guarded(m, "pager") + "; cat >/dev/null"},
        lambda repo: on_a_terminal(repo, "log", "-1"),
    ),
    Plant(
        "pager_status",
        lambda m, s: {"pager.status": guarded(m, "pager") + "; cat >/dev/null"},
        lambda repo: on_a_terminal(repo, "status"),
    ),
    Plant(
        "pager_diff",
        lambda m, s: {"pager.diff": guarded(m, "pager") + "; cat >/dev/null"},
        lambda repo: on_a_terminal(repo, "diff", empty_tree(repo), "HEAD"),
    ),
    Plant(
        "credential_helper",
        lambda m, s: {"credential.helper": "!" + guarded(m, "credential")},
        lambda repo: git(repo, "credential", "fill", stdin="protocol=https\nhost=example.com\n\n", check=False),
    ),
    Plant(
        "core_sshCommand",
        lambda m, s: {"core.sshCommand": guarded(m, "ssh") + "; false"},
        lambda repo: git(repo, "ls-remote", "ssh://example.invalid/x", check=False),
    ),
    Plant(
        "core_askPass",
        lambda m, s: {"core.askPass": script(s / "askpass", guarded(m, "askpass") + "\necho x")},
        lambda repo: git(repo, "credential", "fill", stdin="protocol=https\nhost=example.com\n\n", check=False),
    ),
    Plant(
        "core_gitProxy",
        lambda m, s: {"core.gitProxy": script(s / "proxy", guarded(m, "proxy") + "\nexit 1")},
        lambda repo: git(repo, "ls-remote", "git://example.invalid/x", check=False),
    ),
    Plant(
        "include_path",
        lambda m, s: {"include.path": str(s / "included.cfg")},
        old_status,
        "* filter=x\n",
    ),
]


def plant_into(case: Plant, repo: Path, markers: Path, scratch: Path) -> None:
    scratch.mkdir(exist_ok=True)
    if case.name == "hooksPath":
        script(scratch / "post-index-change", guarded(markers, "hooksPath"))
    if case.name == "default_hook":
        script(repo / ".git" / "hooks" / "post-index-change", guarded(markers, "hook"))
    if case.name == "include_path":
        configure(
            scratch / "included.cfg",
            {
                "core.fsmonitor": guarded(markers, "included_fsmonitor") + "; false",
                "filter.x.clean": guarded(markers, "included_clean") + "; cat",
            },
        )
    configure(repo / ".git" / "config", case.config(markers, scratch))
    if case.attributes:
        (repo / ".gitattributes").write_text(case.attributes)


def left_markers(markers: Path) -> list[str]:
    return sorted(path.name for path in markers.iterdir())


def agent_edits_and_commits(repo: Path) -> None:
    (repo / "src" / "edit.py").write_text("v2\n")
    (repo / "src" / "new.py").write_text("new\n")
    (repo / "src" / "gone.py").unlink()


def agent_commits(repo: Path) -> None:
    (repo / "docs").mkdir()
    (repo / "docs" / "c.md").write_text("committed by the agent\n")
    agent_git(repo, "add", "docs/c.md")
    agent_git(repo, "commit", "-qm", "agent commit")


@pytest.mark.parametrize("case", PLANTS, ids=[case.name for case in PLANTS])
def test_planted_commands_never_run_and_the_changes_stay_right(
    case: Plant, repo: Path, markers: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("GIT_ASKPASS", "SSH_ASKPASS", "GIT_SSH_COMMAND", "GIT_PROXY_COMMAND", "GIT_PAGER", "PAGER"):
        monkeypatch.delenv(name, raising=False)
    plant_into(case, repo, markers, tmp_path / "scratch")
    case.control(repo)
    assert left_markers(markers), f"control: plain git did not run the planted {case.name}; the plant is not live"
    shutil.rmtree(markers)
    markers.mkdir()

    before = snapshot(repo)
    assert before is not None
    agent_edits_and_commits(repo)
    assert changed_since(before, repo) == ("src/edit.py", "src/gone.py", "src/new.py")
    agent_commits(repo)
    assert changed_since(before, repo) == ("docs/c.md", "src/edit.py", "src/gone.py", "src/new.py")
    after_commit = snapshot(repo)
    assert after_commit is not None and after_commit.head != before.head
    (repo / "src" / "keep.py").write_text("touched after the commit\n")
    assert changed_since(after_commit, repo) == ("src/keep.py",)
    assert left_markers(markers) == []


def test_core_worktree_pointing_elsewhere_is_ignored(repo: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "src").mkdir(parents=True)
    (elsewhere / "src" / "edit.py").write_text("another tree\n")
    configure(repo / ".git" / "config", {"core.worktree": str(elsewhere)})
    # control: plain git now reads the other folder as the worktree
    assert git(repo, "rev-parse", "--show-toplevel").strip() == str(elsewhere)
    assert "src/keep.py" in git(repo, "status", "--porcelain")

    before = snapshot(repo)
    assert before is not None and before.dirty == {}
    agent_edits_and_commits(repo)
    assert changed_since(before, repo) == ("src/edit.py", "src/gone.py", "src/new.py")


def test_git_settings_in_the_workers_environment_are_not_passed_on(
    repo: Path, markers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "core.fsmonitor",
        "GIT_CONFIG_VALUE_0": guarded(markers, "env_fsmonitor") + "; false",
        "GIT_CONFIG_PARAMETERS": f"'core.hookspath'='{markers}'",
        "GIT_DIR": str(markers),
    }.items():
        monkeypatch.setenv(key, value)
    control_env = {**os.environ}
    control_env.pop("GIT_DIR")
    git(repo, "status", env=control_env)
    assert left_markers(markers) == ["env_fsmonitor"]
    (markers / "env_fsmonitor").unlink()

    before = snapshot(repo)
    assert before is not None
    agent_edits_and_commits(repo)
    assert changed_since(before, repo) == ("src/edit.py", "src/gone.py", "src/new.py")
    assert left_markers(markers) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the repository to another user")
def test_a_repository_owned_by_another_user_is_read_as_root(repo: Path) -> None:
    agent_edits_and_commits(repo)
    nobody = pwd.getpwnam("nobody")
    for path in [repo, *repo.rglob("*")]:
        os.lchown(path, nobody.pw_uid, nobody.pw_gid)
    refused = subprocess.run(["git", "-C", str(repo), "status"], capture_output=True, text=True)
    assert refused.returncode != 0 and "dubious ownership" in refused.stderr  # plain git refuses; we must not

    before = snapshot(repo)
    assert before is not None and before.head is not None
    assert set(before.dirty) == {"src/edit.py", "src/gone.py", "src/new.py"}
    (repo / "src" / "keep.py").write_text("changed by the agent\n")
    assert changed_since(before, repo) == ("src/keep.py",)
    assert snapshot(repo / "src") is not None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to hand the worktree to another user")
def test_a_gitdir_file_naming_another_users_repository_is_not_read(repo: Path, tmp_path: Path) -> None:
    """An agent (here: nobody) points its `.git` at a repository only root can read: its state is not known."""
    agent_tree = tmp_path / "agent"
    agent_tree.mkdir()
    (agent_tree / ".git").write_text(f"gitdir: {repo / '.git'}\n")
    nobody = pwd.getpwnam("nobody")
    for path in (agent_tree, agent_tree / ".git"):
        os.lchown(path, nobody.pw_uid, nobody.pw_gid)
    assert snapshot(agent_tree) is None
    os.lchown(agent_tree, 0, 0)
    assert snapshot(agent_tree) is not None  # one owner: read as usual


def test_linked_worktree_packed_refs_and_sha256(repo: Path, tmp_path: Path) -> None:
    linked = tmp_path / "linked"
    git(repo, "worktree", "add", "-q", "-b", "side", str(linked))
    git(repo, "pack-refs", "--all")
    assert not (repo / ".git" / "refs" / "heads" / "side").exists()
    before = snapshot(linked)
    assert before is not None and before.head == git(repo, "rev-parse", "side").strip()
    (linked / "src" / "edit.py").write_text("in the linked worktree\n")
    (linked / "extra.txt").write_text("x\n")
    git(linked, "add", "extra.txt")
    git(linked, "commit", "-qm", "side commit")
    assert changed_since(before, linked) == ("extra.txt", "src/edit.py")

    sha256 = tmp_path / "sha256"
    git(tmp_path, "init", "-q", "--object-format=sha256", str(sha256))
    (sha256 / "a.txt").write_text("a\n")
    git(sha256, "add", "a.txt")
    git(sha256, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "base")
    start = snapshot(sha256)
    assert start is not None and start.head is not None and len(start.head) == 64
    (sha256 / "a.txt").write_text("b\n")
    assert changed_since(start, sha256) == ("a.txt",)


def test_an_unborn_branch_gives_its_untracked_files(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    git(tmp_path, "init", "-q", str(fresh))
    (fresh / "a.txt").write_text("a\n")
    before = snapshot(fresh)
    assert before is not None and before.head is None and set(before.dirty) == {"a.txt"}
    (fresh / "b.txt").write_text("b\n")
    assert changed_since(before, fresh) == ("b.txt",)


def test_odd_repositories_are_not_known_quickly(repo: Path) -> None:
    dot_git = repo / ".git"
    git(repo, "update-index", "--split-index")
    assert snapshot(repo) is None  # the shared index is not in the private git dir: not known, no guess
    git(repo, "update-index", "--no-split-index")
    assert snapshot(repo) is not None

    for odd in (dot_git / "HEAD", dot_git / "index", dot_git / "config"):
        saved = odd.with_name(odd.name + ".saved")
        odd.rename(saved)
        os.mkfifo(odd)
        started = time.monotonic()
        assert snapshot(repo) is None, f"{odd.name} as a FIFO"
        assert time.monotonic() - started < 10
        odd.unlink()
        saved.rename(odd)
    assert snapshot(repo) is not None

    with (dot_git / "config").open("a") as config:
        config.write("[core]\n\trepositoryformatversion = 1\n[extensions]\n\tsomethingNew = yes\n")
    assert snapshot(repo) is None


def test_a_gitdir_file_pointing_nowhere_or_at_a_huge_file(repo: Path, tmp_path: Path) -> None:
    linked = tmp_path / "pointer"
    linked.mkdir()
    (linked / ".git").write_text(f"gitdir: {tmp_path / 'nowhere'}\n")
    assert snapshot(linked) is None
    (linked / ".git").write_bytes(b"gitdir: " + b"x" * (2 << 20))
    assert snapshot(linked) is None
    (linked / ".git").unlink()
    (linked / ".git").symlink_to("/dev/zero")
    assert snapshot(linked) is None


def test_symlinks_count_by_their_target_and_nothing_beyond_one_is_read(repo: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.py").write_text("outside the repository\n")
    (outside / "other.txt").write_text("other\n")
    (repo / "link").symlink_to(outside / "keep.py")
    shutil.rmtree(repo / "src")
    (repo / "src").symlink_to(outside)  # tracked src/* are now beyond a symlink: deleted, for git as for us
    before = snapshot(repo)
    assert before is not None
    assert before.dirty["src/keep.py"] == "-" and before.dirty["link"] != "-"
    (outside / "keep.py").write_text("changed outside: not the workspace's change\n")
    assert changed_since(before, repo) == ()
    (repo / "link").unlink()
    (repo / "link").symlink_to(outside / "other.txt")
    assert changed_since(before, repo) == ("link",)


def git_dir_state(repo: Path) -> dict[Path, tuple[int, int, int]]:
    return {
        path: (path.stat().st_ino, path.stat().st_mtime_ns, path.stat().st_mode) for path in (repo / ".git").rglob("*")
    }


def test_the_repository_is_never_written(repo: Path) -> None:
    """The old snapshot wrote a refreshed index back (as the worker's user, with the worker's umask)."""
    keep = repo / "src" / "keep.py"
    os.utime(keep, ns=(time.time_ns(), keep.stat().st_mtime_ns + 2_000_000_000))  # stale stat data: a refresh
    untouched = git_dir_state(repo)
    before = snapshot(repo)
    assert before is not None and before.dirty == {}
    agent_edits_and_commits(repo)
    assert changed_since(before, repo) == ("src/edit.py", "src/gone.py", "src/new.py")
    assert git_dir_state(repo) == untouched


def test_a_kept_refresh_never_hides_a_change(tmp_path: Path) -> None:
    fresh = tmp_path / "fresh"
    (fresh / "src").mkdir(parents=True)
    for index in range(20):
        (fresh / "src" / f"f{index}.txt").write_text(f"{index:04}\n")
    git(tmp_path, "init", "-q", str(fresh))
    git(fresh, "add", "src")
    git(fresh, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "base")
    # An index no newer than its files (as after a checkout within the same second): git must re-read those
    # files, and its refresh is kept.
    newest = max(path.stat().st_mtime_ns for path in (fresh / "src").iterdir())
    os.utime(fresh / ".git" / "index", ns=(newest, newest))
    before = snapshot(fresh)
    assert before is not None and before.dirty == {}
    assert (fresh / ".git" / "index").resolve() in worktree_view._refreshed_indexes
    changed = fresh / "src" / "f3.txt"
    mtime = changed.stat().st_mtime_ns
    changed.write_text("9999\n")  # same size, and the same mtime again
    os.utime(changed, ns=(mtime, mtime))
    assert changed_since(before, fresh) == ("src/f3.txt",)
    again = snapshot(fresh)
    assert again is not None and set(again.dirty) == {"src/f3.txt"}
    git(fresh, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qam", "f3")
    committed = snapshot(fresh)  # a new index: the kept refresh of the old one must not be used
    assert committed is not None and committed.dirty == {}


def test_names_that_are_no_utf8_survive_and_come_out_printable(repo: Path) -> None:
    before = snapshot(repo)
    assert before is not None
    odd = os.fsdecode(b"bad\xff name.txt")
    (repo / odd).write_text("x\n")
    (repo / "caf\u00e9.txt").write_text("y\n")
    changed = changed_since(before, repo)
    assert changed == ("bad\\xff name.txt", "caf\u00e9.txt")
    assert json.loads(json.dumps(changed)) == list(changed)
    after = snapshot(repo)
    assert after is not None and after.dirty[odd] != "-"  # hashed under its real name


def test_no_private_folder_is_left_behind(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    before = snapshot(repo)
    assert before is not None
    agent_edits_and_commits(repo)
    assert changed_since(before, repo) == ("src/edit.py", "src/gone.py", "src/new.py")
    (repo / ".git" / "HEAD").write_text("ref: refs/../../etc/passwd\n")
    assert snapshot(repo) is None
    assert list(temp.iterdir()) == []


GENERAL_PLANTS = {
    "fsmonitor": ({"core.fsmonitor": "{fsmonitor}; false"}, ["status", "--porcelain"], None),
    "credential_helper": (
        {"credential.helper": "!{credential}"},
        ["credential", "fill"],
        "protocol=https\nhost=example.com\n\n",
    ),
    "core_askPass": ({"core.askPass": "@askpass"}, ["credential", "fill"], "protocol=https\nhost=example.com\n\n"),
    "core_sshCommand": ({"core.sshCommand": "{ssh}; false"}, ["ls-remote", "ssh://example.invalid/x"], None),
    "core_gitProxy": ({"core.gitProxy": "@proxy"}, ["ls-remote", "git://example.invalid/x"], None),
    "diff_external": ({"diff.external": "{external}"}, ["diff", "@empty", "HEAD"], None),
    "diff_command": ({"diff.x.command": "{command}"}, ["diff", "@empty", "HEAD"], None),
    "diff_textconv": ({"diff.x.textconv": "{textconv}; cat"}, ["diff", "@empty", "HEAD"], None),
}


@pytest.mark.parametrize("name", sorted(GENERAL_PLANTS))
def test_run_git_overrides_program_keys_of_a_repository_it_reads(
    name: str, repo: Path, markers: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """run_git reads the repository's config (for repositories orch owns); the overrides still run nothing."""
    for variable in ("GIT_ASKPASS", "SSH_ASKPASS", "GIT_SSH_COMMAND", "GIT_PROXY_COMMAND"):
        monkeypatch.delenv(variable, raising=False)
    entries, args, stdin = GENERAL_PLANTS[name]
    scripts = {"@askpass": script(tmp_path / "askpass", guarded(markers, "askpass") + "\necho x")}
    scripts["@proxy"] = script(tmp_path / "proxy", guarded(markers, "proxy") + "\nexit 1")
    planted = {key: _fill(value, markers, scripts) for key, value in entries.items()}
    configure(repo / ".git" / "config", planted)
    (repo / ".gitattributes").write_text("* diff=x\n")
    argv = [empty_tree(repo) if arg == "@empty" else arg for arg in args]
    git(repo, *argv, stdin=stdin, check=False)
    assert left_markers(markers), f"control: plain git did not run the planted {name}"
    shutil.rmtree(markers)
    markers.mkdir()

    with contextlib.suppress(git_command.GitFailed):  # credentials and remotes are refused: nothing planted may run
        git_command.run_git(argv, git_dir=repo / ".git", work_tree=repo, cwd=repo, stdin=stdin)
    assert left_markers(markers) == []


def _fill(value: str, markers: Path, scripts: dict[str, str]) -> str:
    if value in scripts:
        return scripts[value]
    start, end = value.index("{"), value.index("}")
    return value[:start] + guarded(markers, value[start + 1 : end]) + value[end + 1 :]


def test_the_private_git_dir_is_private(repo: Path) -> None:
    view = worktree_view.open_worktree_view(repo)
    assert view is not None
    with view:
        private = Path(view.git("rev-parse", "--absolute-git-dir").strip())
        assert private != repo / ".git" and stat.S_IMODE(private.stat().st_mode) == 0o700
        listing = view.git("config", "--list", "--show-origin")
        origins = {line.split("\t")[0] for line in listing.splitlines()}
        assert origins == {f"file:{private}/config", "command line:"}  # ours and the overrides, nothing else
    assert not private.exists()


def test_a_git_command_past_its_time_limit_is_ended_with_what_it_started(tmp_path: Path) -> None:
    """A git that runs a program which hangs (here an alias of the caller's own config) is killed with its whole
    process group at the limit, so no pipe held by a grandchild keeps the caller waiting."""
    subprocess.run(["git", "init", "-q", "--bare", str(tmp_path / "r.git")], check=True)
    started = time.monotonic()
    with pytest.raises(git_command.GitFailed) as failed:
        git_command.run_git(["hang"], git_dir=tmp_path / "r.git", cwd=tmp_path, timeout=1.0,
                extra_config=[("alias.hang", "!sleep 60")])  # fmt: skip
    assert time.monotonic() - started < 10
    assert str(failed.value) == f"git hang in {tmp_path}: no answer within 1 s"
