"""The per-host cache clone (real git, repositories under tmp_path): created and re-hardened by `ensure`, fetched
from and pushed to a bare remote and a user's non-bare checkout — whose work tree and index stay byte-for-byte
untouched — by compare-and-swap, with messages naming the repository and never a password.

The helpers here are shared by test_git_worktrees.py and test_git_merging.py."""

from __future__ import annotations

import base64
import fcntl
import hashlib
import http.server
import os
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import pytest

from orch.services.git import cache as cache_module
from orch.services.git.cache import CACHE_CONFIG, RepositoryCache
from orch.services.git.command import GitFailed
from orch.services.git.worktrees import add_worktree, remove_worktree

AUTHOR = ("Orch Test", "orch@example.com")


def git(repo: Path, *args: str, stdin: str | None = None, check: bool = True) -> str:
    """Plain git, as a user would run it (the user's own config: the identity below)."""
    done = subprocess.run(
        ["git", "-c", "user.name=u", "-c", "user.email=u@example.com", "-C", str(repo), *args],
        check=check,
        capture_output=True,
        encoding="utf-8",
        errors="surrogateescape",  # names that are no UTF-8 come back as os.fsdecode gives them
        input=stdin,
        timeout=60,
    )
    return done.stdout


def commit_files(repo: Path, files: Mapping[str, str | None], message: str = "change") -> str:
    """Write (None: delete) files in a non-bare repo and commit them; the new HEAD."""
    for name, text in files.items():
        target = repo / name
        if text is None:
            target.unlink()
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", message)
    return git(repo, "rev-parse", "HEAD").strip()


def make_checkout(path: Path, files: dict[str, str] | None = None) -> Path:
    """A user's non-bare repository on `main` with one commit."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    commit_files(path, files or {"README.md": "hello\n", "src/app.py": "print('v1')\n"}, "base")
    return path


def make_bare_remote(tmp_path: Path, files: dict[str, str] | None = None) -> tuple[Path, Path]:
    """(a bare remote, the checkout it was cloned from — use it to add commits and push them to the remote)."""
    seed = make_checkout(tmp_path / "seed", files)
    remote = tmp_path / "remote.git"
    git(tmp_path, "clone", "-q", "--bare", str(seed), str(remote))
    git(seed, "remote", "add", "origin", str(remote))
    return remote, seed


def fingerprint(checkout: Path) -> dict[str, str]:
    """Every work-tree file's bytes and mode, plus .git/index and .git/HEAD: what must never change."""
    found = {}
    for root, folders, files in os.walk(checkout):
        folders[:] = [name for name in folders if Path(root, name) != checkout / ".git"]
        for name in files:
            path = Path(root, name)
            found[str(path.relative_to(checkout))] = hashlib.sha256(path.read_bytes()).hexdigest() + oct(
                path.lstat().st_mode
            )
    for name in ("index", "HEAD"):
        found[f".git/{name}"] = hashlib.sha256((checkout / ".git" / name).read_bytes()).hexdigest()
    return found


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    return make_bare_remote(tmp_path)[0]


@pytest.fixture
def cache(tmp_path: Path, remote: Path) -> RepositoryCache:
    return RepositoryCache(tmp_path / "home" / "git", str(remote)).ensure()


def test_ensure_creates_a_bare_cache_once_and_names_it_by_the_url(tmp_path: Path, remote: Path) -> None:
    root = tmp_path / "home" / "git"
    cache = RepositoryCache(root, str(remote))
    assert cache.path.parent == root and cache.path.name.startswith("remote-") and cache.path.suffix == ".git"
    assert RepositoryCache(root, str(remote) + "/").path != cache.path
    assert cache.ensure() is cache
    assert git(cache.path, "rev-parse", "--is-bare-repository").strip() == "true"
    (cache.path / "objects" / "marker").write_text("kept\n")
    cache.ensure()
    assert (cache.path / "objects" / "marker").read_text() == "kept\n"  # not re-created
    assert (cache.path / "config").read_text() == CACHE_CONFIG
    assert list((cache.path / "hooks").iterdir()) == []


