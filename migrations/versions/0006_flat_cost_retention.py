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


def _strings(*columns: tuple[str, int]) -> list[sa.Column[str]]:
    """Non-null ``String`` columns, each given as (name, length)."""
    return [sa.Column(name, sa.String(length=length), nullable=False) for name, length in columns]


def upgrade() -> None:
    op.create_table(
        "job_counts",
        *_strings(("model", 128), ("type", 16), ("status", 16)),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("model", "type", "status"),
    )
    op.create_table(
        "job_durations",
        *_strings(("kind", 8), ("model", 128), ("bucket", 16)),
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
        for name, due in (("ix_jobs_outputs_due", OUTPUTS_DUE), ("ix_jobs_inputs_due", INPUTS_DUE)):
            where = sa.text(due)
            batch_op.create_index(
                name, ["finished_at"], unique=False, postgresql_where=where, sqlite_where=where
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
