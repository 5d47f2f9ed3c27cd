"""One error base class; every error a user can cause is a subclass whose message names the offender."""

from __future__ import annotations


class OrchError(Exception):
    """Base of every error orch raises on purpose. The CLI prints its message and exits with `exit_code`."""

    exit_code = 1


class UserError(OrchError):
    """Bad input: the CLI exits with 2 and nothing is written or enqueued."""

    exit_code = 2


class PlanInvalid(UserError):
    """A plan file failed validation; `problems` holds one line per problem."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(problems))


class ConfigInvalid(UserError):
    """A configuration file (e.g. config/agents.yaml) or setting is wrong."""


class PlanNotFound(UserError):
    """No plan has the id or name the user gave; the message names the store looked in (`store`, as
    orch.store.db.store_name says it), which may not be the one the user thinks."""

    def __init__(self, ref: str, store: str | None = None) -> None:
        super().__init__(f"no plan with id or name {ref!r}" + (f" in {store}" if store else ""))


class TaskNotFound(UserError):
    """A plan has no task with the id the user gave."""


class TaskStateConflict(UserError):
    """An operator command does not apply to the task or plan in its current state."""


class StoreMissing(UserError):
    """There is no store where the settings point (no SQLite file, a database without orch's schema), and the
    command may not create one: it names the place it looked."""


class ServiceUnavailable(OrchError):
    """A server orch needs (broker, database) is unreachable."""


class ExecutorUnavailable(OrchError):
    """A task needs an executor that this worker cannot run."""


class StoreUnusable(UserError):
    """The store answers but cannot be used as it is (full, read-only, corrupt): retrying will not help; the
    message names the store, the cause and what to do."""


class StoreFull(StoreUnusable):
    """The store's disk is full (SQLite SQLITE_FULL, PostgreSQL SQLSTATE 53100 disk_full)."""


class StoreReadOnly(StoreUnusable):
    """The store cannot be written: a read-only file or file system, a read-only PostgreSQL transaction."""


class StoreCorrupt(StoreUnusable):
    """The SQLite file is not a database, or a malformed one."""


class HomeUnusable(UserError):
    """ORCH_HOME (store, logs, the embedded Redis' log) cannot be written, or its disk is (nearly) full."""


class WorkerStopped(OrchError):
    """The worker `orch run` started exited, or told it why it stops (`notice`: e.g. its store is full), before the
    plan ended."""

    def __init__(self, message: str, notice: bool = False) -> None:
        self.notice = notice
        super().__init__(message)
