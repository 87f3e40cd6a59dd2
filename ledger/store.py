"""The ledger's store: write a referral's record, erase a person's attributes, delete by date,
read records back for the reports.

Synchronous SQLAlchemy on purpose: a write is a few small statements, and callers on an event
loop (activities, the web app's routes) run these methods in a thread (`asyncio.to_thread`).
One engine per database URL per process (`infra.database.engine_for`), with its connection pool.

Every write is one transaction and safe to repeat: `upsert` replaces the referral's rows whole,
and a record older than the stored one (by `updated_at`) changes nothing, so a retried or late
activity never rolls a referral back.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, tzinfo
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from config.settings import Settings
from infra.database import engine_for
from ledger import migrate
from ledger.capacity import capacity_changes_between
from ledger.migrate import LedgerNotReady
from ledger.record import LedgerRecord, OfferRecord, ServiceRecord
from ledger.reports import Filters, Report, build_report, start_bounds
from ledger.schema import offers, referral_indicators, referrals, services


class LedgerStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._ready = False

    @classmethod
    def for_url(cls, url: str) -> LedgerStore:
        return cls(engine_for(url))

    @classmethod
    def from_settings(cls, settings: Settings) -> LedgerStore:
        return cls.for_url(settings.ledger_url)

    # --- readiness ---------------------------------------------------------------------

    def check(self) -> None:
        """Raise LedgerNotReady unless the database is at the code's migration (checked once)."""
        if self._ready:
            return
        migrate.check_ready(self.engine)
        self._ready = True

    # --- writes ------------------------------------------------------------------------

    def upsert(self, record: LedgerRecord) -> bool:
        """Write the referral's record, replacing what was stored, in one transaction. False when
        the stored record is newer (by `updated_at`): nothing changes. Once a referral's person was
        erased (`mark_erased`), a later record is stored without the person's attributes too."""
        with self.engine.begin() as conn:
            # RETURNING rather than rowcount, which some drivers leave at -1 for INSERT ... ON CONFLICT
            inserted = conn.execute(_insert_new(conn, _referral_row(record))).first() is not None
            if not inserted:
                stored = conn.execute(
                    select(referrals.c.updated_at, referrals.c.erased, referrals.c.erased_at)
                    .where(referrals.c.code == record.code)
                    .with_for_update()
                ).one()
                if stored.updated_at > record.updated_at:
                    return False
                if stored.erased:
                    record = record.without_person(stored.erased_at)
                conn.execute(update(referrals).where(referrals.c.code == record.code).values(_referral_row(record)))
                _delete_children(conn, referrals.c.code == record.code)
            _insert_children(conn, record)
        return True

    def mark_erased(self, code: str, at: datetime) -> bool:
        """Erase the person's attributes from a referral's record (LedgerRecord.without_person),
        for good: later upserts keep them erased. False when the ledger has no such referral."""
        with self.engine.begin() as conn:
            record = _load(conn, referrals.c.code == code, lock=True)
            if not record:
                return False
            erased = record[0].without_person(at)
            conn.execute(update(referrals).where(referrals.c.code == code).values(_referral_row(erased)))
        return True

    def delete_closed_before(self, before: datetime) -> int:
        """Delete every referral closed before `before` (aware); open referrals are kept. The count deleted."""
        if before.tzinfo is None:
            raise ValueError("before: must include a time zone")
        closed = and_(referrals.c.closed_at.is_not(None), referrals.c.closed_at < before)
        with self.engine.begin() as conn:
            _delete_children(conn, closed)
            return conn.execute(delete(referrals).where(closed)).rowcount

    # --- reads -------------------------------------------------------------------------

    def get(self, code: str) -> LedgerRecord | None:
        with _snapshot(self.engine) as conn:
            found = _load(conn, referrals.c.code == code)
        return found[0] if found else None

    def records(
        self, *, started_from: datetime | None = None, started_before: datetime | None = None, region: str | None = None
    ) -> list[LedgerRecord]:
        """Records of the referrals started in [started_from, started_before) in `region`, oldest first."""
        conditions: list[ColumnElement[bool]] = []
        if started_from is not None:
            conditions.append(referrals.c.started_at >= started_from)
        if started_before is not None:
            conditions.append(referrals.c.started_at < started_before)
        if region is not None:
            conditions.append(referrals.c.region == region)
        with _snapshot(self.engine) as conn:
            return _load(conn, and_(*conditions) if conditions else None)

    def report(self, filters: Filters, *, tz: tzinfo, now: datetime, suppress: bool = True) -> Report:
        """The report over the referrals the filters choose (ledger.reports.build_report)."""
        low, high = start_bounds(filters.date_from, filters.date_to, tz)
        records = self.records(started_from=low, started_before=high, region=filters.region)
        changes = capacity_changes_between(self.engine, low, high, filters.region)
        return build_report(records, filters, tz=tz, now=now, suppress=suppress, capacity_changes=changes)

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(referrals)).scalar_one())


