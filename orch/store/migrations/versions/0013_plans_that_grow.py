"""plans that grow: per task its estimate (a planner's: tokens, usd, minutes), what becomes of it when its retries
are spent (`on_failure`: fail | replan, at most `max_replans` times; `replans` so far; `replanning`: its next
attempt asks the planner for smaller tasks), and where it came from (`added_by`: the task whose attempt added it as
a follow-up or that it replaces; `added_how`: followup | replan; `depth`: how many follow-ups deep)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("estimate", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("on_failure", sa.String(length=16), nullable=False, server_default="fail"))
        batch.add_column(sa.Column("max_replans", sa.Integer(), nullable=False, server_default="1"))
        batch.add_column(sa.Column("replans", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("replanning", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("added_by", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("added_how", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("depth", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        for column in ("depth", "added_how", "added_by", "replanning", "replans", "max_replans", "on_failure"):
            batch.drop_column(column)
        batch.drop_column("estimate")
