"""Part 4: what a task in its own git worktree adds, in this process, no Celery and no store — the calls a worker
and a merger make, on a repository of `worktree_files` files (a bare remote on the file transport, and this
host's cache as orch makes it, `RepositoryCache(root, url).ensure()`), for `worktree_tasks` tasks:

- prepare: `workers.worktree.prepare` — the cache's config put back, the integration branch fetched
  (`ls-remote`, `fetch`), `worktree add` of its head on the attempt's branch, and (a root worker) the worktree
  handed to the agent's user;
- commit: `workers.worktree.conclude` → `orch.dispatch.worktrees.keep_work` — the agent's edit committed through a
  private git dir, pushed to the attempt's archive ref and branch;
- scope: the changed paths the runner reads for `scope:` (`diff --name-only` base..head);
- remove: `workers.worktree.discard`;
- merge: `orch.dispatch.merge_queue.merge_request`, without gates — the integration branch fetched, the commit
  fetched, and a compare-and-swap push. Tasks run in pairs made from the same head, like two parallel siblings:
  the first merges as a fast-forward, the second as a real 3-way merge (`merge-tree --write-tree`, `commit-tree`).

Every git process is timed by its subcommand (what bounds the step), and one hardened git process that does
nothing (`rev-parse --git-dir` through `run_git`) is timed beside a bare `git rev-parse`: the floor of each of the
git processes a task needs. The agent's own edit is not timed; the store's rows (recording the worktree, the merge
request) are the plain task's cost, measured by the other parts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.infra import AGENT, BenchError, summary
from bench.sizes import Size
from orch.records import Claim, ClaimedTask, Integration, MergeRequest

if TYPE_CHECKING:
    from workers.worktree import AttemptWorktree

PLAN = "wt-bench"
REPOSITORY = "repo"
STEPS = ("prepare", "commit", "scope", "remove", "merge")
FILES_PER_FOLDER = 50


@dataclass
class GitCalls:
    """The git processes run in this process while it is installed: (subcommand, ms) each."""

    calls: list[tuple[str, float]] = field(default_factory=list)


@contextmanager
def git_timed() -> Iterator[GitCalls]:
    """Time every git process this process runs (orch runs git through `command.run_bounded` only)."""
    from orch.services.git import command

    log = GitCalls()
    original = command.run_bounded

    def timed(argv: list[str], *args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return original(argv, *args, **kwargs)
        finally:
            log.calls.append((git_subcommand([str(a) for a in argv]), 1000 * (time.perf_counter() - began)))

    command.run_bounded = timed
    try:
        yield log
    finally:
        command.run_bounded = original


def git_subcommand(argv: Sequence[str]) -> str:
    """`worktree add`, `push`, `fetch`...: the subcommand after git's own options and `-c` pairs."""
    rest = list(argv[1:])
    while rest and rest[0].startswith("-"):
        rest = rest[2:] if rest[0] == "-c" else rest[1:]
    if not rest:
        return "?"
    if rest[0] == "worktree" and len(rest) > 1:
        return f"worktree {rest[1]}"
    return rest[0]


# --- the repository ---------------------------------------------------------------------------------------


def _plain_git(args: Sequence[str], cwd: Path) -> str:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(cwd),
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@localhost",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@localhost",
    }
    done = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise BenchError(f"git {' '.join(args)} in {cwd}: {done.stderr.strip()[:300]}")
    return done.stdout


def module_text(number: int) -> str:
    """A Python module of about 1.5 kB, different for each number."""
    body = [f'"""Module {number} of the benchmark\'s repository."""', "", "from __future__ import annotations", ""]
    for function in range(6):
        body += [
            "",
            f"def function_{number}_{function}(value: int) -> int:",
            f'    """Return value times {function + 1} plus {number}."""',
            f"    result = value * {function + 1}",
            f"    return result + {number}",
            "",
        ]
    return "\n".join(body) + "\n"


def module_path(number: int) -> str:
    return f"src/pkg{number // FILES_PER_FOLDER:03d}/mod{number % FILES_PER_FOLDER:03d}.py"