def test_ensure_undoes_a_tampered_cache_and_nothing_planted_runs(tmp_path: Path, cache: RepositoryCache) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    planted = f"echo hit >> {markers}/"
    included = tmp_path / "included.cfg"
    included.write_text(f"[core]\n\tfsmonitor = {planted}included; false\n")
    with (cache.path / "config").open("a") as config:
        config.write(
            f"[core]\n\tfsmonitor = {planted}fsmonitor; false\n"
            f'[filter "x"]\n\tsmudge = {planted}smudge; cat\n\tprocess = {planted}process\n'
            f"[include]\n\tpath = {included}\n"
        )
    (cache.path / "info").mkdir(exist_ok=True)
    (cache.path / "info" / "attributes").write_text("* filter=x\n")
    hook = cache.path / "hooks" / "post-checkout"
    hook.write_text(f"#!/bin/sh\n{planted}hook\n")
    hook.chmod(0o755)
    head = cache.fetch("main")["main"]
    assert head is not None
    # control: plain git in the tampered cache runs the plants
    git(cache.path, "worktree", "add", "-q", "--detach", str(tmp_path / "control"), head, check=False)
    assert sorted(path.name for path in markers.iterdir())
    for path in markers.iterdir():
        path.unlink()
    git(cache.path, "worktree", "remove", "--force", str(tmp_path / "control"), check=False)

    cache.ensure()
    worktree = tmp_path / "wt" / "a"
    add_worktree(cache, worktree, "orch-work/p/a/1", head)
    assert (worktree / "src" / "app.py").read_text() == "print('v1')\n"
    remove_worktree(cache, worktree)
    assert list(markers.iterdir()) == []
    assert not (cache.path / "info" / "attributes").exists()
    assert (cache.path / "config").read_text() == CACHE_CONFIG


