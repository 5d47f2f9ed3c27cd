"""Worktrees and the merge queue in the production shape: two `celery -A orch worker`s with an ORCH_HOME each (two
hosts, each with its own git cache and worktrees, sharing nothing but a bare repository as the remote), one
`celery -A orch beat`, Redis and PostgreSQL. A 22-task plan submitted with `orch submit` builds a small Python
package: fan-out, fan-in, gates (which turn one task's first try down), a task that fails once after leaving a
stray file, two prompted tasks editing one line (a conflict resolved by a task). A second plan makes two tasks
clash with `on_conflict: fail`.

What a host keeps once the plans are over: its cache (a bare clone with no worktree registered) and, under its
worktree root, nothing but the merger's emptied scratch folder (`.merges/`); the gates' logs are in its logs
folder, beside its attempts' (`ORCH_HOME/logs/<plan>/merge-<request>.gate<n>.log`)."""

from __future__ import annotations

import json
import shlex
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from orch.states import AttemptStatus, MergePhase, PlanStatus, TaskStatus
from orch.store import plans
from orch.store.db import read_session
from orch.store.models import AttemptRow, TaskRow
from tests.e2e.conftest import Processes, orch_env, run_orch
from tests.e2e.worktree_package import (
    SETTINGS,
    clash_plan,
    commits_by_task,
    git,
    is_ancestor,
    package_plan,
    seeded_origin,
    snapshot,
    user_checkout,
)
from tests.helpers import FAKE_CLAUDE, wait_for

CELERY = [sys.executable, "-m", "celery", "-A", "orch"]
QUEUES = "agent.general-purpose,agent.devops-engineer"
HOSTS = ("alpha", "beta")


def slow_fake_claude(path: Path) -> Path:
    """The fake `claude` after two seconds' pause: the two clashing prompted tasks both make their worktree (at the
    same base) before either's work can merge."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'#!/bin/sh\nsleep 2\nexec {shlex.quote(sys.executable)} {shlex.quote(str(FAKE_CLAUDE))} "$@"\n')
    path.chmod(0o755)
    return path


def submit(plan: dict[str, Any], folder: Path, env: dict[str, str]) -> str:
    plan_file = folder / f"{plan['name']}.yaml"
    plan_file.write_text(yaml.safe_dump(plan, sort_keys=False))
    submitted = run_orch(["submit", str(plan_file)], folder, env)
    assert submitted.returncode == 0, submitted.stderr
    return submitted.stdout.strip()


def cli_json(args: list[str], folder: Path, env: dict[str, str]) -> Any:
    done = run_orch([*args, "--json"], folder, env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@dataclass
class Ran:
    """A plan as the store holds it once it is over: its tasks, each task's attempts, its dependencies by key."""

    plan_id: str
    status: PlanStatus
    tasks: dict[str, TaskRow]
    attempts: dict[str, list[AttemptRow]]
    depends: list[tuple[str, str]]

    @classmethod
    def load(cls, plan_id: str) -> Ran:
        with read_session() as session:
            plan = plans.get_plan(session, plan_id)
            assert plan is not None, plan_id
            tasks = {t.key: t for t in plans.plan_tasks(session, plan_id)}
            attempts = {key: plans.task_attempts(session, t.pk) for key, t in tasks.items()}
            by_pk = {t.pk: t.key for t in tasks.values()}
            depends = [(by_pk[a], by_pk[b]) for a, b in plans.plan_dependencies(session, plan_id)]
        return cls(plan_id, plan.status, tasks, attempts, depends)

    @property
    def statuses(self) -> dict[str, TaskStatus]:
        return {key: t.status for key, t in self.tasks.items()}

    @property
    def all_attempts(self) -> list[AttemptRow]:
        return [a for rows in self.attempts.values() for a in rows]


def start_hosts_and_beat(tmp_path: Path, processes: Processes, common: dict[str, str]) -> dict[str, Path]:
    """Two workers, each with an ORCH_HOME of its own (a host), on the same queues; one beat. Their ORCH_HOMEs."""
    logs = tmp_path / "logs"
    logs.mkdir()
    homes = {host: tmp_path / host / ".orch" for host in HOSTS}
    for host in HOSTS:
        host_env = orch_env(tmp_path, **common, ORCH_HOME=str(homes[host]))
        worker = [*CELERY, "worker", "-Q", QUEUES, "-n", f"{host}@%h", "-c", "3"]
        processes.start(worker, tmp_path, host_env, logs / f"{host}.log")
    processes.start([*CELERY, "beat"], tmp_path, orch_env(tmp_path, **common), logs / "beat.log")
    return homes