def build_remote(folder: Path, files: int) -> tuple[str, str]:
    """A bare repository (the remote) whose `main` holds `files` files; its URL (a path: the file transport) and
    `main`'s commit."""
    source, remote = folder / "source", folder / "remote.git"
    source.mkdir(parents=True)
    _plain_git(["init", "--quiet", "--bare", str(remote)], folder)
    _plain_git(["init", "--quiet", "-b", "main"], source)
    for number in range(files - 1):
        path = source / module_path(number)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(module_text(number))
    (source / "README.md").write_text(f"A repository of {files} files for orch's benchmark.\n")
    _plain_git(["add", "--all"], source)
    _plain_git(["commit", "--quiet", "-m", f"{files} files"], source)
    _plain_git(["push", "--quiet", str(remote), "main"], source)
    commit = _plain_git(["rev-parse", "main"], source).strip()
    shutil.rmtree(source)
    return str(remote), commit


# --- one task ---------------------------------------------------------------------------------------------


@dataclass
class TaskTimes:
    """One task's steps: ms each, and the git processes each ran."""

    kind: str = ""  # its merge: "fast-forward" or "3-way"
    ms: dict[str, float] = field(default_factory=dict)
    git: dict[str, list[tuple[str, float]]] = field(default_factory=dict)

    @property
    def total_ms(self) -> float:
        return sum(self.ms.values())


class Bench:
    """The integration branch, the settings and the clock of one run of this part."""

    def __init__(self, folder: Path, url: str, base_commit: str, git: GitCalls) -> None:
        from orch.settings import Settings

        self.settings = Settings(home=folder / "orch-home", worktree_root=worktree_root(folder))
        self.integration = Integration(
            pk=1,
            plan_id=PLAN,
            repository=REPOSITORY,
            url=url,
            base="main",
            base_commit=base_commit,
            branch=f"orch/{PLAN}",
            head=base_commit,
            land="branch",
            gates=(),
            gate_timeout=60.0,
            on_conflict="fail",
            relock=(),
        )
        self.git = git
        self.numbers = 0
        self.plain: dict[str, list[float]] = {"add": [], "remove": []}

    def step(self, times: TaskTimes, name: str, run: Callable[[], Any]) -> Any:
        mark = len(self.git.calls)
        began = time.perf_counter()
        out = run()
        times.ms[name] = 1000 * (time.perf_counter() - began)
        times.git[name] = self.git.calls[mark:]
        return out

    def pair(self, files: int) -> list[TaskTimes]:
        """Two tasks made from the integration branch's head, each editing its own files; the first merges as a
        fast-forward, the second as a 3-way merge."""
        from workers import worktree

        started = [self.start() for _ in range(2)]
        done = []
        for number, claim, task, times, tree in started:
            agent_edit(tree.path, number, files)
            now = datetime.now(UTC)
            head = self.step(times, "commit", partial(worktree.conclude, tree, task, claim, self.settings, True, now))
            if head == tree.base_commit:
                raise BenchError(f"task {task.key}: its edit was not committed")
            self.step(times, "scope", partial(tree.cache.changed_paths, tree.base_commit, head))
            self.step(times, "remove", partial(worktree.discard, tree))
            done.append((number, task.key, times, tree.base_commit, head))
        for kind, (number, key, times, base, head) in zip(("fast-forward", "3-way"), done, strict=True):
            times.kind = kind
            merged = self.step(times, "merge", partial(self.merge, number, key, base, head))
            if (merged == head) != (kind == "fast-forward"):
                raise BenchError(f"task {key}: expected a {kind} merge, got {merged} for head {head}")
        return [entry[2] for entry in done]

    def start(self) -> tuple[int, Claim, ClaimedTask, TaskTimes, AttemptWorktree]:
        """A task claimed and its worktree prepared (timed), then a bare checkout of the same commit beside it."""
        from workers import worktree

        self.numbers += 1
        number = self.numbers
        key = f"t{number}"
        claim = Claim(number, PLAN, key, 1, f"lease-{number}", 0, AGENT)
        task = ClaimedTask(
            key, f"edit module {number}", "", "", None, [], 60.0, AGENT, "noop", None, "off", None, "",
            repository=REPOSITORY,
        )  # fmt: skip
        times = TaskTimes()
        tree = self.step(times, "prepare", partial(worktree.prepare, claim, task, self.integration, self.settings))
        self.plain_checkout(tree.cache.path, tree.base_commit)
        return number, claim, task, times, tree

    def plain_checkout(self, cache: Path, commit: str) -> None:
        """The filesystem's share, at this moment: a bare `git worktree add` of the same commit beside orch's (no
        orch code, no hardening), and its removal."""
        folder = self.settings.resolved_worktree_root / ".plain" / str(self.numbers)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_DIR": str(cache), "HOME": str(folder.parent)}
        mark = len(self.git.calls)
        for name, argv in (
            ("add", ["git", "worktree", "add", "--quiet", "--detach", str(folder), commit]),
            ("remove", ["git", "worktree", "remove", "--force", str(folder)]),
        ):
            began = time.perf_counter()
            subprocess.run(argv, cwd=cache, env=env, capture_output=True, check=True)
            self.plain[name].append(1000 * (time.perf_counter() - began))
        del self.git.calls[mark:]  # not orch's

    def merge(self, number: int, key: str, base: str, head: str) -> str:
        from orch.dispatch.merge_queue import Merged, merge_request

        request = MergeRequest(number, number, key, 1, "merging", base, head, datetime.now(UTC))
        result = merge_request(self.integration, request, self.settings, no_gates, lambda _s, _r: None)  # no store
        if not isinstance(result, Merged):
            raise BenchError(f"task {key}: its merge ended {result}")
        return result.commit


