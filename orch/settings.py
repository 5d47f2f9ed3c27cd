"""The one Settings object: every knob is an `ORCH_*` environment variable, or an entry of the env file an operator
named (`ORCH_ENV_FILE`, `orch --env-file`) or put in ORCH_HOME (`ORCH_HOME/.env`, read only when it is private to
its owner). A `.env` in whatever folder a command runs in is never read: a cloned repository could carry one."""

from __future__ import annotations

import difflib
import os
import stat
import sys
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orch.errors import ConfigInvalid
from orch.redaction import safe_url

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _repo_config_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "config"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORCH_", env_file=None, extra="ignore")

    home: Path = Field(Path(".orch"), description="State folder: embedded store, logs, embedded Redis")
    database_url: str | None = Field(None, description="SQLAlchemy URL; default sqlite:///<home>/orch.db")
    broker_url: str | None = Field(
        None, description="Celery broker; `orch run` starts an embedded Redis when unset, workers use Redis"
    )
    config_dir: Path = Field(default_factory=_repo_config_dir, description="Folder with agents.yaml")

    tick_seconds: float = Field(1.0, gt=0, description="Beat reconcile-and-dispatch period")
    redeliver_seconds: float = Field(
        300.0, gt=0, description="Re-send a queued task whose message has not started after this long"
    )
    heartbeat_seconds: float = Field(10.0, gt=0, description="A running attempt renews its lease this often")
    lease_seconds: float = Field(
        45.0, gt=0, description="A lease not renewed for this long is expired: the reaper calls its attempt lost"
    )
    shutdown_grace: float = Field(
        20.0, ge=0, description="On SIGTERM, running agents get this long before they are killed and re-queued"
    )
    store_retry_seconds: float = Field(
        600.0, ge=0, description="How long a worker keeps retrying the store when it is unreachable"
    )
    retry_backoff_base: float = Field(2.0, ge=0, description="First retry waits about this many seconds")
    retry_backoff_max: float = Field(600.0, ge=0, description="Cap of the exponential backoff")
    visibility_timeout: int = Field(
        90_000, gt=0, description="Redis visibility timeout; must exceed the longest task time limit"
    )
    output_tail_bytes: int = Field(8192, ge=0, description="Output kept in the store per attempt")
    log_max_bytes: int = Field(10 * 1024 * 1024, ge=0, description="Cap of one attempt's log file")
    kill_grace_seconds: float = Field(5.0, ge=0, description="SIGTERM to SIGKILL grace for an agent's group")
    claude_bin: str = Field("claude", description="The Claude Code CLI the claude-code executor runs")
    confirm_above: int = Field(
        5, ge=0, description="`orch plan --run` asks before running a plan of more tasks than this (--yes: never)"
    )
    followups_per_task: int = Field(20, ge=0, le=10_000, description="Follow-up tasks one attempt may add")
    followups_depth: int = Field(3, ge=0, le=100, description="How deep follow-ups of follow-ups may go")
    followups_total: int = Field(200, ge=0, le=100_000, description="Follow-up tasks one plan may gain in all")
    task_events: bool = Field(True, description="Send Celery task events (Flower, celery-exporter)")
    embedded_concurrency: int = Field(4, ge=1, description="Worker processes `orch run` starts")
    beat_plans: str = Field(
        "", description="Comma-separated plan ids the beat limits itself to (`orch run` sets it); empty: all"
    )
    liveness_file: Path | None = Field(
        None,
        description="Workers and the beat touch this file from their main loop (a liveness probe checks its age); "
        "unset: off",
    )
    liveness_seconds: float = Field(5.0, gt=0, description="How often the liveness file is touched")
    exporter_host: str = Field("127.0.0.1", description="Address `orch exporter` listens on")
    exporter_port: int = Field(9808, ge=0, le=65535, description="Port `orch exporter` listens on (0: any free port)")
    exporter_recent_plans: int = Field(
        20, ge=0, le=1000, description="Finished plans (the most recent) whose tasks the exporter labels by plan"
    )
    log_format: str = Field("json", pattern="^(console|json)$", description="Log lines as JSON or console text")
    log_level: str = Field("INFO", description="Level of orch's own log lines")
    flower_auth: SecretStr | None = Field(
        None, description="Flower's basic auth: user:password, several separated by commas"
    )
    flower_allow_no_auth: bool = Field(False, description="Let Flower start without auth (it prints a warning)")
    sandbox: Literal["auto", "bwrap", "none"] = Field(
        "auto",
        description="How agents are isolated: bwrap (bubblewrap), none (an explicit opt-out, warned about), or auto "
        "(bwrap wherever it works on this host, else none with a warning)",
    )
    agent_user: str = Field(
        "orch-agent",
        min_length=1,
        description="The unprivileged user agents run as when the worker runs as root",
    )
    sandbox_read: str = Field(
        "",
        description="Folders (separated by ':') agents may also read inside the sandbox, where it would hide them "
        "(tools installed in a home folder or under /tmp)",
    )
    workdir_roots: str = Field(
        "",
        description="Folders (separated by ':') every plan's workdir must resolve inside; empty: the plan file's "
        "folder for `orch run`/`submit`, and no check on workers",
    )

    worktree_root: Path | None = Field(
        None,
        description="Where workers make each attempt's git worktree (<root>/<plan>/<task>/<attempt>); "
        "default <home>/worktrees",
    )
    worktree_max_gb: float | None = Field(
        None, gt=0, description="Disk a worker's worktrees may take; past it, it holds new worktree attempts"
    )
    git_author_name: str = Field("orch", min_length=1, description="Name on the commits orch makes")
    git_author_email: str = Field("orch@localhost", min_length=1, description="Email on the commits orch makes")
    git_credentials: Path | None = Field(
        None,
        description="A git-credentials file (https://user:token@host a line, mode 0600) for https repositories; "
        "its tokens reach git through a credential helper's environment, never argv",
    )
    merge_lease_seconds: float = Field(
        600.0, gt=0, description="A merge lock not renewed for this long is free: another merger redoes the merge"
    )

    @field_validator("claude_bin")
    @classmethod
    def _claude_bin_is_absolute_or_on_path(cls, value: str) -> str:
        # A relative path would be looked up in whatever folder the worker runs in, which a repository controls.
        if "/" in value and not value.startswith("/"):
            raise ValueError(f"ORCH_CLAUDE_BIN={value!r}: give an absolute path, or a bare name looked up on PATH")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url_names_a_known_database(cls, value: str | None) -> str | None:
        # Checked here, not at the first query: a typo would otherwise be SQLAlchemy's traceback. Only the scheme is
        # named in the message: the rest of the URL may hold a password.
        if value is None:
            return None
        scheme, separator, _ = value.partition("://")
        if not separator or not scheme or not scheme.replace("+", "").isalnum():
            raise ValueError("not a database URL (postgresql://user@host/name or sqlite:///path)")
        if scheme not in DATABASE_SCHEMES:
            raise ValueError(f"unknown database {scheme!r} (known: {', '.join(DATABASE_SCHEMES)})")
        _check_url_parses(value)
        return value

    @field_validator("broker_url")
    @classmethod
    def _broker_url_names_a_known_transport(cls, value: str | None) -> str | None:
        # Checked here: a typo would otherwise be kombu's KeyError, or a ValueError traceback at the first
        # connection. Each URL of a failover list (`;`) is checked; only the scheme is named, or the URL masked.
        if value is None:
            return None
        for url in value.split(";"):
            scheme, separator, _ = url.strip().partition("://")
            if not separator or not scheme or not scheme.replace("+", "").isalnum():
                raise ValueError("not a broker URL (redis://host:6379/0 or amqp://…)")
            transport = scheme.partition("+")[0]  # kombu's transport+url form: sqla+postgresql://, redis+socket://
            known = broker_transports()
            if transport not in known:
                close = difflib.get_close_matches(transport.lower(), known, n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                shown = ", ".join(name for name in known if name.islower())
                raise ValueError(f"unknown broker transport {transport!r} ({hint}known: {shown})")
            _check_url_parses(url.strip())
        return value

    @model_validator(mode="after")
    def _lease_outlives_heartbeats(self) -> Settings:
        if self.lease_seconds < 2 * self.heartbeat_seconds:
            raise ValueError(
                f"ORCH_LEASE_SECONDS ({self.lease_seconds:g}) must be at least twice "
                f"ORCH_HEARTBEAT_SECONDS ({self.heartbeat_seconds:g}), or one late heartbeat loses the lease"
            )
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return normalise_database_url(self.database_url)
        return f"sqlite:///{(self.home / 'orch.db').resolve()}"

    @property
    def resolved_broker_url(self) -> str:
        return self.broker_url or DEFAULT_REDIS_URL

    @property
    def beat_plan_ids(self) -> list[str]:
        return [p.strip() for p in self.beat_plans.split(",") if p.strip()]

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def resolved_worktree_root(self) -> Path:
        return (self.worktree_root or self.home / "worktrees").resolve()

    @property
    def git_cache_dir(self) -> Path:
        """Each repository's cache clone on this host (orch's own: agents never write it)."""
        return (self.home / "git").resolve()

    @property
    def git_author(self) -> tuple[str, str]:
        return self.git_author_name, self.git_author_email

    @property
    def sandbox_read_paths(self) -> list[Path]:
        return [Path(p).resolve() for p in self.sandbox_read.split(":") if p.strip()]

    @property
    def workdir_root_paths(self) -> list[Path]:
        return [Path(p).resolve() for p in self.workdir_roots.split(":") if p.strip()]


# The store's URL schemes orch ships a driver for (psycopg 3 for PostgreSQL, the standard library's sqlite3).
DATABASE_SCHEMES = ("postgresql", "postgres", "postgresql+psycopg", "sqlite", "sqlite+pysqlite")


def normalise_database_url(url: str) -> str:
    """Point bare `postgresql://` URLs at the psycopg 3 driver we ship, and a relative SQLite path at the file it
    names from here (the worker `orch run` starts runs in another folder)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite") and ":///" in url:
        scheme, _, rest = url.partition(":///")
        path, question, query = rest.partition("?")
        if path and path != ":memory:" and not path.startswith("/"):
            return f"{scheme}:///{Path(path).resolve()}{question}{query}"
    return url


def broker_transports() -> list[str]:
    """The broker URL schemes Celery can use: kombu's transport aliases (kombu is imported only when a broker URL
    is set, to check it)."""
    from kombu.transport import TRANSPORT_ALIASES  # lazy (start-up cost): 60 ms that `orch validate` need not pay

    return sorted(TRANSPORT_ALIASES)


def _check_url_parses(url: str) -> None:
    """Raise ValueError, naming the URL (its password masked) and what is wrong, when a driver would fail to parse
    it: an IPv6 address without its bracket, a port that is not a number from 0 to 65535."""
    why = None
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        why = str(exc)
    else:
        try:
            parts.port  # noqa: B018 (parsed on access)
        except ValueError:
            host = parts.netloc.rpartition("@")[2]
            _, bracket, after = host.partition("]")
            port = (after if bracket else host).partition(":")[2]
            why = f"its port {port} is not in 0-65535" if port.isdigit() else f"its port {port!r} is not a number"
    if why is not None:
        raise ValueError(f"cannot parse {safe_url(url)!r}: {why}")


ENV_FILE_VARIABLE = "ORCH_ENV_FILE"


def operator_env_file(environ: os._Environ[str] | dict[str, str] | None = None) -> Path | None:
    """The env file an operator chose: ORCH_ENV_FILE (it must exist), else ORCH_HOME/.env when that file is the
    current user's and nobody else's to read (as an operator would keep a file of secrets; a repository checked
    out by git never is). Never a `.env` of the current folder."""
    environ = os.environ if environ is None else environ
    explicit = environ.get(ENV_FILE_VARIABLE)
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigInvalid(f"{ENV_FILE_VARIABLE}={explicit}: no such file")
        return path
    candidate = Path(environ.get("ORCH_HOME") or ".orch") / ".env"
    try:
        info = candidate.stat()
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        print(
            f"orch: ignoring {candidate}: it is readable or writable by others, or not yours "
            f"(chmod 600 it, or name it with {ENV_FILE_VARIABLE})",
            file=sys.stderr,
        )
        return None
    return candidate


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    try:
        return Settings(_env_file=operator_env_file())
    except ValueError as exc:  # pydantic's ValidationError: name the setting and why, in one line
        raise ConfigInvalid(_settings_error(exc)) from None


def _settings_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    first = errors(include_url=False)[0]
    name = "ORCH_" + "_".join(str(part) for part in first["loc"]).upper() if first["loc"] else "settings"
    message = str(first["msg"]).removeprefix("Value error, ")
    return message if message.startswith("ORCH_") else f"{name}: {message}"
