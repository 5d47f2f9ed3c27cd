"""task lists: per task where its list wrote it (`source`: format, file, line, the list's id and status word) and
why its list holds it (`hold`); per plan the task list it follows (file, format, options) and its revision; and
`plan_revisions`, each change a followed list made to a running plan

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("source", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("hold", sa.Text(), nullable=True))
    with op.batch_alter_table("plans") as batch:
        batch.add_column(sa.Column("list_file", sa.Text(), nullable=True))
        batch.add_column(sa.Column("list_format", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("list_options", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="1"))
    op.create_table(
        "plan_revisions",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("plan_id", sa.String(length=40), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("origin", sa.String(length=255), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("changes", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("plan_id", "number", name="uq_plan_revisions_plan_number"),
    )


def downgrade() -> None:
    op.drop_table("plan_revisions")
    with op.batch_alter_table("plans") as batch:
        batch.drop_column("revision")
        batch.drop_column("list_options")
        batch.drop_column("list_format")
        batch.drop_column("list_file")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("hold")
        batch.drop_column("source")
