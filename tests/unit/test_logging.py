"""orch's logging: orch's and foreign (stdlib: Celery, kombu, Flower) lines through one handler, JSON or console,
with the bound attempt ids, and no secret: configured values, URL passwords, API keys, credential fields."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from orch import log as orch_log
from orch.redaction import error_line, process_redactor, redact_log_text, safe_url, settings_secrets, url_password
from orch.settings import Settings, get_settings

DB_PASSWORD = "db-pass-0d9c2e71"
BROKER_PASSWORD = "broker-pass-57ab"
API_KEY = "sk-ant-unit-4f1e9b2c7d3a"


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """orch's logging configured onto a buffer, with secrets in the settings; undone afterwards."""
    monkeypatch.setenv("ORCH_DATABASE_URL", f"postgresql://orch:{DB_PASSWORD}@db.internal/orch")
    monkeypatch.setenv("ORCH_BROKER_URL", f"redis://:{BROKER_PASSWORD}@redis.internal:6379/0")
    monkeypatch.setenv("ORCH_FLOWER_AUTH", "ops:flower-pass-93ab11,viewer:flower-view-77c2d0")
    monkeypatch.setenv("ANTHROPIC_API_KEY", API_KEY)
    get_settings.cache_clear()
    process_redactor.cache_clear()
    root = logging.getLogger()
    level = root.level
    buffer = io.StringIO()
    try:
        yield buffer
    finally:
        for handler in [h for h in root.handlers if h.name == orch_log.HANDLER_NAME]:
            root.removeHandler(handler)
        root.setLevel(level)
        orch_log.forget_attempt()
        orch_log._configure_standalone()
        process_redactor.cache_clear()
        get_settings.cache_clear()


