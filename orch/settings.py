"""The one Settings object: every knob is an `ORCH_*` environment variable (or a `.env` entry)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def _repo_config_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "config"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORCH_", env_file=".env", extra="ignore")

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


def normalise_database_url(url: str) -> str:
    """Point bare `postgresql://` URLs at the psycopg 3 driver we ship."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
