"""The ledger's tables (SQLAlchemy 2 Core), the same on SQLite and PostgreSQL.

One row per referral, its indicators, one row per service, one row per offer; the children are
replaced whole when a referral's record is written again (ledger.store.upsert). Beside them, one
row per change of a partner's capacity (ledger.capacity), appended and never changed. The Alembic
migrations in ledger/migrations/ create and change these tables: change both together.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

metadata = MetaData()


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out. PostgreSQL keeps a timestamptz; SQLite, which
    has no time zones, the UTC wall time (so its text compares in time order)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("the ledger keeps aware datetimes only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


CODE = 16  # referral codes are five characters; room to spare
SLUG = 64  # ledger.record.CODE_TEXT

referrals = Table(
    "referrals",
    metadata,
    Column("code", String(CODE), primary_key=True),
    Column("started_at", UTCDateTime, nullable=False),
    Column("closed_at", UTCDateTime),
    Column("closure_reason", String(32)),
    Column("region", String(SLUG), nullable=False),
    Column("urgency", String(16), nullable=False),
    Column("sector", String(SLUG), nullable=False),
    Column("age_group", String(16), nullable=False),
    Column("sex", String(16), nullable=False),
    Column("nationality", String(2)),
    Column("languages_count", SmallInteger, nullable=False),
    Column("interpreter_needed", Boolean, nullable=False),
    Column("minor", Boolean, nullable=False),
    Column("erased", Boolean, nullable=False),
    Column("erased_at", UTCDateTime),
    Column("updated_at", UTCDateTime, nullable=False),
    Index("ix_referrals_started_at", "started_at"),
    Index("ix_referrals_closed_at", "closed_at"),
    Index("ix_referrals_region", "region"),
)

referral_indicators = Table(
    "referral_indicators",
    metadata,
    Column("code", String(CODE), primary_key=True),
    Column("indicator", String(SLUG), primary_key=True),
    ForeignKeyConstraint(["code"], ["referrals.code"], ondelete="CASCADE", name="fk_referral_indicators_referral"),
)

services = Table(
    "services",
    metadata,
    Column("code", String(CODE), primary_key=True),
    Column("service", String(SLUG), primary_key=True),
    Column("position", SmallInteger, nullable=False),
    Column("stage", String(SLUG), nullable=False),
    Column("accepted_at", UTCDateTime),
    Column("accepted_by", String(SLUG)),
    Column("assigned_by_coordinator", Boolean, nullable=False),
    Column("escalations", Integer, nullable=False),
    Column("first_escalated_at", UTCDateTime),
    Column("last_escalated_at", UTCDateTime),
    Column("alerts", Integer, nullable=False),
    Column("coordinator_acted_at", UTCDateTime),
    Column("checkins_sent", Integer, nullable=False),
    Column("checkins_answered", Integer, nullable=False),
    Column("outcome", String(32)),
    Column("completed_at", UTCDateTime),
    ForeignKeyConstraint(["code"], ["referrals.code"], ondelete="CASCADE", name="fk_services_referral"),
    Index("ix_services_accepted_by", "accepted_by"),
)

offers = Table(
    "offers",
    metadata,
    Column("code", String(CODE), primary_key=True),
    Column("service", String(SLUG), primary_key=True),
    Column("position", SmallInteger, primary_key=True),
    Column("partner_id", String(SLUG), nullable=False),
    Column("offered_at", UTCDateTime, nullable=False),
    Column("deadline", UTCDateTime, nullable=False),
    Column("replied_at", UTCDateTime),
    Column("outcome", String(16)),
    Column("decline_code", SmallInteger),
    ForeignKeyConstraint(["code", "service"], ["services.code", "services.service"], ondelete="CASCADE", name="fk_offers_service"),
    Index("ix_offers_partner_id", "partner_id"),
)

# Partners' FULL / OPEN (ledger.capacity): appended, never updated. `service` NULL: all the
# partner's services; `key` makes a write safe to repeat (sms-<MessageSid>, lapse-<change id>).
capacity_changes = Table(
    "capacity_changes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(96)),
    Column("partner_id", String(SLUG), nullable=False),
    Column("service", String(SLUG)),
    Column("state", String(16), nullable=False),
    Column("until", UTCDateTime),
    Column("channel", String(16), nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("regions", String(1024), nullable=False),
    UniqueConstraint("key", name="uq_capacity_changes_key"),
    Index("ix_capacity_changes_partner", "partner_id", "id"),
    Index("ix_capacity_changes_at", "at"),
)

# Erasures on request (`referral erase`): one row per erased referral, what was asked and when it
# was done, never anything about the person. `state`: requested, then erased.
erasures = Table(
    "erasures",
    metadata,
    Column("code", String(CODE), primary_key=True),
    Column("requested_at", UTCDateTime, nullable=False),
    Column("requested_by", String(SLUG), nullable=False),
    Column("reason", String(500), nullable=False),
    Column("state", String(16), nullable=False),
    Column("erased_at", UTCDateTime),
    Column("runs_deleted", Integer),
    Column("ledger_marked", Boolean),
)
