"""Scenario 9: a task that fails every time. It stops after exactly its retries (retries + 1 attempts, each with
its backoff); everything downstream of it ends upstream_failed without running; the independent branch, on the
same agent type, still runs to the end; the plan ends failed."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.faults.conftest import RecordFigures
from tests.faults.harness import Cluster, FaultRun, LeaseWatch, Store, submit_plan, wait_for_plan

pytestmark = [pytest.mark.faults, pytest.mark.rabbitmq, pytest.mark.postgres]

RETRIES = 2
POISON_AGENT = "backend-development"
OTHER_AGENT = "testing-specialist"
DOWNSTREAM = ["poison-child", "poison-grandchild", "mixed-child", "mixed-grandchild"]
INDEPENDENT = ["steady-1", "steady-2", "steady-3", "steady-4", "steady-fan"]


def poison_plan(run: FaultRun) -> list[dict[str, object]]:
    def task(key: str, agent: str, after: list[str], *flags: str) -> dict[str, object]:
        return {"id": key, "title": key, "agent": agent, "after": after, "command": run.agent_command(*flags)}

    steady = ("--sleep", "0.3")
    return [
        {**task("poison", POISON_AGENT, [], "--fail"), "retries": RETRIES},
        task("poison-child", OTHER_AGENT, ["poison"], *steady),
        task("poison-grandchild", POISON_AGENT, ["poison-child"], *steady),
        task("mixed-child", OTHER_AGENT, ["poison", "steady-1"], *steady),
        task("mixed-grandchild", OTHER_AGENT, ["mixed-child", "steady-2"], *steady),
        task("steady-1", POISON_AGENT, [], *steady),
        task("steady-2", POISON_AGENT, ["steady-1"], *steady),
        task("steady-3", OTHER_AGENT, ["steady-2"], *steady),
        task("steady-4", POISON_AGENT, ["steady-3"], *steady),
        task("steady-fan", OTHER_AGENT, ["steady-2", "steady-4"], *steady),
    ]


@pytest.mark.timeout(120)
def test_a_task_that_always_fails_stops_after_its_retries_and_dooms_only_its_descendants(
    postgres_url: str,
    fault_rabbitmq_url: str,
    fault_run: FaultRun,
    make_cluster: Callable[..., Cluster],
    record_figures: RecordFigures,
) -> None:
    cluster = make_cluster(postgres_url, fault_rabbitmq_url, ORCH_RETRY_BACKOFF_BASE="0.1")
    cluster.start(["poison"], fault_run.queues([POISON_AGENT, OTHER_AGENT]), concurrency=3)
    plan_id = submit_plan(fault_run, cluster.env, {"name": "poison", "tasks": poison_plan(fault_run)})

    with Store(postgres_url) as store:
        watch = LeaseWatch(store, plan_id)
        status = wait_for_plan(store, plan_id, 90, cluster=cluster, watch=watch)

    verdict = cluster.examine(plan_id, watch)
    snapshot = verdict.snapshot
    poison_attempts = snapshot.attempts_of("poison")
    poison_runs = sorted(
        line["attempt"] for line in verdict.ledger if line["task"] == "poison" and line["event"] == "start"
    )
    downstream_ran = [line["task"] for line in verdict.ledger if line["task"] in DOWNSTREAM]
    doomed = [k for k in DOWNSTREAM if snapshot.task(k).status == "upstream_failed"]
    completed = [k for k in INDEPENDENT if snapshot.task(k).status == "succeeded"]
    figures = {
        **verdict.figures,
        "poison attempts": (len(poison_attempts), RETRIES + 1),
        "descendants upstream_failed": (len(doomed), len(DOWNSTREAM)),
        "descendants run": len(downstream_ran),
        "independent completed": (len(completed), len(INDEPENDENT)),
        "plan": status,
    }
    record_figures("9 poison task", figures, verdict.notes)

    verdict.assert_ok()
    assert status == "failed"
    assert [a.number for a in poison_attempts] == list(range(1, RETRIES + 2)), poison_attempts
    assert all(a.status == "failed" and a.failure_class == "exit_status" for a in poison_attempts), poison_attempts
    assert poison_runs == list(range(1, RETRIES + 2)), poison_runs
    assert snapshot.task("poison").status == "failed"
    # Its life in the event log: RETRIES rounds of retry_wait, then failed for good.
    retry_round = ["queued", "running", "retry_wait"]
    assert snapshot.transitions_of("poison") == retry_round * RETRIES + ["queued", "running", "failed"]
    assert doomed == DOWNSTREAM and not downstream_ran, (doomed, downstream_ran)
    assert all(not snapshot.attempts_of(k) for k in DOWNSTREAM)
    assert completed == INDEPENDENT, {k: snapshot.task(k).status for k in INDEPENDENT}
