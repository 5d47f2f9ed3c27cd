"""The exporter's collector against real stores (SQLite and PostgreSQL) and brokers: its running totals equal a
fresh read of the store as attempts start and finish, plan labels stay bounded, budgets and pauses match the
store, and queue depth comes from the broker."""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import select, text
from structlog.testing import capture_logs

from orch.decisions.retry import Outcome
from orch.dispatch.reconcile import reconcile_plans
from orch.failures import FailureClass, PauseCause
from orch.intake.prices import Usage
from orch.records import AttemptResult, Claim, Dispatch
from orch.services.broker_probe import queue_depths
from orch.services.exporter.collector import StoreCollector
from orch.settings import Settings
from orch.states import AttemptStatus, PlanStatus, TaskStatus
from orch.store import attempts, exporter_reads, operator, pauses, plans, spend
from orch.store.db import db_now, ensure_schema, read_session, write_session
from orch.store.models import AttemptRow, TaskRow
from tests.conftest import RABBITMQ_HOST, RABBITMQ_PORT, require_service
from tests.helpers import make_plan, registry, wait_for
from tests.metrics_scrape import Samples, assert_attempts_match_store, by, matching, parse, silent_server, value

BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)  # settled, by the database's clock
NO_BROKER = "redis://127.0.0.1:1/0"  # nothing listens: the store tests leave every shared broker alone
# Prometheus' default scrape timeout is 10 s; a scrape with a server that hangs must answer well within it.
SCRAPE_BOUND = 8.0


def collector(broker_url: str = NO_BROKER, recent: int = 20, settle: float = 0.0) -> StoreCollector:
    """A collector that waits for the store as long as a slow test machine needs (the figures are under test)."""
    settings = Settings(broker_url=broker_url, exporter_recent_plans=recent)
    return StoreCollector(settings, settle_seconds=settle, store_wait=60.0)


def scrape(source: StoreCollector) -> Samples:
    """Through the text exposition and prometheus_client's parser, as Prometheus would read it; without this
    host's worktree disk, which is walked in the background and is no figure of the store
    (tests/integration/test_merge_metrics.py)."""
    registry_ = CollectorRegistry(auto_describe=False)
    registry_.register(source)
    samples = parse(generate_latest(registry_).decode())
    return {key: v for key, v in samples.items() if key[0] != "orch_worktree_disk_bytes"}


def submit(tasks: list[dict[str, Any]], name: str = "m", **extra: Any) -> str:
    with write_session() as session:
        return plans.submit_plan(session, make_plan(tasks, name=name, **extra), BASE)


def tick(at: datetime) -> dict[str, Dispatch]:
    with write_session() as session:
        dispatches = reconcile_plans(session, plans.active_plan_ids(session), registry(), at)
    with read_session() as session:
        keys = {t.pk: t.key for t in session.scalars(select(TaskRow))}
    return {keys[d.task_pk]: d for d in dispatches}


def claim(dispatch: Dispatch, at: datetime, worker: str = "w1@host") -> Claim:
    with write_session() as session:
        found = attempts.claim(session, dispatch.task_pk, dispatch.attempt, worker, 1, 3600.0, now=at)
    assert found is not None
    return found[0]


