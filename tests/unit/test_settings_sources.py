"""Where settings come from: the environment, and an env file an operator chose (ORCH_ENV_FILE, `orch --env-file`,
or ORCH_HOME/.env when it is private), never a `.env` in the folder a command runs in (a cloned repository could
carry one: the review's finding 12 set ORCH_CLAUDE_BIN to the repository's own script)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from orch.errors import ConfigInvalid
from orch.settings import Settings, get_settings, operator_env_file

HOSTILE_DOT_ENV = "ORCH_CLAUDE_BIN=/tmp/repo/tools/claude\nORCH_TICK_SECONDS=7\nORCH_SANDBOX=none\n"


def settings_in(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.chdir(folder)
    get_settings.cache_clear()
    return get_settings()


def test_a_dot_env_in_the_current_folder_is_never_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".env").write_text(HOSTILE_DOT_ENV)
    settings = settings_in(tmp_path, monkeypatch)
    assert settings.claude_bin == "claude" and settings.tick_seconds == 1.0 and settings.sandbox == "auto"


def test_orch_env_file_is_read_and_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = tmp_path / "orch.env"
    chosen.write_text("ORCH_TICK_SECONDS=3\n")
    monkeypatch.setenv("ORCH_ENV_FILE", str(chosen))
    assert settings_in(tmp_path, monkeypatch).tick_seconds == 3.0
    monkeypatch.setenv("ORCH_ENV_FILE", str(tmp_path / "missing.env"))
    with pytest.raises(ConfigInvalid, match=r"ORCH_ENV_FILE=.*missing\.env: no such file"):
        settings_in(tmp_path, monkeypatch)


def test_orch_home_dot_env_is_read_only_when_it_is_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("ORCH_HOME", str(home))
    (home / ".env").write_text("ORCH_TICK_SECONDS=9\n")
    (home / ".env").chmod(0o644)  # as a checkout leaves a file: readable by others
    assert settings_in(tmp_path, monkeypatch).tick_seconds == 1.0
    assert "ignoring" in capsys.readouterr().err
    (home / ".env").chmod(0o600)
    assert settings_in(tmp_path, monkeypatch).tick_seconds == 9.0
    assert operator_env_file({"ORCH_HOME": str(home)}) == home / ".env"


def test_a_relative_claude_bin_is_refused_naming_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_CLAUDE_BIN", "./tools/claude")
    with pytest.raises(ConfigInvalid, match=r"ORCH_CLAUDE_BIN='./tools/claude': give an absolute path"):
        settings_in(tmp_path, monkeypatch)
    monkeypatch.setenv("ORCH_CLAUDE_BIN", "/opt/claude/bin/claude")
    assert settings_in(tmp_path, monkeypatch).claude_bin == "/opt/claude/bin/claude"


def test_orch_env_file_option_reaches_the_command(tmp_path: Path) -> None:
    chosen = tmp_path / "orch.env"
    chosen.write_text("ORCH_CLAUDE_BIN=./relative/claude\n")
    (tmp_path / ".env").write_text(HOSTILE_DOT_ENV)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    orch = [sys.executable, "-m", "orch.cli"]
    ignored = subprocess.run([*orch, "agents"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert ignored.returncode == 0, ignored.stderr  # the folder's .env: not read
    chosen_run = subprocess.run(
        [*orch, "--env-file", str(chosen), "agents"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert chosen_run.returncode == 2  # the chosen file is read: its bad setting is one line, exit 2
    assert chosen_run.stderr.strip() == (
        "orch: ORCH_CLAUDE_BIN='./relative/claude': give an absolute path, or a bare name looked up on PATH"
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgressql://orch:pw-3f9a@db/orch",
            "ORCH_DATABASE_URL: unknown database 'postgressql' (known: postgresql, postgres, postgresql+psycopg, "
            "sqlite, sqlite+pysqlite)",
        ),
        ("not a url", "ORCH_DATABASE_URL: not a database URL (postgresql://user@host/name or sqlite:///path)"),
    ],
)
def test_a_typo_in_the_database_url_is_one_line_naming_it(
    url: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a 40-line SQLAlchemy traceback at the first query. The password never shows."""
    monkeypatch.setenv("ORCH_DATABASE_URL", url)
    with pytest.raises(ConfigInvalid) as raised:
        settings_in(tmp_path, monkeypatch)
    assert str(raised.value) == expected and "pw-3f9a" not in str(raised.value)
    env = {**os.environ, "ORCH_DATABASE_URL": url}
    status = subprocess.run([sys.executable, "-m", "orch.cli", "status"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert status.returncode == 2 and status.stderr.splitlines() == [f"orch: {expected}"], status.stderr
    assert not (tmp_path / ".orch").exists()


KOMBU_TRANSPORTS = "known: amqp, amqps, azureservicebus, azurestoragequeues, confluentkafka, consul, etcd, filesystem"


@pytest.mark.parametrize(
    ("name", "url", "expected"),
    [
        (
            "ORCH_BROKER_URL",
            "reddis://:pw-3f9a@broker:6379/0",
            f"ORCH_BROKER_URL: unknown broker transport 'reddis' (did you mean 'redis'? {KOMBU_TRANSPORTS}",
        ),
        (
            "ORCH_BROKER_URL",
            "amqp://orch:pw-3f9a@rabbit//;ampq://orch:pw-3f9a@rabbit2//",  # kombu's failover list: each checked
            f"ORCH_BROKER_URL: unknown broker transport 'ampq' (did you mean 'amqp'? {KOMBU_TRANSPORTS}",
        ),
        ("ORCH_BROKER_URL", "localhost:6379", "ORCH_BROKER_URL: not a broker URL (redis://host:6379/0 or amqp://…)"),
        (
            "ORCH_BROKER_URL",
            "redis://:pw-3f9a@broker:port/0",
            "ORCH_BROKER_URL: cannot parse 'redis://:***@broker:port/0': its port 'port' is not a number",
        ),
        (
            "ORCH_BROKER_URL",
            "redis://[::1/0",
            "ORCH_BROKER_URL: cannot parse 'redis://[::1/0': Invalid IPv6 URL",
        ),
        (
            "ORCH_DATABASE_URL",
            "postgresql://orch:pw-3f9a@db:5432x/orch",
            "ORCH_DATABASE_URL: cannot parse 'postgresql://orch:***@db:5432x/orch': its port '5432x' is not a number",
        ),
        (
            "ORCH_DATABASE_URL",
            "postgresql://orch@db:99999/orch",
            "ORCH_DATABASE_URL: cannot parse 'postgresql://orch@db:99999/orch': its port 99999 is not in 0-65535",
        ),
    ],
)
def test_a_typo_or_an_unparseable_broker_or_database_url_is_one_line_naming_it(
    name: str, url: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: a broker typo passed until Celery's KeyError (or a worker's traceback), a non-numeric port was a
    ValueError traceback from SQLAlchemy or kombu at the first connection. The password never shows."""
    monkeypatch.setenv(name, url)
    with pytest.raises(ConfigInvalid) as raised:
        settings_in(tmp_path, monkeypatch)
    message = str(raised.value)
    assert message.startswith(expected) and "pw-3f9a" not in message and "\n" not in message, message
    if "unknown broker" in expected:
        assert message.endswith("redis, rediss, sentinel, slmq, sqla, sqlalchemy, sqs, zookeeper)"), message
    env = {**os.environ, name: url}
    check = subprocess.run([sys.executable, "-m", "orch.cli", "check"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    assert check.returncode == 2 and check.stderr.splitlines() == [f"orch: {message}"], check.stderr


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://h:6380/0", "amqp://u:p@h//", "pyamqp://h//", "sentinel://h:26379"]
)
def test_known_broker_urls_pass(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_BROKER_URL", url)
    assert settings_in(tmp_path, monkeypatch).broker_url == url
