"""tasks: lease expiry (heartbeats), retry floor (`orch retry`), budgets; plans: budgets and why dispatch is held;
attempts: last heartbeat

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_expires_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("retry_floor", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("budget_usd", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("budget_tokens", sa.BigInteger(), nullable=True))
        batch_op.create_index("ix_tasks_status_lease_expires", ["status", "lease_expires_at"])
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.add_column(sa.Column("budget_usd", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("budget_tokens", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("held_reason", sa.Text(), nullable=True))
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(), nullable=True))
    # Attempts running under a release without heartbeats have no expiry: they expire now, so the reaper
    # settles them once (a live one's result is then rejected and its task retried).
    op.execute("UPDATE tasks SET lease_expires_at = started_at WHERE status = 'running'")


def downgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_column("heartbeat_at")
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.drop_column("held_reason")
        batch_op.drop_column("budget_tokens")
        batch_op.drop_column("budget_usd")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_status_lease_expires")
        batch_op.drop_column("budget_tokens")
        batch_op.drop_column("budget_usd")
        batch_op.drop_column("retry_floor")
        batch_op.drop_column("lease_expires_at")
