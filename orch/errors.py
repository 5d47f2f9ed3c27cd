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
    """No plan has the id or name the user gave."""

    def __init__(self, ref: str) -> None:
        super().__init__(f"no plan with id or name {ref!r}")


class TaskNotFound(UserError):
    """A plan has no task with the id the user gave."""


class TaskStateConflict(UserError):
    """An operator command does not apply to the task or plan in its current state."""


class ServiceUnavailable(OrchError):
    """A server orch needs (broker, database) is unreachable."""


class ExecutorUnavailable(OrchError):
    """A task needs an executor that this worker cannot run."""
