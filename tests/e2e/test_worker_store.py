"""Issue 14, point 3: a worker pointed at a wrong store (a PostgreSQL database that does not exist, a server that
does not answer) refuses to start, in one line and with a non-zero exit, before it consumes anything: the message
on its queue is still there. And SIGTERM stops a worker whose store went away while it retried it."""

from __future__ import annotations

import secrets
import signal
import sys
import time
from pathlib import Path

import psycopg
import pytest
import redis
from sqlalchemy import text

from orch.celery import make_app
from orch.records import RUN_TASK
from orch.settings import get_settings
from orch.store.db import dispose_engines, ensure_schema
from tests.conftest import POSTGRES_HOST, POSTGRES_PORT, require_service
from tests.e2e.conftest import Processes, orch_env
from tests.helpers import free_port, wait_for

QUEUE = "agent.general-purpose"
WORKER = [sys.executable, "-m", "celery", "-A", "orch", "worker", "--without-gossip", "--without-mingle", "-c", "1"]
WORKER += ["-Q", QUEUE, "-l", "INFO"]
ADMIN = f"host={POSTGRES_HOST} port={POSTGRES_PORT} user=postgres dbname=postgres"


def waiting_messages(redis_url: str) -> int:
    """Messages on the queue's Redis list: the ones no worker took."""
    return int(redis.Redis.from_url(redis_url).llen(QUEUE))


def send_message(redis_url: str, monkeypatch: pytest.MonkeyPatch, task_pk: int = 1) -> None:
    monkeypatch.setenv("ORCH_BROKER_URL", redis_url)
    get_settings.cache_clear()
    app = make_app()
    try:
        app.send_task(RUN_TASK, args=(task_pk, 1), queue=QUEUE, task_id=f"stray.{task_pk}.1")
    finally:
        app.close()


@pytest.mark.parametrize("store", ["missing database", "no server", "another orch's schema"])
def test_a_worker_on_a_wrong_store_exits_before_consuming(
    store: str, redis_url: str, tmp_path: Path, processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    if store == "missing database":
        require_service("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
        url = f"postgresql://postgres:pg-pass-5e1f@{POSTGRES_HOST}:{POSTGRES_PORT}/orch_missing_{secrets.token_hex(4)}"
        expected = "orch: worker not started: store postgresql+psycopg://postgres:***@"
        cause = "cannot be opened: OperationalError"
    elif store == "no server":
        url = f"postgresql://postgres:pg-pass-5e1f@127.0.0.1:{free_port()}/orch"
        expected = "orch: worker not started: store postgresql+psycopg://postgres:***@"
        cause = "cannot be opened: OperationalError"
    else:  # a store a newer orch migrated
        url = f"sqlite:///{tmp_path / 'newer.db'}"
        with ensure_schema(url).begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
        dispose_engines()
        expected = f"orch: worker not started: store {url} (revision 0099) cannot be brought to this orch's revision"
        cause = "Can't locate revision identified by '0099'"
    send_message(redis_url, monkeypatch)
    assert waiting_messages(redis_url) == 1
    log = tmp_path / "worker.log"
    started = time.monotonic()
    env = orch_env(tmp_path, ORCH_BROKER_URL=redis_url, ORCH_DATABASE_URL=url)
    worker = processes.start(WORKER, tmp_path, env, log)
    wait_for(lambda: worker.poll() is not None, 30, "the worker on a wrong store to exit")
    assert time.monotonic() - started < 30
    output = log.read_text()
    assert worker.returncode != 0, output
    lines = [line for line in output.splitlines() if line.startswith("orch: ")]
    assert len(lines) == 1, output
    assert lines[0].startswith(expected), lines
    assert cause in lines[0], lines
    assert "pg-pass-5e1f" not in output
    assert waiting_messages(redis_url) == 1, "the worker consumed the message"


def test_sigterm_stops_a_worker_retrying_its_store(
    redis_url: str, tmp_path: Path, processes: Processes, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_service("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    name = f"orch_gone_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
    try:
        ensure_schema(url).dispose()
        env = orch_env(tmp_path, ORCH_BROKER_URL=redis_url, ORCH_DATABASE_URL=url, ORCH_SHUTDOWN_GRACE="1")
        log = tmp_path / "worker.log"
        worker = processes.start(WORKER, tmp_path, env, log)
        wait_for(lambda: "ready." in log.read_text(), 60, "the worker to be ready")
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:  # the store goes away under the worker
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    send_message(redis_url, monkeypatch)
    wait_for(lambda: "store unreachable at claim; retrying" in log.read_text(), 60, "the worker to retry its store")
    worker.send_signal(signal.SIGTERM)
    started = time.monotonic()
    wait_for(lambda: worker.poll() is not None, 30, "the worker to stop on SIGTERM")
    assert time.monotonic() - started < 30
    assert waiting_messages(redis_url) == 1, "the message was not given back"
