"""img2img and inpaint inputs

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mask_blur", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("keep_unmasked", sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column("input_key", sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column("mask_key", sa.String(length=512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("mask_key")
        batch_op.drop_column("input_key")
        batch_op.drop_column("keep_unmasked")
        batch_op.drop_column("mask_blur")
