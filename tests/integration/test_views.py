"""`orch report` and `orch graph` against golden files, on a finished plan built through the store's own functions
at fixed times (so the output is the same on every run, on SQLite and PostgreSQL alike).

The plan has a success with tokens and a cost, a task whose `verify:` failed once and passed on its retry, a
permanent failure, a task doomed by it, a skipped task, a task cancelled while it ran, and files changed.

To regenerate the golden files after a deliberate change of the output, run
    UPDATE_GOLDEN=1 .venv/bin/pytest tests/integration/test_views.py
and review the diff of tests/golden/ before committing it.
"""

from __future__ import annotations

import io
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from rich.console import Console

from orch.cli import main
from orch.decisions.retry import Outcome
from orch.dispatch.reconcile import reconcile_plans
from orch.intake.prices import Usage, cost_usd, load_prices, price_for
from orch.records import AttemptResult, Claim, Dispatch
from orch.settings import get_settings
from orch.states import AttemptStatus, PlanStatus, TaskStatus
from orch.store import attempts, operator, plans, spend
from orch.store.db import db_now, ensure_schema, read_session, write_session
from orch.views.status import PlanSnapshot, summary_line, tasks_table
from tests.conftest import CONFIG_DIR
from tests.helpers import make_plan, registry

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
MODEL = "claude-sonnet-4-5"

TASKS: list[dict[str, object]] = [
    {"id": "design", "title": "Design the accounts API", "agent": "backend-development", "command": "true"},
    {
        "id": "api",
        "title": 'Build the API | "v2" <fast> & #1',
        "agent": "backend-development",
        "after": ["design"],
        "command": "true",
        "verify": "pytest -q tests/test_api.py",
        "files": ["src/", "tests/"],
    },
    {"id": "lint", "title": "Lint the code", "agent": "testing-specialist", "after": ["design"], "command": "true"},
    {
        "id": "docs",
        "title": "Write the docs",
        "agent": "documentation-writer",
        "after": ["design"],
        "command": "true",
        "retries": 0,
    },
    {"id": "publish", "title": "Publish the docs", "agent": "documentation-writer", "after": ["docs"], "command": "1"},
    {"id": "deploy", "title": "Deploy it", "agent": "devops-engineer", "after": ["api", "lint"], "command": "true"},
    {"id": "cleanup", "title": "Clean up old accounts", "agent": "devops-engineer", "command": "true"},
]


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def tick(seconds: float) -> dict[str, Dispatch]:
    with write_session() as session:
        return {d.key: d for d in reconcile_plans(session, plans.active_plan_ids(session), registry(), at(seconds))}


def claim(dispatch: Dispatch, seconds: float) -> Claim:
    with write_session() as session:
        claimed = attempts.claim(session, dispatch.task_pk, dispatch.attempt, "worker-1", 4242, 60, now=at(seconds))
    assert claimed is not None
    return claimed[0]


def finish(claimed: Claim, result: AttemptResult, outcome: Outcome, seconds: float) -> None:
    with write_session() as session:
        assert attempts.record_result(session, claimed, result, outcome, at(seconds)) is not None


def priced(usage: Usage) -> float:
    price = price_for(MODEL, load_prices(CONFIG_DIR))
    assert price is not None
    return cost_usd(usage, price)


def agent_result(usage: Usage, **fields: object) -> AttemptResult:
    return AttemptResult(True, exit_code=0, model=MODEL, usage=usage, cost_usd=priced(usage), **fields)  # type: ignore[arg-type]


SUCCESS = Outcome(TaskStatus.SUCCEEDED, AttemptStatus.SUCCEEDED)