def test_fetch_gives_each_branch_or_none_and_drops_a_deleted_one(cache: RepositoryCache, tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    git(seed, "push", "-q", "origin", "main:feature")
    heads = cache.fetch("main", "feature", "absent")
    main = git(seed, "rev-parse", "main").strip()
    assert heads == {"main": main, "feature": main, "absent": None}
    assert cache.ref_commit("refs/remotes/origin/feature") == main
    git(seed, "push", "-q", "origin", ":feature")
    assert cache.fetch("feature") == {"feature": None}
    assert cache.ref_commit("refs/remotes/origin/feature") is None
    assert cache.remote_heads("main", "feature") == {"main": main, "feature": None}


def test_fetch_commit_finds_an_archived_commit_and_names_a_missing_one(cache: RepositoryCache, tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    archived = commit_files(seed, {"archived.txt": "kept\n"}, "archived work")
    git(seed, "push", "-q", "origin", f"{archived}:refs/orch/archive/p/t/1")
    git(seed, "reset", "-q", "--hard", "HEAD~1")
    assert not cache.has_commit(archived)
    cache.fetch_commit(archived)
    assert cache.has_commit(archived)
    with pytest.raises(GitFailed, match="commit 0123456789abcdef0123456789abcdef01234567 is not in repository"):
        cache.fetch_commit("0123456789abcdef0123456789abcdef01234567")


def _new_commit(cache: RepositoryCache, parent: str, text: str) -> str:
    tree = git(cache.path, "rev-parse", f"{parent}^{{tree}}").strip()
    return cache.commit_tree(tree, [parent], f"commit {text}\n", AUTHOR)


def test_push_is_a_compare_and_swap(cache: RepositoryCache, remote: Path) -> None:
    main = cache.fetch("main")["main"]
    assert main is not None
    first, second = _new_commit(cache, main, "one"), _new_commit(cache, main, "two")
    assert cache.push(main, "orch/p", None).pushed
    assert cache.push(main, "orch/p", None).pushed  # already there: a redone push (after a crash) is no failure
    refused = cache.push(first, "orch/p", None)  # must not exist yet: it does
    assert not refused.pushed and refused.remote_head == main and refused.reason

    outcomes = {}

    def push(commit: str) -> None:
        outcomes[commit] = cache.push(commit, "orch/p", main)

    threads = [threading.Thread(target=push, args=(commit,)) for commit in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [commit for commit, outcome in outcomes.items() if outcome.pushed]
    assert len(winners) == 1
    loser = outcomes[second if winners == [first] else first]
    assert loser.remote_head == winners[0] and loser.reason  # "stale info", or the remote's own ref lock
    assert git(remote, "rev-parse", "orch/p").strip() == winners[0]

    stale = cache.push(_new_commit(cache, winners[0], "three"), "orch/p", main)
    assert not stale.pushed and stale.remote_head == winners[0]


def test_an_attempts_work_is_kept_in_one_push_of_its_archive_ref_and_new_branch(
    cache: RepositoryCache, remote: Path
) -> None:
    main = cache.fetch("main")["main"]
    assert main is not None
    work, other = _new_commit(cache, main, "work"), _new_commit(cache, main, "other")
    assert cache.push_kept(work, "orch-work/p/t/1", "refs/orch/archive/p/t/1").pushed
    assert git(remote, "rev-parse", "orch-work/p/t/1", "refs/orch/archive/p/t/1").split() == [work, work]
    assert cache.push_kept(work, "orch-work/p/t/1", "refs/orch/archive/p/t/1").pushed  # redone: no failure
    refused = cache.push_kept(other, "orch-work/p/t/1", "refs/orch/archive/p/t/1")  # never moves a branch
    assert not refused.pushed and refused.remote_head == work
    assert git(remote, "rev-parse", "orch-work/p/t/1").strip() == work


def test_delete_branch_only_when_it_still_holds_the_expected_commit(cache: RepositoryCache, remote: Path) -> None:
    main = cache.fetch("main")["main"]
    assert main is not None
    moved = _new_commit(cache, main, "moved")
    assert cache.push(main, "orch-work/p/t/1", None).pushed
    assert cache.push(moved, "orch-work/p/t/1", main).pushed
    assert cache.delete_branch("orch-work/p/t/1", main) is False
    assert git(remote, "rev-parse", "orch-work/p/t/1").strip() == moved
    assert cache.delete_branch("orch-work/p/t/1", moved) is True
    assert cache.remote_heads("orch-work/p/t/1") == {"orch-work/p/t/1": None}


def test_a_users_checkout_as_remote_gets_refs_and_nothing_else(tmp_path: Path) -> None:
    checkout = make_checkout(tmp_path / "user")
    (checkout / "dirty.txt").write_text("the user's uncommitted work\n")
    (checkout / "src" / "app.py").write_text("print('edited, not committed')\n")
    before = fingerprint(checkout)
    cache = RepositoryCache(tmp_path / "home" / "git", str(checkout)).ensure()
    main = cache.fetch("main")["main"]
    assert main is not None
    ahead = _new_commit(cache, main, "ahead")
    refused = cache.push(ahead, "main", main)
    assert not refused.pushed and "checked out" in refused.reason and refused.remote_head == main
    assert cache.push(ahead, "orch/p", None).pushed
    cache.push_ref(ahead, "refs/orch/archive/p/t/1")
    assert git(checkout, "rev-parse", "orch/p", "refs/orch/archive/p/t/1").split() == [ahead, ahead]
    worktree = tmp_path / "wt"
    add_worktree(cache, worktree, "orch-work/p/t/1", ahead)
    assert str(worktree) not in git(checkout, "worktree", "list", "--porcelain")
    remove_worktree(cache, worktree)
    assert git(checkout, "rev-parse", "main").strip() == main
    assert fingerprint(checkout) == before


def test_cache_queries(cache: RepositoryCache, tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    base = git(seed, "rev-parse", "HEAD").strip()
    child = commit_files(seed, {"new file.txt": "x\n", "README.md": None, "src/app.py": "print('v2')\n"})
    git(seed, "push", "-q", "origin", "main")
    cache.fetch("main")
    assert cache.has_commit(child) and not cache.has_commit("f" * 40)
    assert cache.is_ancestor(base, child) and not cache.is_ancestor(child, base)
    assert sorted(cache.changed_paths(base, child)) == ["README.md", "new file.txt", "src/app.py"]
    with pytest.raises(GitFailed):
        cache.is_ancestor("f" * 40, child)


def test_an_unreachable_path_is_named(tmp_path: Path) -> None:
    cache = RepositoryCache(tmp_path / "git", "/x/y").ensure()
    with pytest.raises(GitFailed, match=r"^cannot reach repository /x/y: \S") as failed:
        cache.fetch("main")
    assert "\n" not in str(failed.value)


def test_a_password_never_shows_in_a_message(tmp_path: Path) -> None:
    password = "hunter2-s3cret"
    url = f"https://deploy:{password}@127.0.0.1:1/org/app.git"  # port 1: refused at once, no network needed
    cache = RepositoryCache(tmp_path / "git", url).ensure()
    assert password not in str(cache.path) and password not in repr(cache)
    for call in (lambda: cache.remote_heads("main"), lambda: cache.push("a" * 40, "main", None)):
        with pytest.raises(GitFailed) as failed:
            call()
        text = f"{failed.value} {failed.value.stderr} {failed.value.stdout}"
        assert password not in text and "https://deploy:***@127.0.0.1:1/org/app.git" in str(failed.value)


def test_a_refused_url_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    cache = RepositoryCache(tmp_path / "git", f"ext::sh -c touch% {marker}").ensure()
    with pytest.raises(GitFailed, match="unsupported repository URL"):
        cache.remote_heads("main")
    assert not marker.exists()


def test_a_file_url_and_a_symlinked_info_folder(tmp_path: Path, remote: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "attributes").write_text("not the cache's\n")
    cache = RepositoryCache(tmp_path / "git", f"file://{remote}").ensure()
    assert cache.fetch("main")["main"] == git(remote, "rev-parse", "main").strip()
    (cache.path / "info").symlink_to(elsewhere)
    cache.ensure()
    assert (elsewhere / "attributes").read_text() == "not the cache's\n"
    assert not (cache.path / "info").exists()


def test_the_lock_wait_is_bounded_and_names_the_lock(
    cache: RepositoryCache, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_module, "LOCK_TIMEOUT_S", 0.3)
    lock_path = cache.path.with_name(cache.path.name + ".lock")
    with lock_path.open("a") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(GitFailed, match=f"the cache lock {lock_path} is still held after"), cache.locked():
            pass
        fcntl.flock(held.fileno(), fcntl.LOCK_UN)
    with cache.locked():
        pass


class _AuthRecorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        header = self.headers.get("Authorization")
        given = base64.b64decode(header.removeprefix("Basic ")).decode() if header else ""
        if given.partition(":")[2]:
            self.seen.append(given)
            self.send_response(404)
        else:  # none, or curl's own try with the URL's user and no password: ask again
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="test"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_an_https_password_reaches_the_server_through_the_helper_not_argv(tmp_path: Path) -> None:
    """A plain-HTTP stand-in for the https server: git asks the credential helper after a 401."""
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AuthRecorder) as server:
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            url = f"http://deploy:s3cret%40pass@127.0.0.1:{server.server_address[1]}/org/app.git"
            cache = RepositoryCache(tmp_path / "git", url).ensure()
            with pytest.raises(GitFailed) as failed:
                cache.remote_heads("main")
        finally:
            server.shutdown()
            thread.join()
    assert _AuthRecorder.seen and set(_AuthRecorder.seen) == {"deploy:s3cret@pass"}
    assert "s3cret" not in f"{failed.value} {failed.value.stderr}"


def test_a_token_from_orch_git_credentials_reaches_the_server_not_argv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orch.settings import get_settings

    _AuthRecorder.seen.clear()
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AuthRecorder) as server:
        port = server.server_address[1]
        credentials = tmp_path / "git-credentials"
        credentials.write_text(
            f"# tokens for the workers\nhttp://other:no@127.0.0.1:{port}/elsewhere\n"
            f"http://ci-bot:tok%40en-9f2@127.0.0.1:{port}/org\n"
        )
        credentials.chmod(0o600)
        monkeypatch.setenv("ORCH_GIT_CREDENTIALS", str(credentials))
        get_settings.cache_clear()
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            cache = RepositoryCache(tmp_path / "git", f"http://127.0.0.1:{port}/org/app.git").ensure()
            with pytest.raises(GitFailed) as failed:
                cache.remote_heads("main")
        finally:
            server.shutdown()
            thread.join()
    assert set(_AuthRecorder.seen) == {"ci-bot:tok@en-9f2"}
    assert "tok" not in f"{failed.value} {failed.value.stderr}"


def test_a_credentials_file_others_can_read_is_refused_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orch.settings import get_settings

    credentials = tmp_path / "git-credentials"
    credentials.write_text("https://bot:token@example.com\n")
    credentials.chmod(0o644)
    monkeypatch.setenv("ORCH_GIT_CREDENTIALS", str(credentials))
    get_settings.cache_clear()
    with pytest.raises(GitFailed) as refused:
        RepositoryCache(tmp_path / "git", "https://example.com/org/app.git").ensure().remote_heads("main")
    assert str(refused.value) == f"ORCH_GIT_CREDENTIALS={credentials}: readable by others or not yours (chmod 600 it)"


def test_a_local_remotes_own_hooks_do_not_run_when_orch_reaches_it(tmp_path: Path, remote: Path) -> None:
    """A local repository's hooks (an agent could write some where it is also a plan's shared workdir) would run as
    the worker when git's other end runs in it: orch's receive-pack and upload-pack there obey none."""
    ran = tmp_path / "hook-ran"
    for hook in ("pre-receive", "update", "post-receive", "post-update", "reference-transaction"):
        script = remote / "hooks" / hook
        script.write_text(f"#!/bin/sh\necho {hook} >> {ran}\n")
        script.chmod(0o755)
    git(remote, "config", "core.hooksPath", str(remote / "hooks"))
    cache = RepositoryCache(tmp_path / "home" / "git", str(remote)).ensure()
    main = cache.fetch("main")["main"]
    assert main is not None
    assert cache.push(_new_commit(cache, main, "hooked?"), "orch/p", None).pushed
    assert cache.push_kept(main, "orch-work/p/t/1", "refs/orch/archive/p/t/1").pushed
    assert cache.remote_heads("orch/p")["orch/p"] is not None
    assert not ran.exists(), ran.read_text()
    subprocess.run(["git", "-C", str(remote), "update-ref", "refs/heads/plain", main], check=True)
    assert ran.exists()  # the hooks do run for anyone else: it is orch's push that obeys none


def test_a_credential_is_given_only_below_its_own_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from orch.settings import get_settings

    _AuthRecorder.seen.clear()
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AuthRecorder) as server:
        port = server.server_address[1]
        credentials = tmp_path / "git-credentials"
        credentials.write_text(f"http://bot:for-org-only@127.0.0.1:{port}/org\n")
        credentials.chmod(0o600)
        monkeypatch.setenv("ORCH_GIT_CREDENTIALS", str(credentials))
        get_settings.cache_clear()
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            cache = RepositoryCache(tmp_path / "git", f"http://127.0.0.1:{port}/organisation/app.git").ensure()
            with pytest.raises(GitFailed):
                cache.remote_heads("main")
        finally:
            server.shutdown()
            thread.join()
    assert _AuthRecorder.seen == []  # /org does not cover /organisation
