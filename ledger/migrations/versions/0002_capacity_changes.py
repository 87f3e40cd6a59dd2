"""Partners' capacity: one row per FULL / OPEN (and per FULL that lapsed by itself).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# ledger.schema.UTCDateTime stores this type; the conversion to UTC is the code's.
WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "capacity_changes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(96)),
        sa.Column("partner_id", sa.String(64), nullable=False),
        sa.Column("service", sa.String(64)),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("until", WHEN),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("at", WHEN, nullable=False),
        sa.Column("regions", sa.String(1024), nullable=False),
        sa.UniqueConstraint("key", name="uq_capacity_changes_key"),
    )
    op.create_index("ix_capacity_changes_partner", "capacity_changes", ["partner_id", "id"])
    op.create_index("ix_capacity_changes_at", "capacity_changes", ["at"])


def downgrade() -> None:
    op.drop_table("capacity_changes")
