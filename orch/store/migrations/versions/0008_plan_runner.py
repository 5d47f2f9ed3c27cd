"""plans: the `orch run` process that runs the plan (host, pid, start time), so that a later command on that host
can cancel the plans of an `orch run` that died

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.add_column(sa.Column("runner_host", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("runner_pid", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("runner_start_ticks", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.drop_column("runner_start_ticks")
        batch_op.drop_column("runner_pid")
        batch_op.drop_column("runner_host")
