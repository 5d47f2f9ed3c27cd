"""Reading the exporter's output as Prometheus does (prometheus_client's parser), and the figures it must match,
counted in Python from the store's rows (independent of the exporter's SQL)."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from orch.states import AttemptStatus
from orch.store.db import read_session
from orch.store.models import AttemptRow, TaskRow

Labels = frozenset[tuple[str, str]]
Samples = dict[tuple[str, Labels], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, metric: str, **labels: str) -> float | None:
    return samples.get((metric, frozenset(labels.items())))


def matching(samples: Samples, metric: str) -> dict[Labels, float]:
    return {labels: v for (sample, labels), v in samples.items() if sample == metric}


def by(samples: Samples, metric: str, *names: str) -> dict[tuple[str, ...], float]:
    """A metric's samples keyed by the values of the labels `names`."""
    return {tuple(dict(labels)[n] for n in names): v for labels, v in matching(samples, metric).items()}


def attempt_figures() -> dict[str, Counter[Any]]:
    figures: dict[str, Counter[Any]] = {k: Counter() for k in ("started", "finished", "failures", "queued", "tokens")}
    with read_session() as session:
        rows = session.execute(select(AttemptRow, TaskRow.agent).join(TaskRow, TaskRow.pk == AttemptRow.task_pk))
        for attempt, agent in rows:
            figures["started"][(agent,)] += 1
            if attempt.status is not AttemptStatus.RUNNING:
                figures["finished"][(agent, attempt.status.value)] += 1
                if attempt.failure_class:
                    figures["failures"][(agent, attempt.failure_class)] += 1
            if attempt.queued_at is not None:
                figures["queued"][(agent,)] += 1
            figures["tokens"][(agent, "input")] += attempt.input_tokens
    return figures


def assert_attempts_match_store(samples: Samples) -> None:
    figures = attempt_figures()
    assert by(samples, "orch_attempts_started_total", "agent_type") == dict(figures["started"])
    assert by(samples, "orch_attempts_finished_total", "agent_type", "status") == dict(figures["finished"])
    assert by(samples, "orch_attempt_failures_total", "agent_type", "failure_class") == dict(figures["failures"])
    assert by(samples, "orch_attempt_duration_seconds_count", "agent_type", "status") == dict(figures["finished"])
    assert by(samples, "orch_attempt_start_latency_seconds_count", "agent_type") == dict(figures["queued"])
    for (agent, status), count in figures["finished"].items():
        inf = value(samples, "orch_attempt_duration_seconds_bucket", agent_type=agent, status=status, le="+Inf")
        assert inf == count
    tokens = by(samples, "orch_tokens_total", "agent_type", "kind")
    assert {key: v for key, v in tokens.items() if key[1] == "input"} == dict(figures["tokens"])


@contextmanager
def silent_server() -> Iterator[int]:
    """A port on 127.0.0.1 that accepts connections (the kernel's backlog does) and never answers: a server that
    hangs, as a frozen broker or database does."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield int(sock.getsockname()[1])
