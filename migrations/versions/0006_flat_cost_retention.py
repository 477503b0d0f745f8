"""flat cost and retention: hot-path indexes, maintained job statistics, pruning marks, leases

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26

The statistics tables are filled from the jobs that finished before this revision,
so the ``/metrics`` counters carry on from where the history left them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.orm import Session

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

OUTPUTS_DUE = "outputs_pruned_at IS NULL AND finished_at IS NOT NULL"
INPUTS_DUE = "inputs_pruned_at IS NULL AND input_key IS NOT NULL AND finished_at IS NOT NULL"


def upgrade() -> None:
    op.create_table(
        "job_counts",
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("model", "type", "status"),
    )
    op.create_table(
        "job_durations",
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("model", sa.String(length=128), nullable=False),
        sa.Column("bucket", sa.String(length=16), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "model", "bucket"),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=255), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("outputs_pruned_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("inputs_pruned_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.drop_index("ix_jobs_owner_id")
        batch_op.create_index("ix_jobs_owner_created", ["owner_id", "created_at"], unique=False)
        batch_op.create_index("ix_jobs_owner_status", ["owner_id", "status", "created_at"], unique=False)
        batch_op.create_index("ix_jobs_status_created", ["status", "created_at"], unique=False)
        batch_op.create_index("ix_jobs_model_finished", ["model", "status", "finished_at"], unique=False)
        batch_op.create_index("ix_jobs_status_finished", ["status", "finished_at"], unique=False)
        batch_op.create_index(
            "ix_jobs_outputs_due",
            ["finished_at"],
            unique=False,
            postgresql_where=sa.text(OUTPUTS_DUE),
            sqlite_where=sa.text(OUTPUTS_DUE),
        )
        batch_op.create_index(
            "ix_jobs_inputs_due",
            ["finished_at"],
            unique=False,
            postgresql_where=sa.text(INPUTS_DUE),
            sqlite_where=sa.text(INPUTS_DUE),
        )
    from easel.shared.stats import rebuild

    session = Session(bind=op.get_bind())
    rebuild(session)
    session.flush()


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for name in (
            "ix_jobs_inputs_due",
            "ix_jobs_outputs_due",
            "ix_jobs_status_finished",
            "ix_jobs_model_finished",
            "ix_jobs_status_created",
            "ix_jobs_owner_status",
            "ix_jobs_owner_created",
        ):
            batch_op.drop_index(name)
        batch_op.create_index("ix_jobs_owner_id", ["owner_id"], unique=False)
        batch_op.drop_column("inputs_pruned_at")
        batch_op.drop_column("outputs_pruned_at")
    op.drop_table("leases")
    op.drop_table("job_durations")
    op.drop_table("job_counts")