def worktree_root(folder: Path) -> Path:
    """Where the worktrees go: in the run's folder, or (an experiment: `BENCH_WORKTREE_ROOT=/dev/shm`) a fresh
    folder under BENCH_WORKTREE_ROOT."""
    under = os.environ.get("BENCH_WORKTREE_ROOT")
    if not under:
        return folder / "worktrees"
    return Path(tempfile.mkdtemp(prefix="orch-bench-worktrees-", dir=under))


def no_gates(command: str, folder: Path, timeout: float, log: Path) -> tuple[bool, str]:
    raise BenchError(f"no gate should run here (asked for {command!r} in {folder})")


def agent_edit(worktree: Path, number: int, files: int) -> None:
    """What an agent leaves: one module changed and one new file (different ones for every task)."""
    changed = worktree / module_path((number * 7) % (files - 1))
    with changed.open("a") as file:
        file.write(f"\n\nCHANGED_BY_TASK_{number} = True\n")
    new = worktree / "src" / "added" / f"task{number}.py"
    new.parent.mkdir(parents=True, exist_ok=True)
    new.write_text(f'"""Added by task {number}."""\n\nVALUE = {number}\n')


# --- the floor: one git process ---------------------------------------------------------------------------


def git_floor(cache_path: Path, samples: int) -> dict[str, Any]:
    """One git process doing nothing (`rev-parse --git-dir` on the cache), three ways: through `run_git` (orch's
    hardened call: ~70 `-c` overrides, its own environment, an empty HOME made for it, a timeout); the same argv
    and environment by `subprocess.run` without a timeout (Python 3.11 waits for a child with a timeout by
    polling, sleeping 1 ms, 2 ms...); and a bare `git rev-parse`."""
    from orch.services.git.command import git_argv, git_environment, run_git

    hardened: list[float] = []
    untimed: list[float] = []
    bare: list[float] = []
    plain_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_DIR": str(cache_path)}
    argv = git_argv(["rev-parse", "--git-dir"])
    full_env = {**git_environment(cache_path.parent), "GIT_DIR": str(cache_path)}
    for _ in range(samples):
        for out, run in (
            (hardened, lambda: run_git(["rev-parse", "--git-dir"], git_dir=cache_path, cwd=cache_path)),
            (untimed, lambda: subprocess.run(argv, cwd=cache_path, env=full_env, capture_output=True, check=True)),
            (bare, lambda: subprocess.run(
                ["git", "rev-parse", "--git-dir"], cwd=cache_path, env=plain_env, capture_output=True, check=True
            )),
        ):  # fmt: skip
            began = time.perf_counter()
            run()
            out.append(1000 * (time.perf_counter() - began))
    return {"run_git_ms": summary(hardened), "no_timeout_ms": summary(untimed), "bare_ms": summary(bare)}