def logs_tail(tmp_path: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted((tmp_path / "logs").iterdir()))


def wait_until_over(plan_ids: list[str], tmp_path: Path) -> None:
    def all_over() -> bool:
        with read_session() as session:
            found = [plans.get_plan(session, plan_id) for plan_id in plan_ids]
        return all(p is not None and p.status is not PlanStatus.RUNNING for p in found)

    try:
        wait_for(all_over, 150, f"plans {', '.join(plan_ids)} to finish", interval=0.25)
    except AssertionError:
        pytest.fail(f"the plans did not finish; process logs:\n{logs_tail(tmp_path)}")


def check_integration_branch(origin: Path, ran: Ran) -> dict[str, str]:
    """The integration branch holds every task's commit exactly once, that of its succeeded attempt, each a
    descendant of its dependencies' commits. Each task's commit."""
    landed = commits_by_task(origin, f"orch/{ran.plan_id}")
    assert set(landed) == set(ran.tasks), set(ran.tasks) ^ set(landed)
    commit = {}
    for key, commits in landed.items():
        (succeeded,) = [a for a in ran.attempts[key] if a.status is AttemptStatus.SUCCEEDED]
        assert commits == [succeeded.head_commit], (key, commits, succeeded.head_commit)
        commit[key] = commits[0]
    for task, dependency in ran.depends:
        assert is_ancestor(origin, commit[dependency], commit[task]), f"{task} is not built on {dependency}"
    return commit


def check_the_stray_file_stayed_on_its_branch(origin: Path, ran: Ran) -> None:
    """The flaky task's first attempt failed after writing stray.txt: kept on its branch, never on its retry's
    nor anywhere in the integration branch's history."""
    plan_id = ran.plan_id
    flaky = [(a.number, a.status, a.branch) for a in ran.attempts["flaky"]]
    assert flaky == [
        (1, AttemptStatus.FAILED, f"orch-work/{plan_id}/flaky/1"),
        (2, AttemptStatus.SUCCEEDED, f"orch-work/{plan_id}/flaky/2"),
    ]
    assert "stray.txt" in git(origin, "ls-tree", "--name-only", f"orch-work/{plan_id}/flaky/1").split()
    assert "stray.txt" not in git(origin, "ls-tree", "--name-only", f"orch-work/{plan_id}/flaky/2").split()
    assert git(origin, "log", "--format=%H", f"orch/{plan_id}", "--", "stray.txt") == ""


def check_no_work_was_lost(origin: Path, runs: list[Ran]) -> None:
    """No branch with unmerged work was deleted: every attempt's branch and archive ref are on the remote at the
    attempt's head; a succeeded attempt's is merged; the remote holds no other orch-work branch."""
    refs = git(origin, "for-each-ref", "--format=%(refname) %(objectname)").splitlines()
    on_remote = dict(line.split() for line in refs)
    for ran in runs:
        keys = {t.pk: key for key, t in ran.tasks.items()}
        for attempt in ran.all_attempts:
            archive = f"refs/orch/archive/{ran.plan_id}/{keys[attempt.task_pk]}/{attempt.number}"
            assert attempt.branch is not None, archive
            assert on_remote.get(f"refs/heads/{attempt.branch}") == attempt.head_commit, attempt.branch
            assert on_remote.get(archive) == attempt.head_commit, archive
            if attempt.status is AttemptStatus.SUCCEEDED:
                assert is_ancestor(origin, attempt.branch, f"orch/{ran.plan_id}"), attempt.branch
    branches = {f"refs/heads/{a.branch}" for ran in runs for a in ran.all_attempts}
    assert {name for name in on_remote if name.startswith("refs/heads/orch-work/")} == branches


def check_host_is_clean(host: str, home: Path) -> None:
    """The host's cache lists no worktree but its own bare entry; no attempt's folder, no per-task or per-plan
    folder and no merger's scratch worktree is left."""
    caches = sorted((home / "git").glob("*.git"))
    assert len(caches) == 1, (host, caches)
    listed = git(caches[0], "worktree", "list").splitlines()
    assert len(listed) == 1 and listed[0].endswith("(bare)"), (host, listed)
    root = home / "worktrees"
    leftovers = [p for p in root.rglob("*") if p != root / ".merges"]
    assert leftovers == [], (host, leftovers)


