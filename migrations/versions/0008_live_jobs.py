"""live jobs: preview step, webhook event filter, open event streams

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("webhook_events", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("preview_step", sa.Integer(), nullable=True))
    op.create_table(
        "event_streams",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("event_streams", schema=None) as batch_op:
        batch_op.create_index("ix_event_streams_owner", ["owner", "opened_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("event_streams", schema=None) as batch_op:
        batch_op.drop_index("ix_event_streams_owner")
    op.drop_table("event_streams")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("preview_step")
        batch_op.drop_column("webhook_events")
