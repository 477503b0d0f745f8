"""job kinds: upscale jobs' jobs.upscaler and jobs.scale; ix_jobs_inputs_due covers every
stored input (a txt2img + ControlNet job has only a control image, which input retention
never found before)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from alembic.operations import BatchOperations

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

BEFORE = "inputs_pruned_at IS NULL AND input_key IS NOT NULL AND finished_at IS NOT NULL"
AFTER = (
    "inputs_pruned_at IS NULL AND (input_key IS NOT NULL OR mask_key IS NOT NULL OR control_key IS NOT NULL) "
    "AND finished_at IS NOT NULL"
)


def _due_index(batch_op: BatchOperations, due: str) -> None:
    where = sa.text(due)
    batch_op.drop_index("ix_jobs_inputs_due")
    batch_op.create_index(
        "ix_jobs_inputs_due", ["finished_at"], unique=False, postgresql_where=where, sqlite_where=where
    )


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("upscaler", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("scale", sa.Float(), nullable=True))
        _due_index(batch_op, AFTER)


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        _due_index(batch_op, BEFORE)
        batch_op.drop_column("scale")
        batch_op.drop_column("upscaler")
