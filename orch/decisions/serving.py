"""Whether a beat serves a store (or a plan in it): the beats' last ticks, as the store records them, against a
bound drawn from the tick interval. `orch check`, `status` and `submit` say what this decides.

A beat limited to some plans (the one `orch run` starts, ORCH_BEAT_PLANS) serves those plans only; a deployment's
beat serves every plan."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

# A beat that has not ticked for this many tick intervals (and at least SILENCE_FLOOR seconds: a tick of a large
# plan can take a while) is no longer counted as serving the store.
SILENCE_TICKS = 10
SILENCE_FLOOR = 30.0

TROUBLESHOOTING = "see docs/troubleshooting.md"


@dataclass(frozen=True)
class BeatSeen:
    """A beat as the store last saw it."""

    host: str
    pid: int
    plans: tuple[str, ...]  # the plans it is limited to; empty: every plan
    started_at: datetime
    last_tick_at: datetime

    def serves(self, plan_id: str | None) -> bool:
        """Whether it serves `plan_id` (None: every plan, as a deployment's beat does)."""
        if not self.plans:
            return True
        return plan_id is not None and plan_id in self.plans

    def describe(self) -> str:
        count = len(self.plans)
        scope = "" if not count else f", limited to the {count} plan{'' if count == 1 else 's'} of its orch run"
        return f"pid {self.pid} on {self.host}{scope}"


def coarse_duration(seconds: float) -> str:
    """A wait as a person reads it at a glance: 42s, 3m, 2h05m."""
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def silence_bound(tick_seconds: float) -> float:
    """How long a beat may go without a tick before it no longer counts as serving the store."""
    return max(SILENCE_FLOOR, SILENCE_TICKS * tick_seconds)


@dataclass(frozen=True)
class Serving:
    """Whether a beat serves the store (or a plan): the one that ticked last among those that would, if any."""

    beat: BeatSeen | None  # the latest beat that would serve it, however long ago it ticked
    alive: bool  # that beat ticked within the bound
    now: datetime

    @property
    def age(self) -> float | None:
        return None if self.beat is None else max(0.0, (self.now - self.beat.last_tick_at).total_seconds())

    def describe(self) -> str:
        """`beat pid 12 on host-a ticked 1s ago`, or why none serves it."""
        if self.beat is None:
            return "no beat has ever ticked this store"
        ago = coarse_duration(self.age or 0.0)
        if self.alive:
            return f"beat {self.beat.describe()} ticked {ago} ago"
        return f"no beat has ticked this store since {self.beat.last_tick_at:%Y-%m-%d %H:%M:%S} UTC ({ago} ago)"


def serving(beats: Iterable[BeatSeen], plan_id: str | None, now: datetime, bound: float) -> Serving:
    """Which beat serves `plan_id` (None: the whole store, which only an unlimited beat serves)."""
    candidates = [beat for beat in beats if beat.serves(plan_id)]
    if not candidates:
        return Serving(None, False, now)
    latest = max(candidates, key=lambda beat: beat.last_tick_at)
    return Serving(latest, (now - latest.last_tick_at).total_seconds() <= bound, now)
