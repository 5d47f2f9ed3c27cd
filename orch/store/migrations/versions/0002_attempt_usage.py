"""attempt usage: model, tokens, cost, result text, duration, files changed

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TOKENS = ("input_tokens", "output_tokens", "cache_creation_tokens", "cache_read_tokens")


def upgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model", sa.String(length=64), nullable=True))
        for name in _TOKENS:
            batch_op.add_column(sa.Column(name, sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("cost_usd", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("result", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("duration_s", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("files_changed", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attempts", schema=None) as batch_op:
        for name in ("files_changed", "duration_s", "result", "cost_usd", *reversed(_TOKENS), "model"):
            batch_op.drop_column(name)
