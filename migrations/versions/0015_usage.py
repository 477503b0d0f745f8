"""key_usage: each key's jobs, images and GPU-seconds per UTC day, kept when jobs finish
(usage per key and daily quotas read it instead of the job history)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08

Filled from the succeeded jobs still stored (their jobs and images; no GPU-seconds:
jobs before this revision did not record them).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.orm import Session

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_usage",
        sa.Column("owner_key", sa.String(length=32), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("jobs", sa.BigInteger(), nullable=False),
        sa.Column("images", sa.BigInteger(), nullable=False),
        sa.Column("gpu_seconds", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("owner_key", "day"),
    )
    with op.batch_alter_table("key_usage", schema=None) as batch_op:
        batch_op.create_index("ix_key_usage_day", ["day"], unique=False)
    from easel.shared.usage import rebuild

    session = Session(bind=op.get_bind())
    rebuild(session)
    session.flush()


def downgrade() -> None:
    with op.batch_alter_table("key_usage", schema=None) as batch_op:
        batch_op.drop_index("ix_key_usage_day")
    op.drop_table("key_usage")
