"""The beats' record in the store (orch.store.services): each tick stamps its beat's row, one row per beat process,
read back newest first with its plan scope."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from orch.store import services
from orch.store.db import write_session

T0 = datetime(2026, 12, 3, 22, 0, tzinfo=UTC)


def test_each_tick_stamps_its_beat_and_a_new_beat_gets_a_row(store_url: str) -> None:
    with write_session() as session:
        services.record_beat_tick(session, "h1", 10, [], T0, T0)
    with write_session() as session:
        services.record_beat_tick(session, "h1", 10, [], T0, T0 + timedelta(seconds=5))
        services.record_beat_tick(session, "h2", 11, ["p1", "p2"], T0, T0 + timedelta(seconds=3))
    with write_session() as session:
        seen = services.beats(session)
    assert [(b.host, b.pid, b.plans, b.last_tick_at) for b in seen] == [
        ("h1", 10, (), T0 + timedelta(seconds=5)),
        ("h2", 11, ("p1", "p2"), T0 + timedelta(seconds=3)),
    ]


def test_a_beat_silent_for_a_week_is_forgotten_when_another_starts(store_url: str) -> None:
    with write_session() as session:
        services.record_beat_tick(session, "old", 1, [], T0, T0)
    later = T0 + services.FORGET_AFTER + timedelta(minutes=1)
    with write_session() as session:
        services.record_beat_tick(session, "new", 2, [], later, later)
    with write_session() as session:
        assert [b.host for b in services.beats(session)] == ["new"]