def finish(
    found: Claim, at: datetime, outcome: Outcome, failure: str | None = None, cost: float = 0.0, tokens: int = 0
) -> None:
    result = AttemptResult(
        outcome.attempt_status is AttemptStatus.SUCCEEDED,
        exit_code=0 if failure is None else 1,
        failure_class=failure,
        error=None if failure is None else "boom",
        usage=Usage(input_tokens=tokens, output_tokens=tokens // 2),
        cost_usd=cost,
        model="claude-sonnet-4-5",
    )
    with write_session() as session:
        assert attempts.record_result(session, found, result, outcome, at)


DONE = Outcome(TaskStatus.SUCCEEDED, AttemptStatus.SUCCEEDED)


def test_running_totals_equal_a_fresh_read_as_attempts_start_and_finish(store_url: str) -> None:
    tasks: list[dict[str, Any]] = [
        {"id": "a", "title": "api", "agent": "backend-development", "command": "true"},
        {"id": "b", "title": "tests", "agent": "testing-specialist", "after": ["a"], "command": "true"},
        {"id": "c", "title": "deploy", "agent": "devops-engineer", "command": "true", "retries": 2},
        {"id": "d", "title": "db", "agent": "backend-development", "command": "true"},
    ]
    plan_id = submit(tasks, budget={"usd": 1.0, "tokens": 10_000})
    ready = tick(BASE)
    finish(claim(ready["a"], BASE + timedelta(seconds=1)), BASE + timedelta(seconds=4), DONE, cost=0.25, tokens=1000)
    retry_at = BASE + timedelta(seconds=3)
    c1 = claim(ready["c"], BASE + timedelta(seconds=2))
    finish(
        c1, BASE + timedelta(seconds=2.5), Outcome(TaskStatus.RETRY_WAIT, AttemptStatus.FAILED, retry_at), "exit_status"
    )
    d = claim(ready["d"], BASE + timedelta(seconds=3), worker="w2@host")  # left running

    exporter = collector()
    first = scrape(exporter)
    assert first == scrape(collector())  # folded + live == everything read at once
    assert exporter.ledger.folded_upto >= 3 and len(exporter.ledger.held) == 1  # d's attempt: not settled
    assert_attempts_match_store(first)
    assert value(first, "orch_store_up") == 1.0 and value(first, "orch_broker_up") == 0.0
    assert value(first, "celery_worker_tasks_active", hostname="w2@host") == 1.0
    assert value(first, "orch_tasks", plan=plan_id, agent_type="backend-development", state="running") == 1.0
    assert value(first, "orch_tasks", plan=plan_id, agent_type="devops-engineer", state="retry_wait") == 1.0
    failed = by(first, "celery_task_failed_total", "name", "queue_name", "exception")
    assert failed == {("orch.run_task", "agent.devops-engineer", "exit_status"): 1.0}

    finish(d, BASE + timedelta(seconds=20), DONE, cost=0.5, tokens=2000)
    ready = tick(BASE + timedelta(seconds=30))
    assert set(ready) == {"b", "c"} and ready["c"].attempt == 2
    finish(claim(ready["b"], BASE + timedelta(seconds=31)), BASE + timedelta(seconds=40), DONE, cost=0.125)
    claim(ready["c"], BASE + timedelta(seconds=32))  # the retry runs

    second = scrape(exporter)
    assert second == scrape(collector())
    with read_session() as session:
        running = session.scalars(select(AttemptRow.pk).where(AttemptRow.status == AttemptStatus.RUNNING)).all()
    assert exporter.ledger.held == frozenset(running) and len(running) == 1  # c's retry; d's attempt folded
    assert_attempts_match_store(second)
    assert value(second, "celery_task_retried_total", name="orch.run_task", queue_name="agent.devops-engineer") == 1.0
    assert value(second, "orch_cost_usd_total", agent_type="backend-development") == pytest.approx(0.75)
    with read_session() as session:
        spent = spend.plan_spend(session, plan_id)
    assert spent.usd == pytest.approx(0.875)
    assert value(second, "orch_plan_budget_remaining_usd", plan=plan_id) == pytest.approx(1.0 - spent.usd)
    assert value(second, "orch_plan_budget_remaining_tokens", plan=plan_id) == 10_000 - spent.tokens
    assert value(second, "celery_worker_tasks_active", hostname="w2@host") is None  # nothing runs there now
    durations = matching(second, "orch_attempt_duration_seconds_sum")
    assert sum(durations.values()) == pytest.approx(3.0 + 0.5 + 17.0 + 9.0, abs=0.01)
    backend = by(second, "orch_attempt_duration_seconds_bucket", "agent_type", "status", "le")
    assert backend[("backend-development", "succeeded", "5.0")] == 1.0  # a (3 s) within 5 s; d (17 s) above it
    assert backend[("backend-development", "succeeded", "30.0")] == 2.0


def test_a_reopened_plan_budget_counts_what_was_folded_before(store_url: str) -> None:
    plan_id = submit(
        [{"id": "x", "title": "x", "agent": "general-purpose", "command": "false", "retries": 0}],
        budget={"usd": 2.0},
    )
    ready = tick(BASE)
    failed = Outcome(TaskStatus.FAILED, AttemptStatus.FAILED)
    finish(claim(ready["x"], BASE), BASE + timedelta(seconds=1), failed, FailureClass.EXIT_STATUS, cost=0.5)
    tick(BASE + timedelta(seconds=2))  # the plan fails
    exporter = collector()
    samples = scrape(exporter)
    assert value(samples, "orch_plan_info", plan=plan_id, name="m", status="failed") == 1.0
    assert value(samples, "orch_plan_budget_remaining_usd", plan=plan_id) is None  # finished: no budget gauge
    with write_session() as session:
        operator.retry_task(session, plan_id, "x", BASE + timedelta(seconds=3))
    samples = scrape(exporter)
    assert value(samples, "orch_plan_budget_remaining_usd", plan=plan_id) == pytest.approx(1.5)


def test_a_plan_submitted_between_scrapes_has_its_spend_counted_once(store_url: str) -> None:
    ensure_schema()
    exporter = collector()
    scrape(exporter)
    with read_session() as session:
        created = db_now(session)
    with write_session() as session:
        task = [{"id": "y", "title": "y", "agent": "general-purpose", "command": "true"}]
        plan_id = plans.submit_plan(session, make_plan(task, name="late", budget={"usd": 3.0}), created)
    ready = tick(created)
    ended = created + timedelta(milliseconds=20)
    finish(claim(ready["y"], created + timedelta(milliseconds=10)), ended, DONE, cost=0.75, tokens=100)

    def past(moment: datetime) -> bool:
        with read_session() as session:
            return db_now(session) > moment

    wait_for(lambda: past(ended), 10, "the database clock to pass the attempt's end")
    samples = scrape(exporter)  # its attempt is settled (settle 0): folded, not read live
    assert not exporter.ledger.held and exporter.ledger.folded.spend[plan_id].usd == pytest.approx(0.75)
    assert value(samples, "orch_plan_budget_remaining_usd", plan=plan_id) == pytest.approx(2.25)
    assert value(scrape(exporter), "orch_plan_budget_remaining_usd", plan=plan_id) == pytest.approx(2.25)


def test_plan_labels_are_bounded_to_live_plans_and_the_most_recent_finished(store_url: str) -> None:
    task = [{"id": "t", "title": "t", "agent": "general-purpose", "command": "true"}]
    finished = []
    for minute in range(4):
        plan_id = submit(task, name=f"done{minute}")
        with write_session() as session:
            operator.cancel_plan(session, plan_id, BASE + timedelta(minutes=minute), "test")
        finished.append(plan_id)
    running = submit(task, name="running")
    paused = submit(task, name="paused")
    with write_session() as session:
        operator.hold_plan(session, paused, PlanStatus.PAUSED, "orch pause", BASE)
    samples = scrape(collector(recent=2))
    in_scope = {dict(labels)["plan"] for labels in matching(samples, "orch_plan_info")}
    assert in_scope == {running, paused, finished[3], finished[2]}
    assert {dict(labels)["plan"] for labels in matching(samples, "orch_tasks")} == in_scope
    assert value(samples, "orch_tasks", plan=finished[3], agent_type="general-purpose", state="cancelled") == 1.0
    assert value(samples, "orch_tasks", plan=running, agent_type="general-purpose", state="pending") == 1.0
    assert {dict(labels)["plan"] for labels in matching(scrape(collector(recent=0)), "orch_plan_info")} == {
        running,
        paused,
    }


def test_pauses_by_cause(store_url: str) -> None:
    with write_session() as session:
        now = db_now(session)
        breaker, limit, minute = PauseCause.CIRCUIT_BREAKER, PauseCause.USAGE_LIMIT, timedelta(minutes=1)
        pauses.pause_agent(session, "backend-development", now + 10 * minute, breaker, "circuit open: 5 fails", now)
        pauses.pause_agent(session, "devops-engineer", now + 5 * minute, limit, "usage limit; resets 14:00", now)
        pauses.pause_agent(session, "observability", now - minute, breaker, "circuit open: over", now)
    samples = scrape(collector())
    assert value(samples, "orch_agent_paused", agent_type="backend-development", cause="circuit_breaker") == 1.0
    assert value(samples, "orch_agent_paused", agent_type="backend-development", cause="usage_limit") == 0.0
    assert value(samples, "orch_agent_paused", agent_type="devops-engineer", cause="usage_limit") == 1.0
    assert value(samples, "orch_agent_paused", agent_type="observability", cause="circuit_breaker") == 0.0
    left = by(samples, "orch_agent_pause_remaining_seconds", "agent_type", "cause")[
        ("backend-development", "circuit_breaker")
    ]
    assert 590 < left <= 600
    assert sum(matching(samples, "orch_agent_paused").values()) == 2.0


def test_queue_depth_counts_every_priority_sub_list_on_redis(sqlite_url: str, redis_url: str) -> None:
    import redis
    from kombu.connection import Connection
    from kombu.entity import Exchange, Queue

    exchange = Exchange("orch", type="direct")
    queue = Queue("agent.backend-development", exchange, routing_key="agent.backend-development")
    with Connection(redis_url) as conn:
        producer = conn.Producer()
        for priority in (0, 0, 9):
            producer.publish({"n": 1}, exchange=exchange, routing_key=queue.name, declare=[queue], priority=priority)
    keys = set(redis.Redis.from_url(redis_url).keys("agent.backend-development*"))
    assert keys == {b"agent.backend-development", b"agent.backend-development\x06\x169"}  # Celery's sub-list
    samples = scrape(collector(redis_url))
    assert value(samples, "orch_broker_up") == 1.0
    assert value(samples, "orch_queue_length", queue="agent.backend-development", agent_type="backend-development") == 3
    assert value(samples, "celery_queue_length", queue_name="agent.backend-development") == 3.0
    assert value(samples, "celery_queue_length", queue_name="agent.general-purpose") == 0.0
    assert len(matching(samples, "orch_queue_length")) == len(registry().queues)
    assert not matching(samples, "celery_active_consumer_count")  # Redis cannot tell


def test_a_broker_that_does_not_answer_leaves_the_store_figures_and_no_password(sqlite_url: str) -> None:
    password = f"canary-{secrets.token_hex(6)}"
    submit([{"id": "t", "title": "t", "agent": "general-purpose", "command": "true"}])
    registry_ = CollectorRegistry(auto_describe=False)
    registry_.register(collector(f"redis://:{password}@127.0.0.1:1/0"))
    with capture_logs() as logs:
        text = generate_latest(registry_).decode()
    assert "orch_broker_up 0.0" in text and "orch_store_up 1.0" in text and "orch_tasks{" in text
    assert "queue_length{" not in text
    broker_logs = [entry for entry in logs if "broker" in entry["event"]]
    assert [entry["event"] for entry in broker_logs] == ["metrics: the broker did not answer"]
    assert "127.0.0.1:1" in broker_logs[0]["broker"]
    assert password not in text + repr(logs)


def bounded_scrape(exporter: StoreCollector) -> tuple[Samples, list[MutableMapping[str, Any]]]:
    """A scrape, with its log lines, that must answer well within Prometheus' default scrape timeout."""
    started = time.monotonic()
    with capture_logs() as logs:
        samples = scrape(exporter)
    assert time.monotonic() - started < SCRAPE_BOUND
    return samples, logs


@pytest.mark.parametrize(
    "broker",
    ["redis://:{password}@127.0.0.1:{port}/0", "amqp://orch:{password}@127.0.0.1:{port}//"],
    ids=["redis", "amqp"],
)
def test_a_broker_that_hangs_costs_a_scrape_seconds_and_leaves_the_store_figures(sqlite_url: str, broker: str) -> None:
    password = f"canary-{secrets.token_hex(6)}"
    submit([{"id": "t", "title": "t", "agent": "general-purpose", "command": "true"}])
    with silent_server() as port:
        samples, logs = bounded_scrape(StoreCollector(Settings(broker_url=broker.format(password=password, port=port))))
    assert value(samples, "orch_broker_up") == 0.0 and value(samples, "orch_store_up") == 1.0
    assert matching(samples, "orch_tasks") and not matching(samples, "orch_queue_length")
    assert password not in repr(logs)


def test_a_store_that_hangs_costs_a_scrape_seconds_and_leaves_the_broker_figures(redis_url: str) -> None:
    password = f"canary-{secrets.token_hex(6)}"
    with silent_server() as port:
        database_url = f"postgresql+psycopg://orch:{password}@127.0.0.1:{port}/orch"
        samples, logs = bounded_scrape(StoreCollector(Settings(database_url=database_url, broker_url=redis_url)))
    assert value(samples, "orch_store_up") == 0.0 and value(samples, "orch_exporter_ready") == 0.0
    assert value(samples, "orch_broker_up") == 1.0
    assert len(matching(samples, "orch_queue_length")) == len(registry().queues)
    assert not matching(samples, "orch_tasks")
    assert [entry["event"] for entry in logs] == ["metrics: the store did not answer"]
    assert f"127.0.0.1:{port}" in logs[0]["store"] and password not in repr(logs)


def test_scrapes_during_the_first_read_of_the_history_answer_at_once(sqlite_url: str, monkeypatch: Any) -> None:
    """`orch exporter` opens its port, then reads the history in the background: a scrape meanwhile shows
    orch_exporter_ready 0 and orch_store_up 0 at once, and the store's figures once the read is done."""
    submit([{"id": "t", "title": "t", "agent": "general-purpose", "command": "true"}])
    exporter = collector()
    history_read = threading.Event()
    read_totals = exporter.ledger.totals

    def slow_totals(*args: Any) -> Any:
        history_read.wait(60)
        return read_totals(*args)

    monkeypatch.setattr(exporter.ledger, "totals", slow_totals)
    exporter.start_read()  # what `serve` does once its port is open
    started = time.monotonic()
    during = scrape(exporter)
    assert time.monotonic() - started < SCRAPE_BOUND / 2
    assert value(during, "orch_exporter_ready") == 0.0 and value(during, "orch_store_up") == 0.0
    assert value(during, "orch_broker_up") == 0.0 and not matching(during, "orch_tasks")

    history_read.set()
    wait_for(exporter.ready.is_set, 60, "the first read of the history")
    after = scrape(exporter)
    assert value(after, "orch_exporter_ready") == 1.0 and value(after, "orch_store_up") == 1.0
    assert matching(after, "orch_tasks")


def test_any_failure_of_the_store_part_gives_store_up_0_a_log_line_and_the_rest(
    sqlite_url: str, redis_url: str, monkeypatch: Any
) -> None:
    from alembic.util import CommandError

    password = f"canary-{secrets.token_hex(6)}"
    submit([{"id": "t", "title": "t", "agent": "general-purpose", "command": "true"}])

    def broken(*_args: Any) -> Any:
        raise CommandError(f"Can't locate revision 0042 for postgresql://orch:{password}@db.internal/orch")

    monkeypatch.setattr(exporter_reads, "plans_in_scope", broken)
    registry_ = CollectorRegistry(auto_describe=False)
    registry_.register(collector(redis_url))
    with capture_logs() as logs:
        text = generate_latest(registry_).decode()  # not a 500
    samples = parse(text)
    assert value(samples, "orch_store_up") == 0.0 and value(samples, "orch_broker_up") == 1.0
    assert matching(samples, "orch_queue_length") and not matching(samples, "orch_tasks")
    assert [entry["event"] for entry in logs] == ["metrics: the store did not answer"]
    assert logs[0]["error"].startswith("CommandError: Can't locate revision 0042")
    assert password not in text + repr(logs)


def test_store_reads_on_postgresql_are_one_snapshot_with_a_statement_timeout(postgres_url: str) -> None:
    engine = exporter_reads.reader_engine(postgres_url, 2.0)
    with exporter_reads.snapshot_session(engine, 5.0) as session:
        assert session.scalar(text("SHOW statement_timeout")) == "5s"
        assert session.scalar(text("SHOW transaction_isolation")) == "repeatable read"
    with exporter_reads.snapshot_session(engine, None) as session:  # the first read of the history: no limit
        assert session.scalar(text("SHOW statement_timeout")) == "0"


def test_the_exporter_never_creates_the_store(tmp_path: Path) -> None:
    path = tmp_path / "absent.db"
    exporter = StoreCollector(Settings(database_url=f"sqlite+pysqlite:///{path}", broker_url=NO_BROKER))
    samples = scrape(exporter)
    assert value(samples, "orch_store_up") == 0.0
    assert not path.exists()


def test_counters_count_finished_attempts_only_so_they_never_go_down(store_url: str) -> None:
    """A running attempt's heartbeats report its usage so far; its final result may report a lower cost. The
    counters take an attempt once it has finished; the in-flight gauges show what running ones reported."""
    submit([{"id": "a", "title": "api", "agent": "backend-development", "command": "true"}])
    running_claim = claim(tick(BASE)["a"], BASE + timedelta(seconds=1))
    with write_session() as session:
        usage = Usage(input_tokens=9000, output_tokens=3000)
        assert attempts.renew_lease(session, running_claim, BASE + timedelta(seconds=2), 3600.0, usage, 0.9)
    exporter = collector()
    running = scrape(exporter)
    assert value(running, "orch_cost_usd_in_flight", agent_type="backend-development") == pytest.approx(0.9)
    assert value(running, "orch_tokens_in_flight", agent_type="backend-development", kind="input") == 9000
    assert value(running, "orch_cost_usd_in_flight", agent_type="general-purpose") == 0.0

    finish(running_claim, BASE + timedelta(seconds=5), DONE, cost=0.4, tokens=1000)
    finished = scrape(exporter)
    assert value(finished, "orch_cost_usd_total", agent_type="backend-development") == pytest.approx(0.4)
    assert value(finished, "orch_tokens_total", agent_type="backend-development", kind="input") == 1000
    assert value(finished, "orch_cost_usd_in_flight", agent_type="backend-development") == 0.0
    assert value(finished, "orch_tokens_in_flight", agent_type="backend-development", kind="input") == 0.0
    for (name, labels), before in running.items():
        if name.endswith("_total"):
            assert finished.get((name, labels), 0.0) >= before, (name, dict(labels))


def test_queue_depth_on_rabbitmq() -> None:
    """Passive declares on RabbitMQ: ready messages and consumers of a queue, 0 for a queue it does not hold.
    A queue of its own, so no other test's queues are touched."""
    require_service("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT)
    from kombu.connection import Connection
    from kombu.entity import Exchange, Queue

    url = f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}//"
    name, missing = f"orch-test-{secrets.token_hex(4)}", f"orch-test-missing-{secrets.token_hex(4)}"
    exchange = Exchange(f"orch-test-{secrets.token_hex(4)}", type="direct", auto_delete=True)
    queue = Queue(name, exchange, routing_key=name, auto_delete=False)
    with Connection(url) as conn:
        producer = conn.Producer()
        try:
            for _ in range(2):
                producer.publish({"n": 1}, exchange=exchange, routing_key=name, declare=[queue])
            depths = {d.queue: d for d in queue_depths(url, [missing, name, missing], 2.0)}
        finally:
            queue(conn.default_channel).delete()
            exchange(conn.default_channel).delete()
    assert (depths[name].messages, depths[name].consumers) == (2, 0)
    assert (depths[missing].messages, depths[missing].consumers) == (0, 0)