def lines(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def test_orch_and_foreign_lines_are_json_with_the_attempt_ids(captured: io.StringIO) -> None:
    orch_log.configure_logging("json", "INFO", root_level="INFO", stream=captured)
    orch_log.bind_attempt(plan_id="p-1", task="build", attempt=2)
    orch_log.get_logger("workers.runner").info("attempt started", executor="shell")
    logging.getLogger("celery.app.trace").info("Task %s succeeded", "orch.run_task[p-1.build.2]")
    orch_log.forget_attempt()
    logging.getLogger("celery.worker.strategy").info("Task received")

    started, succeeded, received = lines(captured)
    for entry in (started, succeeded):
        assert (entry["plan_id"], entry["task"], entry["attempt"]) == ("p-1", "build", 2), entry
    assert started["logger"] == "workers.runner" and started["executor"] == "shell"
    assert succeeded == {**succeeded, "event": "Task orch.run_task[p-1.build.2] succeeded", "level": "info"}
    assert "plan_id" not in received and received["logger"] == "celery.worker.strategy"


def test_orch_lines_keep_orch_s_level_whatever_the_host_s(captured: io.StringIO) -> None:
    orch_log.configure_logging("json", "DEBUG", root_level="WARNING", stream=captured)
    orch_log.get_logger("orch.dispatch.reconcile").debug("dispatched")
    logging.getLogger("kombu").info("chatter below Celery's --loglevel")
    assert [entry["event"] for entry in lines(captured)] == ["dispatched"]


def test_no_secret_reaches_a_line_from_either_side(captured: io.StringIO) -> None:
    orch_log.configure_logging("json", "INFO", root_level="INFO", stream=captured)
    url = f"postgresql://orch:{DB_PASSWORD}@db.internal/orch"
    logger = orch_log.get_logger("orch.test")
    logger.warning("store unreachable", error=f"cannot reach {url}", url=url, password="hunter2-long", api_key="x")
    logger.info("the agent said", text=f"key {API_KEY} and flower-view-77c2d0")
    logging.getLogger("kombu.connection").error("Cannot connect to redis://:%s@redis.internal:6379/0", BROKER_PASSWORD)
    logging.getLogger("some.library").warning("retrying with password=%s", "l1brary-pass")
    logging.getLogger("httpx").info("sent Authorization: Bearer tok-abcdef123456 to http://u:short@host/x")
    try:
        raise RuntimeError(f"connect {url} failed")
    except RuntimeError:
        logging.getLogger("celery.worker").exception("task raised")
        logger.exception("executor raised")

    text = captured.getvalue()
    for secret in (DB_PASSWORD, BROKER_PASSWORD, API_KEY, "flower-view-77c2d0", "hunter2-long", "l1brary-pass"):
        assert secret not in text, secret
    assert "tok-abcdef123456" not in text and "u:short@" not in text
    entries = lines(captured)
    assert len(entries) == 7
    assert entries[0]["password"] == "[redacted]" and entries[0]["api_key"] == "[redacted]"
    assert "[redacted ORCH_DATABASE_URL]" in entries[0]["error"]
    assert "key [redacted ANTHROPIC_API_KEY] and [redacted ORCH_FLOWER_AUTH password #2]" in entries[1]["text"]
    assert "RuntimeError: connect postgresql://orch:[redacted ORCH_DATABASE_URL]@db" in entries[5]["exception"]
    assert "RuntimeError" in entries[6]["exception"]


def test_console_format_renders_the_same_fields(captured: io.StringIO) -> None:
    orch_log.configure_logging("console", "INFO", root_level="INFO", stream=captured)
    with orch_log.attempt_context("p-2", "docs", 1):
        orch_log.get_logger("workers.runner").info("attempt finished", status="succeeded")
    (line,) = captured.getvalue().splitlines()
    assert "attempt finished" in line and "plan_id=p-2" in line and "task=docs" in line and "attempt=1" in line


def test_configuring_twice_keeps_one_handler(captured: io.StringIO) -> None:
    orch_log.configure_logging("json", "INFO", stream=captured)
    orch_log.configure_logging("json", "INFO", stream=captured)
    assert [h.name for h in logging.getLogger().handlers].count(orch_log.HANDLER_NAME) == 1


def test_redact_log_text_masks_credentials_by_shape() -> None:
    assert redact_log_text("amqp://user:pa55word@rabbit:5672//") == "amqp://user:***@rabbit:5672//"
    assert redact_log_text("redis://:**@host/0") == "redis://:**@host/0"  # already masked by Celery
    assert redact_log_text("http://host:8080/path@x") == "http://host:8080/path@x"  # a port is not a password
    assert redact_log_text("x-api-key: abc123secret") == "x-api-key: [redacted]"
    assert redact_log_text("used sk-abcdefghijklmnopqrstuvwx") == "used [redacted api key]"
    assert redact_log_text("tokens=1234 input_tokens: 5") == "tokens=1234 input_tokens: 5"


def test_settings_secrets_name_orch_s_own_passwords() -> None:
    settings = Settings(
        database_url="postgresql://orch:pg-secret-1@db/orch",
        broker_url="amqp://orch:mq-secret-22@rabbit//",
        flower_auth="ops:fl-secret-333",
    )
    found = settings_secrets(settings)
    assert found["ORCH_DATABASE_URL"] == "pg-secret-1" and found["ORCH_BROKER_URL"] == "mq-secret-22"
    assert found["ORCH_FLOWER_AUTH password #1"] == "fl-secret-333"
    assert settings_secrets(Settings()) == {}
    assert "fl-secret-333" not in repr(settings)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://orch:pw-4c1d9e@db.internal/orch", "postgresql+psycopg://orch:***@db.internal/orch"),
        ("redis://:pw-4c1d9e@redis.internal:6379/0", "redis://:***@redis.internal:6379/0"),
        (
            "rediss://orch:pw-4c1d9e@redis.internal/1?ssl_cert_reqs=required",
            "rediss://orch:***@redis.internal/1?ssl_cert_reqs=required",
        ),
        ("amqp://orch:pw-4c1d9e@rabbit:5672//", "amqp://orch:***@rabbit:5672//"),
        (
            "sentinel://:pw-4c1d9e@s1:26379;sentinel://:pw-4c1d9e@s2:26379",
            "sentinel://:***@s1:26379;sentinel://:***@s2:26379",
        ),
        ("redis://redis.internal:6379/0", "redis://redis.internal:6379/0"),
        ("sqlite:////var/lib/orch/orch.db", "sqlite:////var/lib/orch/orch.db"),
        ("redis://redis.internal:6379/0?password=pw-4c1d9e", "redis://redis.internal:6379/0?password=[redacted]"),
    ],
)
def test_safe_url_masks_the_password_of_database_and_broker_urls(url: str, shown: str) -> None:
    assert safe_url(url) == shown
    assert url_password(url) in (None, "pw-4c1d9e")


@pytest.mark.parametrize("url", ["", "not a url", "://", "redis://:pw-4c1d9e@host:port/0", "amqp://orch:pw-4c1d9e@"])
def test_safe_url_never_raises_and_never_shows_a_password(url: str) -> None:
    assert "pw-4c1d9e" not in safe_url(url)


def test_error_line_is_one_line_with_credentials_masked() -> None:
    error = RuntimeError("connection to postgresql://orch:pw-4c1d9e@db/orch failed\ndetail: more")
    assert error_line(error) == "RuntimeError: connection to postgresql://orch:***@db/orch failed"