def build_finished_plan(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(plans, "new_plan_id", lambda name: f"{name}-0123abcd")
    plan = make_plan(TASKS, name="accounts", workdir=Path("/srv/accounts"), description="Accounts service, v2.")
    with write_session() as session:
        plan_id = plans.submit_plan(session, plan, T0)

    first = tick(0)
    assert set(first) == {"design", "cleanup"}
    design = claim(first["design"], 1)
    cleanup = claim(first["cleanup"], 1)
    design_usage = Usage(1200, 300, 0, 5000)
    finish(
        design,
        agent_result(design_usage, result="Wrote docs/api.md: four endpoints.", files_changed=("docs/api.md",)),
        SUCCESS,
        61,
    )
    with write_session() as session:
        operator.cancel_task(session, plan_id, "cleanup", at(70), "cancelled by orch cancel")

    second = tick(62)
    assert set(second) == {"api", "lint", "docs"}
    with write_session() as session:
        operator.skip_task(session, plan_id, "lint", at(63))
    api = claim(second["api"], 65)
    docs = claim(second["docs"], 65)
    finish(
        docs,
        AttemptResult(False, exit_code=3, failure_class="exit_status", error="command failed: exit 3"),
        Outcome(TaskStatus.FAILED, AttemptStatus.FAILED),
        95,
    )
    failed_verify = AttemptResult(
        False,
        exit_code=0,
        failure_class="verification_failed",
        error="verify `pytest -q tests/test_api.py` failed: exit 1",
        model=MODEL,
        usage=Usage(2000, 800, 100, 0),
        cost_usd=priced(Usage(2000, 800, 100, 0)),
        files_changed=("src/api.py",),
        verified=False,
    )
    finish(api, failed_verify, Outcome(TaskStatus.RETRY_WAIT, AttemptStatus.FAILED, at(130)), 125)

    third = tick(131)
    assert set(third) == {"api"}
    api = claim(third["api"], 132)
    report = "Added the `/accounts` endpoints.\n\n```python\ndef create(): ...\n```\n| a | table? | <b>no</b>"
    finish(
        api,
        agent_result(
            Usage(3000, 1500, 0, 2000),
            result=report,
            files_changed=("src/api.py", "tests/test_api.py"),
            verified=True,
        ),
        SUCCESS,
        252,
    )

    fourth = tick(253)
    assert set(fourth) == {"deploy"}
    deploy = claim(fourth["deploy"], 254)
    finish(deploy, AttemptResult(True, exit_code=0, files_changed=()), SUCCESS, 284)
    assert tick(285) == {}
    with read_session() as session:
        stored = plans.find_plan(session, plan_id)
        statuses = {t.key: t.status for t in plans.plan_tasks(session, plan_id)}
    assert stored.status is PlanStatus.FAILED
    assert statuses == {
        "design": TaskStatus.SUCCEEDED,
        "api": TaskStatus.SUCCEEDED,
        "lint": TaskStatus.SUCCEEDED,
        "docs": TaskStatus.FAILED,
        "publish": TaskStatus.UPSTREAM_FAILED,
        "deploy": TaskStatus.SUCCEEDED,
        "cleanup": TaskStatus.CANCELLED,
    }
    assert cleanup.attempt == 1
    return plan_id


def orch(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def check_golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(exist_ok=True)
        path.write_text(actual, encoding="utf-8")
    assert path.exists(), f"{path} is missing: run with UPDATE_GOLDEN=1 to write it"
    assert actual == path.read_text(encoding="utf-8"), f"{name} differs from its golden file (UPDATE_GOLDEN=1)"


def test_report_and_graph_of_a_finished_plan_match_their_golden_files(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan_id = build_finished_plan(monkeypatch)
    check_golden("report.md", orch("report", plan_id))
    as_json = orch("report", "accounts", "--format", "json")
    check_golden("report.json", as_json)
    check_golden("graph.mmd", orch("graph", plan_id))

    report = json.loads(as_json)
    tasks = {t["id"]: t for t in report["tasks"]}
    assert report["totals"]["by_status"]["succeeded"] == 4 and report["totals"]["skipped"] == 1
    assert tasks["api"]["attempts"] == 2 and tasks["api"]["verify"]["result"] == "passed"
    assert [a["verified"] for a in tasks["api"]["history"]] == [False, True]
    assert tasks["docs"]["error"] == "command failed: exit 3" and tasks["docs"]["failure_class"] == "exit_status"
    assert tasks["publish"]["blocked_by"] == ["docs"]
    assert tasks["lint"]["skipped"] and tasks["lint"]["attempts"] == 0
    spent = spend.plan_spend
    with read_session() as session:
        assert report["totals"]["cost_usd"] == pytest.approx(spent(session, plan_id).usd)
        assert report["totals"]["tokens"]["total"] == spent(session, plan_id).tokens


def test_report_of_an_open_plan_counts_a_running_attempt_up_to_now(store_url: str) -> None:
    plan = make_plan([{"id": "slow", "title": "A slow task", "agent": "backend-development", "command": "true"}])
    with write_session() as session:
        started = db_now(session) - timedelta(seconds=90)
        plan_id = plans.submit_plan(session, plan, started)
        (dispatch,) = reconcile_plans(session, [plan_id], registry(), started)
        assert attempts.claim(session, dispatch.task_pk, dispatch.attempt, "worker-1", 4242, 3600, now=started)

    report = json.loads(orch("report", plan_id, "--format", "json"))
    (task,) = report["tasks"]
    (attempt,) = task["history"]
    assert report["plan"]["as_of"] is not None and task["status"] == "running" and attempt["finished_at"] is None
    assert 90 <= attempt["seconds"] < 90 + 60  # to the database's now, read with the report
    assert task["run_s"] == attempt["seconds"] and task["wall_s"] == attempt["seconds"]
    assert not task["skipped"]


def test_graph_of_a_plan_file_is_validated_and_drawn_uncoloured(tmp_path: Path) -> None:
    plan = tmp_path / "accounts.yaml"
    plan.write_text(json.dumps({"name": "accounts", "tasks": TASKS}))
    chart = orch("graph", str(plan))
    check_golden("graph_file.mmd", chart.replace(str(plan), "accounts.yaml"))
    assert "classDef" not in chart

    fenced = orch("graph", str(plan), "--fenced")
    assert fenced.startswith("```mermaid\nflowchart TD\n") and fenced.endswith("```\n")


def test_graph_of_a_bad_plan_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    plan = tmp_path / "loop.yaml"
    plan.write_text("name: loop\ntasks:\n  - {id: a, title: one, after: [b]}\n  - {id: b, title: two, after: [a]}\n")
    for path in (plan, tmp_path / "missing.yaml"):
        result = CliRunner().invoke(main, ["graph", str(path)])
        assert result.exit_code == 2
        assert result.stdout == ""
        assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(f"{path}: ")
    ensure_schema()
    unknown = CliRunner().invoke(main, ["graph", "no-such-plan"])
    store = get_settings().home.resolve() / "orch.db"
    assert (
        unknown.exit_code == 2
        and unknown.stderr == f"orch: no plan with id or name 'no-such-plan' in store at {store}\n"
    )


def test_graph_of_a_stored_plan_wins_over_a_folder_of_its_name(
    store_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A folder called like the plan (a repository named after it, say) is not a plan file."""
    plan_id = build_finished_plan(monkeypatch)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "accounts").mkdir()
    assert orch("graph", "accounts") == orch("graph", plan_id)


HOSTILE = (
    "\x1b]0;PWNED\x07\x1b[2K\r\x1b[32msucceeded\x1b[0m thanks @octocat, see https://evil.example and www.evil.example"
)


def test_report_and_status_show_what_plans_and_agents_wrote_inert(store_url: str) -> None:
    tasks: list[dict[str, object]] = [
        {"id": "ok", "title": f"ok \u202eevil {HOSTILE}", "agent": "backend-development", "command": "true"},
        {"id": "bad", "title": "fails", "agent": "backend-development", "command": "false", "retries": 0},
    ]
    plan = make_plan(tasks, name="hostile", description=f"plan text {HOSTILE}")
    with write_session() as session:
        plan_id = plans.submit_plan(session, plan, T0)
    dispatched = tick(0)
    finish(
        claim(dispatched["ok"], 1),
        AttemptResult(True, exit_code=0, result=f"done\n{HOSTILE}\n\u202e", files_changed=("evil\x1b[31m.py",)),
        SUCCESS,
        2,
    )
    failed = AttemptResult(False, exit_code=1, failure_class="exit_status", error=f"command failed: {HOSTILE}")
    finish(claim(dispatched["bad"], 1), failed, Outcome(TaskStatus.FAILED, AttemptStatus.FAILED), 3)

    markdown = orch("report", plan_id)
    assert not [c for c in markdown if c not in "\n" and (c < " " or "\x7f" <= c <= "\x9f" or c == "\u202e")]
    shown = r"\\x1b\]0;PWNED\\x07\\x1b\[2K \\x1b\[32msucceeded\\x1b\[0m thanks @&#8203;octocat, see "  # \r: a space
    shown += "https:&#8203;//evil.example and www&#8203;.evil.example"
    assert f"> plan text {shown}" in markdown  # the description
    assert f"command failed: {shown}" in markdown  # the failure
    assert "`evil\\x1b[31m.py`" in markdown  # a file name, in code
    assert "\\x1b]0;PWNED\\x07\\x1b[2K\\r\\x1b[32msucceeded\\x1b[0m thanks @octocat" in markdown  # the result block
    summary = next(line for line in markdown.splitlines() if line.startswith("<details><summary>"))
    assert "\\u202eevil \\x1b]0;PWNED" in summary and "@&#8203;octocat" in summary and "https:&#8203;//" in summary

    as_json = orch("report", plan_id, "--format", "json")
    assert not [c for c in as_json if "\x7f" <= c <= "\x9f" or c == "\u202e" or (c < " " and c != "\n")]
    report = {t["id"]: t for t in json.loads(as_json)["tasks"]}
    assert report["ok"]["result"] == f"done\n{HOSTILE}\n\u202e" and report["bad"]["error"] == failed.error

    status = orch("status", plan_id)
    assert "\x1b" not in status and "\x07" not in status and "\r" not in status and "\u202e" not in status
    # On a terminal, wide enough for the whole error: rich's own styles, and the agent's sequences only as text.
    screen = Console(file=io.StringIO(), width=400, force_terminal=True, color_system="standard")
    with read_session() as session:
        snapshot = PlanSnapshot.load(session, plans.find_plan(session, plan_id), at(4))
    screen.print(summary_line(snapshot), tasks_table(snapshot, at(4)))
    drawn = screen.file.getvalue()  # type: ignore[attr-defined]
    assert "\x1b[" in drawn  # rich styled it
    assert "\x07" not in drawn and "\x1b]" not in drawn and "\r" not in drawn and "\x1b[2K" not in drawn
    assert "command failed: \\x1b]0;PWNED\\x07\\x1b[2K\\r\\x1b[32msucceeded\\x1b[0m thanks @octocat" in drawn
