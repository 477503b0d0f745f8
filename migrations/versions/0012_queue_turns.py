"""the queue's maintained state: queue_turns (claim order: counts, heads and turns per
owner at each model, type and priority) and partial indexes of queued jobs

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

The table is filled from the jobs queued when this revision runs.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.orm import Session

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

QUEUED_ONLY = "status = 'queued'"


def upgrade() -> None:
    op.create_table(
        "queue_turns",
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("owner_key", sa.String(length=32), nullable=False),
        sa.Column("queued", sa.BigInteger(), nullable=False),
        sa.Column("turn", sa.DateTime(timezone=True), nullable=False),
        sa.Column("head_created", sa.DateTime(timezone=True), nullable=True),
        sa.Column("head_id", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("model", "type", "priority", "owner_key"),
    )
    with op.batch_alter_table("queue_turns", schema=None) as batch_op:
        batch_op.create_index(
            "ix_queue_turns_next", ["model", "priority", "turn", "head_created", "head_id"], unique=False
        )
        batch_op.create_index(
            "ix_queue_turns_next_any", ["priority", "turn", "head_created", "head_id"], unique=False
        )
        batch_op.create_index("ix_queue_turns_owner", ["owner_key"], unique=False)
    where = sa.text(QUEUED_ONLY)
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_jobs_queue",
            ["model", "type", "priority", "owner_id", "created_at", "id"],
            unique=False,
            postgresql_where=where,
            sqlite_where=where,
        )
        batch_op.create_index(
            "ix_jobs_queue_key",
            [
                "model",
                "type",
                "width",
                "height",
                "steps",
                "scheduler",
                "guidance_scale",
                "strength",
                "priority",
                "owner_id",
                "created_at",
                "id",
            ],
            unique=False,
            postgresql_where=where,
            sqlite_where=where,
        )
    from easel.shared.queue_turns import rebuild

    session = Session(bind=op.get_bind())
    rebuild(session)
    session.flush()


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_queue_key")
        batch_op.drop_index("ix_jobs_queue")
    op.drop_table("queue_turns")
