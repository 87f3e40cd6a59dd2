"""The ledger's first tables: referrals, their indicators, services and offers.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# ledger.schema.UTCDateTime stores this type; the conversion to UTC is the code's.
WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "referrals",
        sa.Column("code", sa.String(16), primary_key=True),
        sa.Column("started_at", WHEN, nullable=False),
        sa.Column("closed_at", WHEN),
        sa.Column("closure_reason", sa.String(32)),
        sa.Column("region", sa.String(64), nullable=False),
        sa.Column("urgency", sa.String(16), nullable=False),
        sa.Column("sector", sa.String(64), nullable=False),
        sa.Column("age_group", sa.String(16), nullable=False),
        sa.Column("sex", sa.String(16), nullable=False),
        sa.Column("nationality", sa.String(2)),
        sa.Column("languages_count", sa.SmallInteger, nullable=False),
        sa.Column("interpreter_needed", sa.Boolean, nullable=False),
        sa.Column("minor", sa.Boolean, nullable=False),
        sa.Column("erased", sa.Boolean, nullable=False),
        sa.Column("erased_at", WHEN),
        sa.Column("updated_at", WHEN, nullable=False),
    )
    op.create_index("ix_referrals_started_at", "referrals", ["started_at"])
    op.create_index("ix_referrals_closed_at", "referrals", ["closed_at"])
    op.create_index("ix_referrals_region", "referrals", ["region"])
    op.create_table(
        "referral_indicators",
        sa.Column("code", sa.String(16), primary_key=True),
        sa.Column("indicator", sa.String(64), primary_key=True),
        sa.ForeignKeyConstraint(["code"], ["referrals.code"], ondelete="CASCADE", name="fk_referral_indicators_referral"),
    )
    op.create_table(
        "services",
        sa.Column("code", sa.String(16), primary_key=True),
        sa.Column("service", sa.String(64), primary_key=True),
        sa.Column("position", sa.SmallInteger, nullable=False),
        sa.Column("stage", sa.String(64), nullable=False),
        sa.Column("accepted_at", WHEN),
        sa.Column("accepted_by", sa.String(64)),
        sa.Column("assigned_by_coordinator", sa.Boolean, nullable=False),
        sa.Column("escalations", sa.Integer, nullable=False),
        sa.Column("first_escalated_at", WHEN),
        sa.Column("last_escalated_at", WHEN),
        sa.Column("alerts", sa.Integer, nullable=False),
        sa.Column("coordinator_acted_at", WHEN),
        sa.Column("checkins_sent", sa.Integer, nullable=False),
        sa.Column("checkins_answered", sa.Integer, nullable=False),
        sa.Column("outcome", sa.String(32)),
        sa.Column("completed_at", WHEN),
        sa.ForeignKeyConstraint(["code"], ["referrals.code"], ondelete="CASCADE", name="fk_services_referral"),
    )
    op.create_index("ix_services_accepted_by", "services", ["accepted_by"])
    op.create_table(
        "offers",
        sa.Column("code", sa.String(16), primary_key=True),
        sa.Column("service", sa.String(64), primary_key=True),
        sa.Column("position", sa.SmallInteger, primary_key=True),
        sa.Column("partner_id", sa.String(64), nullable=False),
        sa.Column("offered_at", WHEN, nullable=False),
        sa.Column("deadline", WHEN, nullable=False),
        sa.Column("replied_at", WHEN),
        sa.Column("outcome", sa.String(16)),
        sa.Column("decline_code", sa.SmallInteger),
        sa.ForeignKeyConstraint(
            ["code", "service"], ["services.code", "services.service"], ondelete="CASCADE", name="fk_offers_service"
        ),
    )
    op.create_index("ix_offers_partner_id", "offers", ["partner_id"])


def downgrade() -> None:
    op.drop_table("offers")
    op.drop_table("services")
    op.drop_table("referral_indicators")
    op.drop_table("referrals")
