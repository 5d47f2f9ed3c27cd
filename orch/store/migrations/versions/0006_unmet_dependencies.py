"""tasks: how many of a task's dependencies have not succeeded yet, so readiness is an index lookup

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

BACKFILL = (
    "UPDATE tasks SET unmet_deps = (SELECT count(*) FROM dependencies d JOIN tasks p ON p.pk = d.depends_on_pk "
    "WHERE d.task_pk = tasks.pk AND p.status != 'succeeded')"
)


def upgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("unmet_deps", sa.Integer(), nullable=False, server_default="0"))
        batch_op.create_index("ix_tasks_ready", ["plan_id", "status", "unmet_deps", "priority", "seq"])
    op.execute(BACKFILL)


def downgrade() -> None:
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_ready")
        batch_op.drop_column("unmet_deps")