def test_two_hosts_build_a_package_through_worktrees_and_the_merge_queue(
    redis_url: str, postgres_url: str, tmp_path: Path, processes: Processes
) -> None:
    origin = seeded_origin(tmp_path)
    checkout = user_checkout(tmp_path, origin)
    before = snapshot(checkout)
    common = {
        "ORCH_DATABASE_URL": postgres_url,
        "ORCH_BROKER_URL": redis_url,
        "ORCH_RETRY_BACKOFF_BASE": "0.1",
        "ORCH_CLAUDE_BIN": str(slow_fake_claude(tmp_path / "bin" / "claude")),
    }
    homes = start_hosts_and_beat(tmp_path, processes, common)
    env = orch_env(tmp_path, **common)
    folder = tmp_path / "plans"
    folder.mkdir()
    package = package_plan(origin)
    plan_id = submit(package, folder, env)
    clash_id = submit(clash_plan(origin), folder, env)
    wait_until_over([plan_id, clash_id], tmp_path)
    for process in processes.started:  # their shutdowns overlap the checks below, which need the store only
        process.send_signal(signal.SIGTERM)

    ran, clash = Ran.load(plan_id), Ran.load(clash_id)
    assert ran.status is PlanStatus.SUCCEEDED, f"{ran.statuses}\n{logs_tail(tmp_path)}"
    assert set(ran.statuses.values()) == {TaskStatus.SUCCEEDED}
    resolvers = [key for key in ran.tasks if ".resolve-" in key]
    assert len(resolvers) == 1, ran.statuses  # the two prompted tasks' conflict, resolved by a task
    assert len(ran.tasks) == len(package["tasks"]) + 1 >= 23
    assert {a.worker.split("@")[0] for a in [*ran.all_attempts, *clash.all_attempts]} == set(HOSTS)

    commit = check_integration_branch(origin, ran)
    branch = f"orch/{plan_id}"
    settings = git(origin, "show", f"{branch}:pkg/settings.py").splitlines()  # both sides kept, no marker
    assert sorted(settings) == sorted({*SETTINGS.format("left").splitlines(), 'COLOR = "right"'}), settings
    assert len(git(origin, "rev-list", "--parents", "-1", commit[resolvers[0]]).split()) == 3
    assert git(origin, "show", f"{branch}:RELEASE") == "12"  # the release check imported the whole package
    check_the_stray_file_stayed_on_its_branch(origin, ran)
    checked = [(a.status, a.failure_class) for a in ran.attempts["checked"]]  # the gates ran, and turned one down
    assert checked == [(AttemptStatus.FAILED, "gate_failed"), (AttemptStatus.SUCCEEDED, None)], checked

    # on_conflict: fail: one of the two clashing tasks merged, the other failed naming the path.
    assert sorted(clash.statuses.values()) == [TaskStatus.FAILED, TaskStatus.SUCCEEDED], clash.statuses
    loser = next(key for key, status in clash.statuses.items() if status is TaskStatus.FAILED)
    (lost,) = clash.attempts[loser]
    assert lost.failure_class == "merge_conflict" and "pkg/settings.py" in (lost.error or ""), lost.error
    assert not is_ancestor(origin, lost.branch or "", f"orch/{clash_id}")

    check_no_work_was_lost(origin, [ran, clash])
    assert snapshot(checkout) == before  # the user's checkout, byte for byte
    assert len(git(checkout, "worktree", "list").splitlines()) == 1
    for host, home in homes.items():
        check_host_is_clean(host, home)

    queue = cli_json(["mq", plan_id], folder, env)
    assert queue["integrations"][0]["head"] == git(origin, "rev-parse", branch)
    phases: dict[str, list[str]] = {}
    for request in queue["requests"]:
        phases.setdefault(request["task"], []).append(request["phase"])
    assert phases == {key: [MergePhase.MERGED] for key in ran.tasks} | {"checked": ["gate_failed", "merged"]}
    resolved = [(r["task"], r["conflicts"]) for r in queue["requests"] if r["resolved_by"] is not None]
    assert resolved == [(resolvers[0].split(".resolve-")[0], ["pkg/settings.py"])], queue["requests"]
    status = cli_json(["status", plan_id], folder, env)
    for row in status["tasks"]:
        info = row["git"]
        assert info["merge_phase"] == "merged" and info["head_commit"] == commit[row["id"]], row
        assert info["branch"].startswith(f"orch-work/{plan_id}/{row['id']}/") and info["merged_commit"], row
    clash_queue = cli_json(["mq", clash_id], folder, env)
    conflicted = [r for r in clash_queue["requests"] if r["phase"] == MergePhase.CONFLICTED]
    assert [(r["task"], r["conflicts"]) for r in conflicted] == [(loser, ["pkg/settings.py"])], clash_queue
