"""Shared fixtures. Service tests use the machine's real servers; with CI=true a missing server fails the run,
otherwise (a newcomer's machine) the test is skipped with the reason shown in the summary."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO / "config"
# The suite's fake agents (tests/faults/ledger_agent.py, tests/fakes/fake_claude.py…) live in the checkout, which a
# sandbox hides when it lies under /tmp or a home folder (a fresh clone in CI): agents may read it.
SANDBOX_READ = {"ORCH_SANDBOX_READ": str(REPO / "tests")}

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
POSTGRES_HOST, POSTGRES_PORT = "127.0.0.1", 5432
RABBITMQ_HOST, RABBITMQ_PORT = "127.0.0.1", 5672
# Another checkout running its suite on this machine at the same time picks another database (TEST_REDIS_DB).
REDIS_TEST_DB = int(os.environ.get("TEST_REDIS_DB", "11"))
REDIS_FAULT_DB = 12  # the fault suite's (tests/faults/conftest.py): never flushed, so never a checkout's test DB
if REDIS_TEST_DB == REDIS_FAULT_DB:
    raise pytest.UsageError(f"TEST_REDIS_DB={REDIS_TEST_DB} is the fault suite's Redis database; pick another")


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    if reachable(host, port):
        return
    message = f"{name} is not reachable at {host}:{port}"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}, and CI=true requires every service test to run")
    pytest.skip(f"{message} (start it to run this test; with CI=true this is a failure)")


def require_bwrap() -> str:
    """bubblewrap, the agents' sandbox (`make test` installs it with apt): skipped without it, failed with CI=true."""
    import shutil

    bwrap = shutil.which("bwrap")
    if bwrap is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("bubblewrap is not installed, and CI=true requires the sandbox tests to run")
        pytest.skip("bubblewrap is not installed (make test installs it with apt)")
    return bwrap


AGENT_USER = "orch-agent"


def pytest_configure(config: pytest.Config) -> None:
    """As root (CI, containers) orch runs agents as an unprivileged user, `orch-agent` by default: the test set-up
    creates it, as the image does."""
    if os.geteuid() != 0:
        return
    import pwd
    import subprocess

    try:
        pwd.getpwnam(AGENT_USER)
    except KeyError:
        done = subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", AGENT_USER],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise pytest.UsageError(f"could not create the agents' user {AGENT_USER}: {done.stderr.strip()}") from None


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test gets its own ORCH_HOME and a fresh Settings; no ORCH_* leaks in from the environment.

    As root, agents run as `orch-agent`, which must be able to write the workdirs tests make in tmp_path: the test
    folder is open to all and the test's own files are made with umask 0 (orch keeps its own files private itself:
    ORCH_HOME 0700, files 0600)."""
    from orch.settings import get_settings
    from orch.store.db import dispose_engines

    for key in list(os.environ):
        if key.startswith("ORCH_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("ORCH_HOME", str(tmp_path / ".orch"))
    monkeypatch.setenv("ORCH_CONFIG_DIR", str(CONFIG_DIR))
    for key, value in SANDBOX_READ.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    umask = None
    if os.geteuid() == 0:
        tmp_path.chmod(0o777)
        umask = os.umask(0)
    yield
    if umask is not None:
        os.umask(umask)
    dispose_engines()
    get_settings.cache_clear()


@pytest.fixture
def sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    from orch.settings import get_settings

    # In ORCH_HOME (where orch keeps its own store): a store beside a plan's workdir would be inside it, and
    # agents are refused a workdir that holds the store.
    url = f"sqlite:///{tmp_path / '.orch' / 'store.db'}"
    monkeypatch.setenv("ORCH_DATABASE_URL", url)
    get_settings.cache_clear()
    return url


@pytest.fixture(scope="session")
def _postgres_database() -> Iterator[str]:
    require_service("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    import psycopg

    name = f"orch_test_{secrets.token_hex(4)}"
    admin = f"host={POSTGRES_HOST} port={POSTGRES_PORT} user=postgres dbname=postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
    finally:
        from orch.store.db import dispose_engines

        dispose_engines()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_url(_postgres_database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A PostgreSQL store, emptied before each test."""
    from sqlalchemy import text

    from orch.settings import get_settings
    from orch.store.db import ensure_schema

    monkeypatch.setenv("ORCH_DATABASE_URL", _postgres_database)
    get_settings.cache_clear()
    engine = ensure_schema(_postgres_database)
    with engine.begin() as conn:
        conn.execute(
            text(
                "TRUNCATE events, attempts, dependencies, tasks, plans, agent_pauses, services RESTART IDENTITY CASCADE"
            )
        )
    yield _postgres_database


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str:
    """Each store test runs on SQLite and on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def redis_url() -> str:
    require_service("Redis", REDIS_HOST, REDIS_PORT)
    import redis

    redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_TEST_DB).flushdb()
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{REDIS_TEST_DB}"


@pytest.fixture
def rabbitmq_url() -> str:
    require_service("RabbitMQ", RABBITMQ_HOST, RABBITMQ_PORT)
    from kombu.connection import Connection
    from kombu.entity import Queue

    from orch.intake.agents import load_agents_file

    url = f"amqp://guest:guest@{RABBITMQ_HOST}:{RABBITMQ_PORT}//"
    with Connection(url) as conn:
        channel = conn.default_channel
        # An earlier in-process test that switched brokers may have declared Celery's event exchange with the
        # Redis flavour (fanout); RabbitMQ then refuses the real (topic) one. Start from a clean exchange.
        channel.exchange_delete("celeryev")
        for queue in load_agents_file(CONFIG_DIR / "agents.yaml").queues:
            Queue(queue, routing_key=queue, channel=channel).declare()
            channel.queue_purge(queue)
    return url


@pytest.fixture
def embedded_redis_url(tmp_path: Path) -> Iterator[str]:
    from orch.services.embedded import EmbeddedRedis

    server = EmbeddedRedis(log_path=tmp_path / "redis.log")
    url = server.start()
    try:
        yield url
    finally:
        server.stop()
