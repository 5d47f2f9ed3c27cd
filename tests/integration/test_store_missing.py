"""A PostgreSQL database without orch's tables is no store for the commands that only open one (issue 14, point
4): they name it in one line, exit 2, and create no table; `orch db upgrade` creates them."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
from click.testing import CliRunner

from orch.cli import main
from orch.settings import get_settings
from tests.conftest import POSTGRES_HOST, POSTGRES_PORT, require_service

ADMIN = f"host={POSTGRES_HOST} port={POSTGRES_PORT} user=postgres dbname=postgres"


@pytest.fixture
def empty_database(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    require_service("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    name = f"orch_empty_{secrets.token_hex(4)}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
    monkeypatch.setenv("ORCH_DATABASE_URL", url)
    get_settings.cache_clear()
    try:
        yield url
    finally:
        from orch.store.db import dispose_engines

        dispose_engines()
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def tables(url: str) -> list[str]:
    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()
    return sorted(str(row[0]) for row in rows)


def test_a_database_without_orch_tables_is_named_and_left_empty(empty_database: str) -> None:
    for args in (["status", "x"], ["status"], ["report", "x"], ["cancel", "x"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert result.stderr == (
            f"orch: no store at {empty_database}: it has no orch tables (ORCH_DATABASE_URL); point ORCH_HOME or "
            f"ORCH_DATABASE_URL at your store, or create one with `orch db upgrade`\n"
        )
        assert tables(empty_database) == []
    upgraded = CliRunner().invoke(main, ["db", "upgrade"])
    assert upgraded.exit_code == 0, upgraded.output
    assert "plans" in tables(empty_database)
    assert CliRunner().invoke(main, ["status"]).stdout == "no plans yet\n"
