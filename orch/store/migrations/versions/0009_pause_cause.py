"""agent pauses: why the pause was set (`cause`: circuit_breaker or usage_limit), a column where it was read from
the start of the free-text reason; a pause already set takes its cause from its reason

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

CAUSE = sa.Enum("circuit_breaker", "usage_limit", name="pausecause", native_enum=False, length=20)
# A pause the circuit breaker set has a reason that begins "circuit open"; any other was a usage limit's.
BACKFILL = (
    "UPDATE agent_pauses SET cause = "
    "CASE WHEN substr(reason, 1, 12) = 'circuit open' THEN 'circuit_breaker' ELSE 'usage_limit' END"
)


def upgrade() -> None:
    with op.batch_alter_table("agent_pauses", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cause", CAUSE, nullable=True))
    op.execute(BACKFILL)
    with op.batch_alter_table("agent_pauses", schema=None) as batch_op:
        batch_op.alter_column("cause", existing_type=CAUSE, nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("agent_pauses", schema=None) as batch_op:
        batch_op.drop_column("cause")
