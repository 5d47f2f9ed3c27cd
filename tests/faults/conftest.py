"""The fault suite's fixtures and its report: every scenario records its figures, and the terminal summary (of
`make faults` and of the whole suite alike) prints one row per scenario; the same table is written as Markdown
to `.orch/faults-report.md`."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import RABBITMQ_HOST, RABBITMQ_PORT, REDIS_FAULT_DB, REDIS_HOST, REDIS_PORT, require_service
from tests.faults.harness import REPO, Cluster, FaultRun, Figures, clean_broker, format_figures

REPORT_PATH = REPO / ".orch" / "faults-report.md"
# REDIS_FAULT_DB is not the other tiers' Redis database: their fixtures flush it, which would drop a running
# scenario's messages. Scenarios share it without flushing it: each run has queues of its own (FaultRun.config_dir).


@dataclass
class ScenarioRecord:
    nodeid: str
    scenario: str
    figures: Figures
    notes: list[str] = field(default_factory=list)


_records: dict[str, ScenarioRecord] = {}
_durations: dict[str, float] = {}
_outcomes: dict[str, str] = {}

RecordFigures = Callable[..., None]
MakeCluster = Callable[..., Cluster]


@pytest.fixture
def record_figures(request: pytest.FixtureRequest) -> RecordFigures:
    """`record_figures(scenario, figures, notes=())`: keep a scenario's figures for the summary table, and print
    its figures line."""

    def record(scenario: str, figures: Figures, notes: list[str] | tuple[str, ...] = ()) -> None:
        _records[request.node.nodeid] = ScenarioRecord(request.node.nodeid, scenario, dict(figures), list(notes))
        print(f"[{scenario}] {format_figures(figures)}")
        for note in notes:
            print(f"[{scenario}] note: {note}")

    return record


@pytest.fixture
def fault_redis_url() -> str:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_FAULT_DB}"


@pytest.fixture
def fault_rabbitmq_url() -> str:
    require_service("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT)
    return f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}//"


@pytest.fixture
def fault_run(tmp_path: Path) -> Iterator[FaultRun]:
    """A scenario's folder, marker and ledger; no process carrying the marker outlives the test."""
    run = FaultRun(tmp_path)
    try:
        yield run
    finally:
        run.kill_leftovers()


@pytest.fixture
def make_cluster(fault_run: FaultRun) -> Iterator[MakeCluster]:
    """`make_cluster(database_url, broker_url, **env)`: a Cluster stopped (with every agent) at teardown, and its
    queues removed from the broker."""
    clusters: list[Cluster] = []

    def make(database_url: str, broker_url: str, **extra_env: str) -> Cluster:
        cluster = Cluster(fault_run, database_url, broker_url, **extra_env)
        clusters.append(cluster)
        return cluster

    try:
        yield make
    finally:
        for cluster in reversed(clusters):
            cluster.stop()
            clean_broker(cluster.broker_url, fault_run)


@pytest.fixture
def pg_redis_cluster(postgres_url: str, fault_redis_url: str, make_cluster: MakeCluster) -> MakeCluster:
    """`pg_redis_cluster(**env)`: `make_cluster` on the PostgreSQL store and the fault suite's Redis broker."""
    return functools.partial(make_cluster, postgres_url, fault_redis_url)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _durations[report.nodeid] = _durations.get(report.nodeid, 0.0) + report.duration
    if report.when == "call" or report.outcome != "passed":
        previous = _outcomes.get(report.nodeid)
        if previous in (None, "passed"):
            _outcomes[report.nodeid] = "xfailed" if hasattr(report, "wasxfail") else report.outcome


def _rows() -> list[tuple[str, str, str, str]]:
    rows = []
    for nodeid, record in _records.items():
        rows.append(
            (
                record.scenario,
                _outcomes.get(nodeid, "?"),
                f"{_durations.get(nodeid, 0.0):.1f}s",
                format_figures(record.figures),
            )
        )
    return rows


def _notes() -> list[str]:
    """Each distinct note once, naming the scenarios that made it."""
    by_text: dict[str, list[str]] = {}
    for record in _records.values():
        for note in record.notes:
            by_text.setdefault(note, []).append(record.scenario)
    return [f"{text} ({'; '.join(scenarios)})" for text, scenarios in by_text.items()]


def markdown_report(started: float) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
    lines = [
        f"Fault suite, {stamp}:",
        "",
        "| scenario | result | time | figures |",
        "|---|---|---|---|",
    ]
    lines += [f"| {s} | {r} | {t} | {f.replace('|', '/').replace('  ', ' · ')} |" for s, r, t, f in _rows()]
    notes = [f"- {note}" for note in _notes()]
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _records:
        return
    rows = _rows()
    widths = [max(len(row[i]) for row in [("scenario", "result", "time", "figures"), *rows]) for i in range(3)]
    terminalreporter.section("fault suite: figures")
    header = ("scenario", "result", "time")
    terminalreporter.write_line("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + "  figures")
    for row in rows:
        cells = "  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True))
        terminalreporter.write_line(f"{cells}  {row[3]}")
    for note in _notes():
        terminalreporter.write_line(f"note: {note}")
    REPORT_PATH.parent.mkdir(parents=True, exist_ok=True)
    REPORT_PATH.write_text(markdown_report(time.time()))
    terminalreporter.write_line(f"(written to {REPORT_PATH.relative_to(REPO)})")
