"""What the store's modules share: Core tables for the prebuilt statements, the database's clock as a SQL
expression, and the compare-and-set check. Every status change is a compare-and-set: UPDATE … WHERE pk AND status
IN (expected) [AND lease/attempt], then the affected rows are checked; a change that lost the race is a no-op."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import CursorResult, Table
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from orch.store.models import AgentPauseRow, AttemptRow, DependencyRow, PlanRow, TaskRow, UTCDateTime

# Core tables for the per-attempt statements: the store's modules build those once, at import, with bind parameters,
# so a worker's hot path neither constructs statements nor goes through the ORM's unit of work (each would cost
# more than the query).
TASKS = cast(Table, TaskRow.__table__)
ATTEMPTS = cast(Table, AttemptRow.__table__)
PLANS = cast(Table, PlanRow.__table__)
DEPENDENCIES = cast(Table, DependencyRow.__table__)
PAUSES = cast(Table, AgentPauseRow.__table__)


class DbClock(FunctionElement[datetime]):
    """The database's clock in UTC, `seconds` ahead: a worker's claim stamps its start and lease expiry with it in
    the same statement, instead of asking for the time first."""

    type = UTCDateTime()
    inherit_cache = True
    name = "db_clock"


@compiles(DbClock, "postgresql")
def _postgres_clock(element: DbClock, compiler: SQLCompiler, **kw: Any) -> str:
    return f"(clock_timestamp() AT TIME ZONE 'UTC') + make_interval(secs => {compiler.process(element.clauses, **kw)})"


@compiles(DbClock, "sqlite")
def _sqlite_clock(element: DbClock, compiler: SQLCompiler, **kw: Any) -> str:
    ahead = compiler.process(element.clauses, **kw)
    return f"strftime('%Y-%m-%d %H:%M:%f', 'now', ({ahead}) || ' seconds')"


ANALYZE_FROM_TASKS = 500  # a plan this large refreshes the planner's statistics when stored
_CHUNK = 2000  # IN-list size, well under SQLite's bound-parameter limit


def chunks(items: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def rowcount(result: Any) -> int:
    """Rows an UPDATE matched: how a compare-and-set tells it won."""
    return int(cast(CursorResult[Any], result).rowcount)


def no_sync() -> dict[str, Any]:
    return {"synchronize_session": False}
