"""Which commands may create the store. `orch run`, `orch submit` and `orch db upgrade` may (the SQLite file, in a
folder that exists, or ORCH_HOME's); every other command only opens a store that is there, and says where it
looked when it is not (orch.store.db reads this). Its own module, free of SQLAlchemy: the CLI's group sets it for
every command."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

_may_create: ContextVar[bool] = ContextVar("orch_may_create_store", default=True)


def may_create_store() -> bool:
    return _may_create.get()


@contextmanager
def existing_store_only() -> Iterator[None]:
    """Within it, opening a store that does not exist (no SQLite file, a database without orch's schema) raises
    StoreMissing instead of creating it."""
    token = _may_create.set(False)
    try:
        yield
    finally:
        _may_create.reset(token)
