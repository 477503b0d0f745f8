"""per-job adapters: jobs.loras and jobs.control (canonical JSON text), jobs.control_key

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        # Text, not JSON: one canonical string per value, so the claim's SQL equality on
        # the batch key compares them on SQLite and PostgreSQL alike.
        batch_op.add_column(sa.Column("loras", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("control", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("control_key", sa.String(length=512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("control_key")
        batch_op.drop_column("control")
        batch_op.drop_column("loras")
