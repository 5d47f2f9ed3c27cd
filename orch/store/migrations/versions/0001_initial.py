"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("workdir", sa.Text(), nullable=False),
        sa.Column(
            "status",
            sa.Enum("running", "succeeded", "failed", "cancelled", name="planstatus", native_enum=False, length=20),
            nullable=False,
        ),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_plans_name"), ["name"], unique=False)
        batch_op.create_index(batch_op.f("ix_plans_status"), ["status"], unique=False)

    op.create_table(
        "events",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("plan_id", sa.String(length=40), nullable=False),
        sa.Column("task_pk", sa.Integer(), nullable=True),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("old", sa.String(length=20), nullable=True),
        sa.Column("new", sa.String(length=20), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk"),
    )
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.create_index("ix_events_plan", ["plan_id", "pk"], unique=False)

    op.create_table(
        "tasks",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("plan_id", sa.String(length=40), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("agent", sa.String(length=64), nullable=False),
        sa.Column("route_reason", sa.Text(), nullable=False),
        sa.Column("queue", sa.String(length=128), nullable=False),
        sa.Column("executor", sa.String(length=32), nullable=False),
        sa.Column("command", sa.Text(), nullable=True),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("success", sa.Text(), nullable=False),
        sa.Column("timeout", sa.Double(), nullable=False),
        sa.Column("retries", sa.Integer(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "queued",
                "running",
                "succeeded",
                "failed",
                "retry_wait",
                "upstream_failed",
                "cancelled",
                name="taskstatus",
                native_enum=False,
                length=20,
            ),
            nullable=False,
        ),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("lease", sa.String(length=36), nullable=True),
        sa.Column("not_before", sa.DateTime(), nullable=True),
        sa.Column("queued_at", sa.DateTime(), nullable=True),
        sa.Column("dispatched_at", sa.DateTime(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["plan_id"], ["plans.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("plan_id", "key", name="uq_tasks_plan_key"),
    )
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.create_index("ix_tasks_plan_status", ["plan_id", "status"], unique=False)
        batch_op.create_index("ix_tasks_status_agent", ["status", "agent"], unique=False)

    op.create_table(
        "attempts",
        sa.Column("pk", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("task_pk", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("lease", sa.String(length=36), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "running",
                "succeeded",
                "failed",
                "cancelled",
                name="attemptstatus",
                native_enum=False,
                length=20,
            ),
            nullable=False,
        ),
        sa.Column("worker", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("queued_at", sa.DateTime(), nullable=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("failure_class", sa.String(length=32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("output_tail", sa.Text(), nullable=False),
        sa.Column("log_path", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["task_pk"], ["tasks.pk"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("pk"),
        sa.UniqueConstraint("task_pk", "number", name="uq_attempts_task_number"),
    )
    op.create_table(
        "dependencies",
        sa.Column("task_pk", sa.Integer(), nullable=False),
        sa.Column("depends_on_pk", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["depends_on_pk"], ["tasks.pk"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["task_pk"], ["tasks.pk"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("task_pk", "depends_on_pk"),
    )
    with op.batch_alter_table("dependencies", schema=None) as batch_op:
        batch_op.create_index("ix_dependencies_depends_on", ["depends_on_pk"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("dependencies", schema=None) as batch_op:
        batch_op.drop_index("ix_dependencies_depends_on")

    op.drop_table("dependencies")
    op.drop_table("attempts")
    with op.batch_alter_table("tasks", schema=None) as batch_op:
        batch_op.drop_index("ix_tasks_status_agent")
        batch_op.drop_index("ix_tasks_plan_status")

    op.drop_table("tasks")
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_index("ix_events_plan")

    op.drop_table("events")
    with op.batch_alter_table("plans", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_plans_status"))
        batch_op.drop_index(batch_op.f("ix_plans_name"))

    op.drop_table("plans")
