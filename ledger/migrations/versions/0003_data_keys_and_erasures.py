"""The referrals' data keys (infra/data_keys.py) and the record of erasures (ledger.erasures).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "data_keys",
        sa.Column("referral", sa.String(16), primary_key=True),
        sa.Column("key_id", sa.String(40), nullable=False, unique=True),
        sa.Column("master_key_id", sa.String(64)),
        sa.Column("wrapped", sa.LargeBinary),
        sa.Column("created_at", WHEN, nullable=False),
        sa.Column("destroyed_at", WHEN),
    )
    op.create_table(
        "erasures",
        sa.Column("code", sa.String(16), primary_key=True),
        sa.Column("requested_at", WHEN, nullable=False),
        sa.Column("requested_by", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(500), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("erased_at", WHEN),
        sa.Column("runs_deleted", sa.Integer),
        sa.Column("ledger_marked", sa.Boolean),
    )


def downgrade() -> None:
    op.drop_table("erasures")
    op.drop_table("data_keys")
