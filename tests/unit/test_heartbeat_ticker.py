"""The process's one heartbeat thread: every registered heartbeat beats on its own interval, and once its `with`
block has exited no beat of it runs (nor is still running)."""

from __future__ import annotations

import threading
import time

from orch.records import Claim
from tests.helpers import wait_for
from workers.control import AttemptControl
from workers.heartbeat import Heartbeat


class CountingHeartbeat(Heartbeat):
    def __init__(self, key: str, interval: float, hold: threading.Event | None = None) -> None:
        claim = Claim(1, "plan", key, 1, "lease", 0, "general-purpose")
        super().__init__(claim, AttemptControl(), interval, 10 * interval, lambda _usage, _model: None, "sqlite://")
        self.hold = hold
        self.started = threading.Event()
        self.finished_beats = 0

    def beat(self) -> bool | None:
        self.started.set()
        if self.hold is not None:
            self.hold.wait(5)
        self.finished_beats += 1
        return True


def test_two_heartbeats_beat_on_their_own_intervals_on_one_thread() -> None:
    fast, slow = CountingHeartbeat("fast", 0.02), CountingHeartbeat("slow", 0.2)
    threads_before = threading.active_count()
    with fast, slow:
        wait_for(lambda: fast.finished_beats >= 10, 5, "ten beats of the fast heartbeat")
        assert threading.active_count() <= threads_before + 1
    assert 0 <= slow.finished_beats < fast.finished_beats
    stopped = fast.finished_beats
    window_ends = time.monotonic() + 0.1  # five of its intervals: no beat may come after the block
    wait_for(lambda: fast.finished_beats != stopped or time.monotonic() > window_ends, 1, "the quiet window")
    assert fast.finished_beats == stopped


def test_leaving_the_block_waits_for_a_beat_in_progress() -> None:
    hold = threading.Event()
    heartbeat = CountingHeartbeat("held", 0.01, hold)
    left = threading.Event()

    def run() -> None:
        with heartbeat:
            heartbeat.started.wait(5)
        left.set()

    runner = threading.Thread(target=run)
    runner.start()
    assert heartbeat.started.wait(5)
    assert not left.wait(0.1)  # its beat is still writing: the block may not end yet
    hold.set()
    assert left.wait(5)
    runner.join(5)
    assert heartbeat.finished_beats == 1


def test_a_failing_beat_does_not_stop_the_others() -> None:
    class Broken(CountingHeartbeat):
        def beat(self) -> bool | None:
            raise RuntimeError("boom")

    healthy = CountingHeartbeat("healthy", 0.02)
    with Broken("broken", 0.01), healthy:
        wait_for(lambda: healthy.finished_beats >= 3, 5, "beats after a failing one")
