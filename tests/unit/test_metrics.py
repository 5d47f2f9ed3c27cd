"""The exporter's pure parts: histogram buckets, bounded plan labels, pause causes, and the names the Grafana
dashboard and docs/metrics.md use."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Float, create_engine, literal, select

from orch.budget import Budget
from orch.failures import PauseCause
from orch.services.exporter.specs import DURATION_BUCKETS, LATENCY_BUCKETS, SPECS, exposed_sample_names
from orch.services.exporter.tally import PlanCounts, cumulative_buckets
from orch.states import PlanStatus
from orch.store.exporter_reads import PlanRef, TaskCounts, _Seconds, bucket_index
from orch.store.models import UTCDateTime

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = REPO / "deploy" / "grafana" / "orch-dashboard.json"
T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def test_cumulative_buckets_add_up_and_end_with_inf() -> None:
    assert cumulative_buckets([1, 0, 2, 3], [0.5, 1.0, 5.0]) == [
        ("0.5", 1.0),
        ("1.0", 1.0),
        ("5.0", 3.0),
        ("+Inf", 6.0),
    ]
    assert cumulative_buckets([0, 0], [1.0]) == [("1.0", 0.0), ("+Inf", 0.0)]
    with pytest.raises(ValueError, match="expected one more count than bounds"):
        cumulative_buckets([1, 2], [1.0, 2.0])


def test_bucket_bounds_are_sorted_and_cover_seconds_to_a_day() -> None:
    for bounds in (DURATION_BUCKETS, LATENCY_BUCKETS):
        assert list(bounds) == sorted(set(bounds))
    assert DURATION_BUCKETS[-1] == 86400.0  # the longest task timeout
    assert LATENCY_BUCKETS[0] <= 0.005  # a hop of a few milliseconds still lands in a bucket of its own


@pytest.mark.parametrize(
    ("value", "index"),
    [(-0.2, 0), (0.0, 0), (0.5, 0), (0.5000001, 1), (1.0, 1), (4.99, 2), (5.0, 2), (5.01, 3), (1e9, 3)],
)
def test_sql_bucket_index_puts_a_value_on_a_bound_into_that_bound(value: float, index: int) -> None:
    engine = create_engine("sqlite://")
    with engine.connect() as conn:
        found = conn.scalar(select(bucket_index(literal(value, Float), [0.5, 1.0, 5.0])))
    assert found == index


def test_sql_seconds_between_two_stored_timestamps() -> None:
    engine = create_engine("sqlite://")
    start, end = T0, T0 + timedelta(minutes=2, seconds=3, microseconds=250_000)
    with engine.connect() as conn:
        seconds = conn.scalar(
            select(_Seconds(literal(start, UTCDateTime()), literal(end, UTCDateTime())))  # stored as naive UTC text
        )
    assert seconds == pytest.approx(123.25, abs=1e-3)


def plan(plan_id: str, status: PlanStatus, finished_minute: int | None = None) -> PlanRef:
    finished = None if finished_minute is None else T0 + timedelta(minutes=finished_minute)
    return PlanRef(plan_id, plan_id, status, T0, finished, Budget())


def test_finished_plans_counts_are_read_once_and_forgotten_when_out_of_scope() -> None:
    loads: list[list[str]] = []

    def load(ids: Any) -> dict[str, TaskCounts]:
        loads.append(sorted(ids))
        return {plan_id: {("general-purpose", "succeeded"): len(plan_id)} for plan_id in ids}

    cache = PlanCounts()
    running = plan("live", PlanStatus.RUNNING)
    old, older = plan("old", PlanStatus.SUCCEEDED, 5), plan("older", PlanStatus.FAILED, 3)
    first = cache.refresh([running, old, older], load)
    assert set(first) == {"live", "old", "older"}
    cache.refresh([running, old, older], load)
    assert loads == [["live", "old", "older"], ["live"]]  # a live plan is re-read every scrape, finished ones not
    newest = plan("newest", PlanStatus.CANCELLED, 9)
    cache.refresh([running, newest, old], load)  # `older` fell out of the N most recent
    assert loads[-1] == ["live", "newest"]
    assert set(cache.finished) == {"newest", "old"}


def test_a_reopened_or_refinished_plan_is_read_again() -> None:
    loads: list[list[str]] = []

    def load(ids: Any) -> dict[str, TaskCounts]:
        loads.append(sorted(ids))
        return {plan_id: {} for plan_id in ids}

    cache = PlanCounts()
    cache.refresh([plan("p", PlanStatus.FAILED, 1)], load)
    cache.refresh([plan("p", PlanStatus.RUNNING)], load)  # orch retry reopened it
    cache.refresh([plan("p", PlanStatus.SUCCEEDED, 7)], load)  # and it finished again
    cache.refresh([plan("p", PlanStatus.SUCCEEDED, 7)], load)
    assert loads == [["p"], ["p"], ["p"]]


def test_pause_causes() -> None:
    # The `cause` label's values are the stored causes (the migration that added the column took them from the
    # reasons: tests/integration/test_store.py); dashboards and alerts name them.
    assert [str(cause) for cause in PauseCause] == ["circuit_breaker", "usage_limit"]


def test_every_metric_has_help_text_and_a_known_prefix() -> None:
    names = [spec.name for spec in SPECS]
    assert len(names) == len(set(names))
    for spec in SPECS:
        assert spec.name.startswith(("orch_", "celery_")), spec.name
        assert len(spec.help) > 20, spec.name
        assert not spec.name.endswith("_total"), "counters get _total from prometheus_client"


def promql_expressions(node: Any) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str) and (key in ("expr", "definition") or (key == "query" and "(" in value)):
                found.append(value)
            else:
                found.extend(promql_expressions(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(promql_expressions(item))
    return found


def test_every_metric_the_dashboard_queries_is_one_the_exporter_exposes() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = promql_expressions(dashboard)
    assert len(expressions) > 20
    used = {name for expr in expressions for name in re.findall(r"\b(?:orch|celery)_[a-z0-9_]+\b", expr)}
    assert used, "no metric found in the dashboard's expressions"
    assert used - exposed_sample_names() == set()
    for needed in (
        "orch_attempts_finished_total",  # throughput
        "orch_tasks",  # states
        "orch_queue_length",  # queue depth
        "orch_attempt_start_latency_seconds_bucket",
        "orch_attempt_duration_seconds_bucket",
        "orch_attempt_failures_total",
        "orch_tokens_total",
        "orch_cost_usd_total",
        "orch_plan_budget_remaining_usd",
        "orch_agent_paused",
        "orch_merges_total",
        "orch_merge_queue_wait_seconds_bucket",
        "orch_merge_requests_open",
        "orch_worktrees_live",
        "orch_worktree_disk_bytes",
    ):
        assert needed in used, f"the dashboard has no panel on {needed}"
    assert any("histogram_quantile" in expr for expr in expressions)


def test_the_dashboard_is_a_grafana_model_on_a_prometheus_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["uid"] and dashboard["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])


def test_the_metrics_page_lists_every_metric_in_its_section() -> None:
    page = (REPO / "docs" / "metrics.md").read_text()
    section = page.split("## Prometheus: `orch exporter`", 1)[1].split("\n## ", 1)[0]
    for spec in SPECS:
        assert f"`{spec.sample_names[0].removesuffix('_bucket')}`" in section, spec.name
