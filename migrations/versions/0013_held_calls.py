"""held_calls replaces event_streams: every held call (Prefer: wait, OpenAI, AUTOMATIC1111,
event streams) takes a row, so one bound per key covers them all

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-08

The rows are short-lived (a held call's life); those of event_streams are dropped.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def _slots_table(name: str, with_kind: bool) -> None:
    columns = [
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
    ]
    if with_kind:
        columns.append(sa.Column("kind", sa.String(length=16), nullable=False))
    op.create_table(
        name,
        *columns,
        sa.Column("opened_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table(name, schema=None) as batch_op:
        batch_op.create_index(f"ix_{name}_owner", ["owner", "opened_at"], unique=False)


def _drop(name: str) -> None:
    with op.batch_alter_table(name, schema=None) as batch_op:
        batch_op.drop_index(f"ix_{name}_owner")
    op.drop_table(name)


def upgrade() -> None:
    _drop("event_streams")
    _slots_table("held_calls", with_kind=True)


def downgrade() -> None:
    _drop("held_calls")
    _slots_table("event_streams", with_kind=False)