# --- rows ------------------------------------------------------------------------------------

_PERSON_AND_COURSE = (
    "code", "started_at", "closed_at", "closure_reason", "region", "urgency", "sector", "age_group", "sex",
    "nationality", "languages_count", "interpreter_needed", "minor", "erased", "erased_at", "updated_at",
)  # fmt: skip
_SERVICE_FIELDS = (
    "stage", "accepted_at", "accepted_by", "assigned_by_coordinator", "escalations", "first_escalated_at", "last_escalated_at",
    "alerts", "coordinator_acted_at", "checkins_sent", "checkins_answered", "outcome", "completed_at",
)  # fmt: skip
_OFFER_FIELDS = ("partner_id", "offered_at", "deadline", "replied_at", "outcome", "decline_code")


def _referral_row(record: LedgerRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in _PERSON_AND_COURSE}


def _insert_new(conn: Connection, row: dict[str, Any]) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING: the first writer of a referral takes its row (and, on
    PostgreSQL, its lock) without racing a second one into a duplicate key."""
    dialect = conn.dialect.name
    if dialect == "postgresql":
        return postgresql.insert(referrals).values(row).on_conflict_do_nothing(index_elements=["code"]).returning(referrals.c.code)
    if dialect == "sqlite":
        return sqlite.insert(referrals).values(row).on_conflict_do_nothing(index_elements=["code"]).returning(referrals.c.code)
    raise LedgerNotReady(f"the ledger supports SQLite and PostgreSQL, not {dialect}")


def _delete_children(conn: Connection, which: ColumnElement[bool]) -> None:
    codes = select(referrals.c.code).where(which)
    for table in (offers, services, referral_indicators):
        conn.execute(delete(table).where(table.c.code.in_(codes)))


def _insert_children(conn: Connection, record: LedgerRecord) -> None:
    if record.indicators:
        conn.execute(referral_indicators.insert(), [{"code": record.code, "indicator": i} for i in dict.fromkeys(record.indicators)])
    if record.services:
        conn.execute(
            services.insert(),
            [
                {"code": record.code, "service": s.service, "position": n, **{f: getattr(s, f) for f in _SERVICE_FIELDS}}
                for n, s in enumerate(record.services)
            ],
        )
    rows = [
        {"code": record.code, "service": s.service, "position": n, **{f: getattr(o, f) for f in _OFFER_FIELDS}}
        for s in record.services
        for n, o in enumerate(s.offers)
    ]
    if rows:
        conn.execute(offers.insert(), rows)


@contextmanager
def _snapshot(engine: Engine) -> Iterator[Connection]:
    """A connection whose reads all see one version of the database: `_load` reads four tables one
    after the other, and a write committed between two of them would mix two records (a service
    of the new one with the offers of the old). Python's sqlite3 begins no transaction before a
    SELECT, so each would be its own snapshot: BEGIN here. PostgreSQL's READ COMMITTED takes a
    snapshot per statement: REPEATABLE READ takes one for the transaction."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ")
        elif conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN")  # ended by the rollback when the connection is returned
        yield conn


def _load(conn: Connection, which: ColumnElement[bool] | None, lock: bool = False) -> list[LedgerRecord]:
    """Records of the referrals matching `which`, built without validation (they were validated
    when written), in three queries whatever their number."""

    def chosen(query: Any, table: Any) -> Any:
        if table is not referrals:
            query = query.join(referrals, referrals.c.code == table.c.code)
        return query if which is None else query.where(which)

    query = chosen(select(referrals), referrals).order_by(referrals.c.started_at, referrals.c.code)
    heads = conn.execute(query.with_for_update() if lock else query).all()
    if not heads:
        return []
    indicators: dict[str, list[str]] = defaultdict(list)
    for code, indicator in conn.execute(chosen(select(referral_indicators.c.code, referral_indicators.c.indicator), referral_indicators)):
        indicators[code].append(indicator)
    offers_of: dict[tuple[str, str], list[tuple[int, OfferRecord]]] = defaultdict(list)
    for row in conn.execute(chosen(select(offers), offers)):
        offer = OfferRecord.model_construct(**{f: getattr(row, f) for f in _OFFER_FIELDS})
        offers_of[(row.code, row.service)].append((row.position, offer))
    services_of: dict[str, list[tuple[int, ServiceRecord]]] = defaultdict(list)
    for row in conn.execute(chosen(select(services), services)):
        made = [o for _, o in sorted(offers_of.get((row.code, row.service), []), key=lambda p: p[0])]
        service = ServiceRecord.model_construct(service=row.service, offers=made, **{f: getattr(row, f) for f in _SERVICE_FIELDS})
        services_of[row.code].append((row.position, service))
    return [
        LedgerRecord.model_construct(
            **{f: getattr(row, f) for f in _PERSON_AND_COURSE},
            indicators=sorted(indicators.get(row.code, [])),
            services=[s for _, s in sorted(services_of.get(row.code, []), key=lambda p: p[0])],
        )
        for row in heads
    ]
