"""`orch check`'s verdict on consumers, from the queued counts and the workers' `active_queues` replies."""

from __future__ import annotations

from orch.services.check import Check, check_consumers, queue_readers, render

REPLIES = {
    "alpha@h1": [{"name": "agent.backend-development"}, {"name": "agent.testing-specialist"}],
    "beta@h2": [{"name": "agent.backend-development"}],
}


def test_queue_readers_lists_the_workers_of_each_queue() -> None:
    assert queue_readers(REPLIES) == {
        "agent.backend-development": ["alpha@h1", "beta@h2"],
        "agent.testing-specialist": ["alpha@h1"],
    }
    assert queue_readers(None) == {}


def test_a_queue_with_queued_tasks_and_no_reader_is_named() -> None:
    checks = check_consumers({"agent.backend-development": 3, "agent.documentation-writer": 2}, queue_readers(REPLIES))
    assert checks == [
        Check("queue agent.backend-development", True, "3 queued; read by alpha@h1, beta@h2"),
        Check("queue agent.documentation-writer", False, "2 queued; no worker reads this queue"),
    ]


def test_nothing_queued_is_fine_with_a_worker() -> None:
    assert check_consumers({}, queue_readers(REPLIES)) == [
        Check("consumers", True, "no queued tasks; 2 workers answered: alpha@h1, beta@h2")
    ]


def test_no_worker_at_all_is_a_failure_even_with_nothing_queued() -> None:
    # issue 14, point 2: `orch check` said all was well with no worker at all
    (check,) = check_consumers({}, {})
    assert not check.ok and check.name == "consumers"
    assert check.detail.startswith("no worker answered: nothing reads any queue")
    queued = check_consumers({"agent.x": 1}, {})
    assert [c.ok for c in queued] == [False, False] and queued[1].name == "queue agent.x"


def test_render_aligns_verdicts_and_names() -> None:
    lines = render([Check("store", True, "reachable"), Check("queue agent.x", False, "1 queued; no worker")])
    assert lines == ["ok    store          reachable", "FAIL  queue agent.x  1 queued; no worker"]
