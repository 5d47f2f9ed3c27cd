"""Alembic environment: orch runs migrations with its own connection (orch.store.db.upgrade) or from a URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from orch.settings import get_settings
from orch.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url") or get_settings().resolved_database_url
    engine = create_engine(url)
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("orch migrations run online only: `orch db upgrade`")
run_migrations()
