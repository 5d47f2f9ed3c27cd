"""tasks: verify command, file scope, python call target; attempts: verification outcome

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("verify", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("scope", sa.String(length=10), nullable=False, server_default="loose"))
        batch_op.add_column(sa.Column("call", sa.String(length=300), nullable=True))
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("verified", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.drop_column("verified")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_column("call")
        batch_op.drop_column("scope")
        batch_op.drop_column("verify")
