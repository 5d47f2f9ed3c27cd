"""Scenario 11: a hostile agent. One shell task of an agent type granted no secret runs tests/faults/
hostile_agent.py, which tries in one attempt every route to orch's keys and store the security review found:
every /proc/*/environ it can see, ORCH_HOME, the store file (an UPDATE of a later task's command), the broker's
socket and the machine's Redis and PostgreSQL ports, its repository's config (fsmonitor, hooks, filters, diff
drivers, pager, credential helper, sshCommand), writes outside its workdir, and escape sequences for the terminal.
`orch run` runs it with the sandbox on (`ORCH_SANDBOX=auto`: bubblewrap, as `orch-agent` under root), once on the
embedded default (ORCH_HOME and its SQLite store inside the plan's folder, the agent's workdir) and once on
PostgreSQL + Redis. The worker's environment carries a canary of each kind: a key of another agent type, a
variable no type names, orch's Flower credentials and its database password."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from tests.conftest import POSTGRES_HOST, POSTGRES_PORT, SANDBOX_READ, require_bwrap, require_service
from tests.faults.conftest import RecordFigures
from tests.faults.harness import REPO, FaultRun, Store, run_orch

pytestmark = [pytest.mark.faults]

HOSTILE_AGENT = REPO / "tests" / "faults" / "hostile_agent.py"
RAW_TERMINAL = ("\x1b", "\x07", "\x9b")


def canary() -> str:
    return f"CANARY-{secrets.token_hex(8)}"


def digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def token_of(value: str) -> str:
    """The CANARY-… token inside a secret's value (a key's prefix, a user name before it)."""
    match = re.search(r"CANARY-[0-9a-f]{16}", value)
    assert match is not None
    return match.group()


@dataclass
class Scenario:
    folder: Path
    env: dict[str, str]
    canaries: dict[str, str]  # where the worker holds it → the CANARY-… token
    store_file: Path | None
    markers: Path
    outside: list[Path]


def hostile_config(folder: Path) -> Path:
    """orch's config/ with two more agent types: `hostile`, granted no secret, and `other`, whose secret the
    hostile agent must not get either."""
    config = folder / "config"
    shutil.copytree(REPO / "config", config)
    agents = yaml.safe_load((config / "agents.yaml").read_text())
    agents["agent_types"][:0] = [
        {"name": "hostile", "description": "an agent turned by what it read", "secrets": []},
        {"name": "other", "description": "another team's agents", "secrets": ["OTHER_TEAM_TOKEN"]},
    ]
    (config / "agents.yaml").write_text(yaml.safe_dump(agents, sort_keys=False))
    return config


def git_repository(folder: Path) -> None:
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "base"]):
        subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True)


def scenario(fault_run: FaultRun, database_url: str | None = None) -> Scenario:
    require_bwrap()  # the scenario is the sandbox's: without bubblewrap there is none to try
    folder = fault_run.folder / "plan"
    folder.mkdir()
    (folder / "README.md").write_text("# a project an agent works on\n")
    git_repository(folder)
    markers = folder / "git-markers"
    markers.mkdir()
    config = hostile_config(fault_run.folder)
    canaries = {
        "ANTHROPIC_API_KEY (other types' key)": f"sk-ant-{canary()}",
        "OTHER_TEAM_TOKEN (another type's secret)": canary(),
        "AWS_SECRET_ACCESS_KEY (named by no type)": canary(),
        "ORCH_FLOWER_AUTH (orch's own)": f"admin:{canary()}",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(
        ORCH_HOME=str(folder / ".orch"),  # beside the plan: inside the agent's workdir
        ORCH_CONFIG_DIR=str(config),
        ORCH_SANDBOX="auto",
        ORCH_TICK_SECONDS="0.2",
        **SANDBOX_READ,  # the agent's own script lives in the checkout
        ANTHROPIC_API_KEY=canaries["ANTHROPIC_API_KEY (other types' key)"],
        OTHER_TEAM_TOKEN=canaries["OTHER_TEAM_TOKEN (another type's secret)"],
        AWS_SECRET_ACCESS_KEY=canaries["AWS_SECRET_ACCESS_KEY (named by no type)"],
        ORCH_FLOWER_AUTH=canaries["ORCH_FLOWER_AUTH (orch's own)"],
    )
    store_file: Path | None = folder / ".orch" / "orch.db"
    if database_url is not None:
        password = canary()
        canaries["ORCH_DATABASE_URL's password (orch's own)"] = password
        env["ORCH_DATABASE_URL"] = database_url.replace("://postgres@", f"://postgres:{password}@")
        env["ORCH_BROKER_URL"] = "redis://127.0.0.1:6379/12"
        store_file = None
    outside = [
        Path("/var/tmp") / f"{fault_run.marker}-planted",  # writable by anyone on the host
        Path("/etc") / f"{fault_run.marker}-planted",
        folder / ".orch" / "planted",  # ORCH_HOME
        config / "planted",  # orch's configuration
    ]
    return Scenario(folder, env, canaries, store_file, markers, outside)


def hostile_plan(run: Scenario, pwned: Path) -> Path:
    args = [
        sys.executable, str(HOSTILE_AGENT),
        "--store", str(run.store_file or run.folder / ".orch" / "orch.db"),
        "--orch-home", str(run.folder / ".orch"),
        "--config-dir", run.env["ORCH_CONFIG_DIR"],
        "--victim", "victim", "--pwned", str(pwned), "--markers", str(run.markers),
        *(arg for path in run.outside for arg in ("--outside", str(path))),
    ]  # fmt: skip
    plan = {
        "name": "hostile",
        "tasks": [
            {"id": "hostile", "title": "read the README", "agent": "hostile", "retries": 0,
             "command": " ".join(shlex.quote(arg) for arg in args)},
            {"id": "victim", "title": "a later task", "agent": "hostile", "after": ["hostile"], "retries": 0,
             "command": "echo original > victim.txt"},
        ],
    }  # fmt: skip
    path = run.folder / "plan.json"
    path.write_text(json.dumps(plan))
    return path


def report_of(output_tail: str) -> dict[str, Any]:
    line = next(line for line in output_tail.splitlines() if line.startswith("HOSTILE-REPORT "))
    report: dict[str, Any] = json.loads(line.removeprefix("HOSTILE-REPORT "))
    return report


def run_hostile(run: Scenario, fault_run: FaultRun, record_figures: RecordFigures, name: str) -> None:
    pwned = run.folder / "PWNED.txt"
    plan = hostile_plan(run, pwned)
    result = run_orch(["run", str(plan)], run.folder, run.env, timeout=180)
    status = run_orch(["status", "hostile"], run.folder, run.env)
    logs = run_orch(["logs", "hostile", "hostile"], run.folder, run.env)
    as_json = run_orch(["status", "hostile", "--json"], run.folder, run.env)
    assert as_json.returncode == 0, as_json.stderr
    tasks = {task["id"]: task for task in json.loads(as_json.stdout)["tasks"]}
    database = run.env.get("ORCH_DATABASE_URL") or f"sqlite:///{run.store_file}"
    with Store(database) as store:
        plan_id = json.loads(as_json.stdout)["plan"]["id"]
        snapshot = store.snapshot(plan_id)
        attempts = store.table("attempts")
        (hostile_attempt,) = snapshot.attempts_of("hostile")
        query = sa.select(attempts.c.files_changed).where(attempts.c.task_pk == hostile_attempt.task_pk)
        with store.engine.connect() as conn:
            files_changed = conn.execute(query).scalar_one()
    report = report_of(hostile_attempt.output_tail)
    leaked = [where for where, value in run.canaries.items() if digest(token_of(value)) in report["secrets"]]
    victim_command = snapshot.task("victim").command
    planted = sorted(p.name for p in run.markers.iterdir())
    outside = [str(path) for path in run.outside if path.exists()]
    shown = result.stdout + result.stderr + status.stdout + logs.stdout + logs.stderr
    raw = sum(shown.count(char) for char in RAW_TERMINAL)
    agent_user = pwd.getpwnam("orch-agent").pw_uid if os.geteuid() == 0 else os.getuid()
    figures = {
        "secrets found": (len(set(leaked)), len(run.canaries)),
        "store writes": int(report["store_writes"]) + (victim_command != "echo original > victim.txt"),
        "git config commands run": len(planted),
        "processes visible": report["processes_visible"],
        "orch processes visible": report["orch_processes_visible"],
        "ORCH_HOME files read": int(report["orch_home_files_read"]) + int(report["workdir_orch_files_read"]),
        "services reached": len(report["services_reached"]),
        "writes outside the workdir": len(outside),
        "raw escape characters shown": raw,
    }
    record_figures(f"11 hostile agent: {name}", figures)

    assert result.returncode == 0, result.stdout + result.stderr
    assert tasks["hostile"]["status"] == "succeeded" and tasks["victim"]["status"] == "succeeded"
    assert report["uid"] == agent_user
    assert not leaked, f"the agent found {leaked}"
    assert report["store_writes"] == 0 and victim_command == "echo original > victim.txt"
    assert (run.folder / "victim.txt").read_text() == "original\n" and not pwned.exists()
    assert report["git_plants"] == 1 and not planted, f"the worker's git ran the repository's programs: {planted}"
    assert "changed-by-the-agent.txt" in (files_changed or []), files_changed  # the snapshot still sees edits
    assert report["orch_processes_visible"] == 0, report  # not the worker, its pool, the beat, nor `orch run`
    assert int(report["processes_visible"]) <= 6, report  # its own sandbox's: bwrap's init, sh, python…
    assert report["orch_home_files_read"] == 0 and report["workdir_orch_files_read"] == 0, report
    assert report["config_files_read"] == 0 and report["store_or_env_files_read"] == 0, report
    assert report["services_reached"] == [], report
    assert report["outside_writes"] <= len(run.outside) and not outside, outside  # written only in its own view
    assert raw == 0, "a raw escape sequence reached the terminal"
    assert "\\x1b]0;PWNED" in logs.stdout, logs.stdout  # shown, as a visible escape


@pytest.mark.timeout(240)
def test_a_hostile_agent_on_the_embedded_default_finds_nothing(
    fault_run: FaultRun, record_figures: RecordFigures
) -> None:
    run = scenario(fault_run)
    run_hostile(run, fault_run, record_figures, "embedded (SQLite in its workdir)")


@pytest.mark.postgres
@pytest.mark.redis
@pytest.mark.timeout(240)
def test_a_hostile_agent_on_postgres_and_redis_finds_nothing(
    fault_run: FaultRun, record_figures: RecordFigures, _postgres_database: str
) -> None:
    require_service("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    run = scenario(fault_run, _postgres_database)
    run_hostile(run, fault_run, record_figures, "PostgreSQL + Redis")


def test_the_hostile_agent_finds_what_is_in_reach(tmp_path: Path) -> None:
    """The control: run outside orch, with a canary in its own environment and a store it can write, the same
    agent reports the canary and the write, so the zeros above are orch's doing, not a blind probe."""
    import sqlite3

    store = tmp_path / "orch.db"
    with sqlite3.connect(store) as conn:
        conn.execute("CREATE TABLE tasks (key TEXT, plan_id TEXT, command TEXT)")
        conn.execute("INSERT INTO tasks VALUES ('victim', 'p-1', 'echo original')")
    secret = canary()
    env = {"PATH": os.environ["PATH"], "SOME_KEY": secret, "ORCH_PLAN_ID": "p-1", "ORCH_WORKDIR": str(tmp_path)}
    args = [sys.executable, str(HOSTILE_AGENT), "--store", str(store), "--victim", "victim"]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    report = report_of(done.stdout)
    assert digest(secret) in report["secrets"]
    assert report["store_writes"] == 1
    assert report["processes_visible"] > 6  # the host's processes: no pid namespace