# --- the part ---------------------------------------------------------------------------------------------


def run_worktree(
    size: Size, folder: Path, profile: Callable[[str, Callable[[], Any]], str] | None = None
) -> dict[str, Any]:
    from orch.dispatch.merge_queue import integration_head
    from orch.services.git.cache import RepositoryCache

    folder.mkdir(parents=True, exist_ok=True)
    files, pairs = size.worktree_files, max(1, size.worktree_tasks // 2)
    began = time.perf_counter()
    url, base_commit = build_remote(folder / "repository", files)
    result: dict[str, Any] = {"files": files, "tasks": 2 * pairs, "build_s": time.perf_counter() - began}
    with git_timed() as git:
        bench = Bench(folder, url, base_commit, git)
        began = time.perf_counter()
        cache = RepositoryCache(bench.settings.git_cache_dir, url).ensure()
        integration_head(cache, bench.integration)  # the first worker: fills the cache, makes orch/<plan>
        result["cold_cache_ms"] = 1000 * (time.perf_counter() - began)
        if pairs > 1:
            bench.pair(files)  # untimed: the sandbox probe, the first imports, a cold page cache
        tasks = [times for _ in range(pairs) for times in bench.pair(files)]
        if profile is not None:
            result["profile"] = profile("worktree", lambda: bench.pair(files))
    result.update(aggregate(tasks))
    result["plain_worktree_add_ms"] = summary(bench.plain["add"])
    result["plain_worktree_remove_ms"] = summary(bench.plain["remove"])
    result["git_floor"] = git_floor(cache.path, max(20, size.worktree_tasks))
    result["worktree_root"] = str(bench.settings.resolved_worktree_root)
    if os.environ.get("BENCH_WORKTREE_ROOT"):
        shutil.rmtree(bench.settings.resolved_worktree_root, ignore_errors=True)
    return result


def aggregate(tasks: list[TaskTimes]) -> dict[str, Any]:
    """Per step and per task: the time (p50, p90...), the git processes and which subcommands took the time."""
    steps: dict[str, Any] = {}
    for step in STEPS:
        calls = [call for task in tasks for call in task.git.get(step, [])]
        steps[step] = {
            "ms": summary([task.ms[step] for task in tasks]),
            "git_processes_per_task": len(calls) / len(tasks),
            "git_ms_per_task": sum(ms for _, ms in calls) / len(tasks),
            "other_ms_per_task": (sum(task.ms[step] for task in tasks) - sum(ms for _, ms in calls)) / len(tasks),
            "by_subcommand": by_subcommand(calls, len(tasks)),
        }
    for kind in ("fast-forward", "3-way"):
        steps[f"merge {kind}"] = {"ms": summary([t.ms["merge"] for t in tasks if t.kind == kind])}
    calls = [call for task in tasks for step_calls in task.git.values() for call in step_calls]
    totals = [task.total_ms for task in tasks]
    return {
        "steps": steps,
        "per_task_ms": summary(totals),
        "per_task_fast_forward_ms": summary([t.total_ms for t in tasks if t.kind == "fast-forward"]),
        "per_task_3way_ms": summary([t.total_ms for t in tasks if t.kind == "3-way"]),
        "git_processes_per_task": len(calls) / len(tasks),
        "git_ms_per_task": sum(ms for _, ms in calls) / len(tasks),
        "python_ms_per_task": (sum(totals) - sum(ms for _, ms in calls)) / len(tasks),
        "by_subcommand": by_subcommand(calls, len(tasks)),
    }


def by_subcommand(calls: list[tuple[str, float]], tasks: int) -> list[dict[str, Any]]:
    """Git's subcommands by the time they took, per task, the largest first."""
    grouped: dict[str, list[float]] = defaultdict(list)
    for name, ms in calls:
        grouped[name].append(ms)
    ranked = sorted(grouped.items(), key=lambda item: -sum(item[1]))
    return [
        {
            "subcommand": name,
            "per_task": len(ms) / tasks,
            "ms_per_task": sum(ms) / tasks,
            "ms_p50": summary(ms)["p50"],
        }
        for name, ms in ranked
    ]
