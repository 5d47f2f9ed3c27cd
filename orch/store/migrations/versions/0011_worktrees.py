"""worktrees: a plan's repositories and their integration branches (`integrations`, one per plan and repository,
holding the merge lock), the merge queue (`merge_requests`), and per task its repository, whether its work lands
and the merge request a conflict-resolution task resolves; per attempt its branch, base and head commits and
worktree

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "integrations",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("plan_id", sa.String(length=40), nullable=False),
        sa.Column("repository", sa.String(length=64), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("base", sa.String(length=255), nullable=False),
        sa.Column("base_commit", sa.String(length=64), nullable=False),
        sa.Column("branch", sa.String(length=255), nullable=False),
        sa.Column("head", sa.String(length=64), nullable=False),
        sa.Column("land", sa.String(length=10), nullable=False),
        sa.Column("gates", sa.JSON(), nullable=False),
        sa.Column("gate_timeout", sa.Double(), nullable=False),
        sa.Column("on_conflict", sa.String(length=10), nullable=False),
        sa.Column("relock", sa.JSON(), nullable=False),
        sa.Column("context", sa.Text(), nullable=False, server_default=""),
        sa.Column("lease", sa.String(length=36), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("landed", sa.String(length=20), nullable=True),
        sa.Column("land_detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("plan_id", "repository", name="uq_integrations_plan_repository"),
    )
    op.create_table(
        "merge_requests",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("plan_id", sa.String(length=40), nullable=False),
        sa.Column("integration_pk", sa.Integer(), nullable=False),
        sa.Column("task_pk", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("phase", sa.String(length=20), nullable=False),
        sa.Column("base_commit", sa.String(length=64), nullable=False),
        sa.Column("head_commit", sa.String(length=64), nullable=False),
        sa.Column("enqueued_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("merged_commit", sa.String(length=64), nullable=True),
        sa.Column("conflicts", sa.JSON(), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("tries", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("resolved_by", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["integration_pk"], ["integrations.pk"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["task_pk"], ["tasks.pk"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk"),
    )
    op.create_index("ix_merge_requests_queue", "merge_requests", ["integration_pk", "phase"])
    op.create_index("ix_merge_requests_task", "merge_requests", ["task_pk"])
    with op.batch_alter_table("tasks") as batch_op:
        batch_op.add_column(sa.Column("repository", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("merge", sa.Boolean(), nullable=False, server_default=sa.true()))
        batch_op.add_column(sa.Column("resolves", sa.Integer(), nullable=True))
    with op.batch_alter_table("attempts") as batch_op:
        batch_op.add_column(sa.Column("branch", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("base_commit", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("head_commit", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("worktree", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attempts") as batch_op:
        for column in ("worktree", "head_commit", "base_commit", "branch"):
            batch_op.drop_column(column)
    with op.batch_alter_table("tasks") as batch_op:
        for column in ("resolves", "merge", "repository"):
            batch_op.drop_column(column)
    op.drop_index("ix_merge_requests_task", table_name="merge_requests")
    op.drop_index("ix_merge_requests_queue", table_name="merge_requests")
    op.drop_table("merge_requests")
    op.drop_table("integrations")
