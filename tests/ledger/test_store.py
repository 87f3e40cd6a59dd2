"""The ledger's store on SQLite and on PostgreSQL: what is written is read back, writes are safe
to repeat and never roll a referral back, erasure sticks, deletion by date keeps open referrals,
and the migrations make exactly the tables of ledger/schema.py."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from pydantic import ValidationError
from sqlalchemy import func, select

from infra.data_keys import metadata as data_keys_metadata
from infra.database import describe, engine_for
from ledger import migrate
from ledger.record import LedgerRecord
from ledger.schema import metadata, offers, referral_indicators, referrals, services
from ledger.store import LedgerNotReady, LedgerStore
from tests.ledger.data import HOUR, T0, offer, referral, service


def rows(store: LedgerStore, table) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_a_record_is_read_back_as_written(store: LedgerStore) -> None:
    record = referral(
        closed_at=T0 + 30 * HOUR,
        closure_reason="completed",
        indicators=["deception", "debt_bondage", "isolation"],
        services=[
            service(
                "shelter",
                [offer("first-ngo", outcome="declined", decline_code=1), offer("cas-assoc", at=T0 + HOUR)],
                escalations=1, first_escalated_at=T0 + 4 * HOUR, last_escalated_at=T0 + 4 * HOUR, alerts=2,
                coordinator_acted_at=T0 + 5 * HOUR, checkins_sent=2, checkins_answered=1, outcome="delivered",
                completed_at=T0 + 30 * HOUR,
            ),
            service("legal", [offer("legal-aid", after=None, outcome="timed_out")]),
        ],
    )  # fmt: skip
    assert store.upsert(record) is True
    assert store.get(record.code) == record
    assert store.get("XXXXX") is None
    assert (rows(store, referrals), rows(store, services), rows(store, offers), rows(store, referral_indicators)) == (1, 2, 3, 3)


def test_writing_the_same_record_again_changes_nothing(store: LedgerStore) -> None:
    record = referral()
    assert store.upsert(record) and store.upsert(record) and store.upsert(record)
    assert store.get(record.code) == record
    assert (rows(store, referrals), rows(store, services), rows(store, offers)) == (1, 1, 1)


def test_a_newer_record_replaces_the_rows_whole(store: LedgerStore) -> None:
    first = referral(services=[service("shelter"), service("legal")], indicators=["deception", "isolation"])
    store.upsert(first)
    later = first.model_copy(
        update={
            "updated_at": first.updated_at + HOUR,
            "indicators": ["debt_bondage"],
            "services": [service("shelter", [offer("a-1", outcome="declined", decline_code=4), offer("a-2", at=T0 + HOUR)])],
        }
    )
    assert store.upsert(later) is True
    assert store.get(first.code) == later
    assert (rows(store, services), rows(store, offers), rows(store, referral_indicators)) == (1, 2, 1)


def test_an_older_record_never_overwrites_a_newer_one(store: LedgerStore) -> None:
    newer = referral(updated_at=T0 + 2 * HOUR, closed_at=T0 + 2 * HOUR, closure_reason="cancelled")
    store.upsert(newer)
    older = newer.model_copy(update={"updated_at": T0 + HOUR, "closed_at": None, "closure_reason": None})
    assert store.upsert(older) is False
    assert store.get(newer.code) == newer


def test_concurrent_writers_of_one_referral_leave_the_newest(store: LedgerStore) -> None:
    """Several activities writing the same new referral at once (a retry racing the first try):
    no duplicate key, no error, and the newest record wins whatever the order."""
    base = referral()
    versions = [base.model_copy(update={"updated_at": T0 + n * HOUR, "services": [service(offers=[offer(at=T0 + n * HOUR)])]}) for n in range(8)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(versions))

    def write(record: LedgerRecord) -> None:
        try:
            start.wait()
            store.upsert(record)
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=write, args=(v,)) for v in reversed(versions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert store.get(base.code) == versions[-1]
    assert (rows(store, referrals), rows(store, services), rows(store, offers)) == (1, 1, 1)


def test_erasure_removes_the_persons_attributes_for_good(store: LedgerStore) -> None:
    record = referral(age_group="minor", sex="female", nationality="NG", languages_count=3, interpreter_needed=True, minor=True, urgency="urgent")
    store.upsert(record)
    assert store.mark_erased(record.code, T0 + 3 * HOUR) is True
    erased = store.get(record.code)
    assert erased is not None and erased.erased and erased.erased_at == T0 + 3 * HOUR
    assert (erased.age_group, erased.sex, erased.nationality, erased.languages_count, erased.interpreter_needed) == ("unknown", "unknown", None, 0, False)
    # The referral's course stays: dates, region, urgency, services, offers.
    assert (erased.started_at, erased.region, erased.urgency, erased.services) == (record.started_at, record.region, record.urgency, record.services)
    # A later write (the referral goes on) keeps the person erased.
    later = record.model_copy(update={"updated_at": T0 + 5 * HOUR, "closed_at": T0 + 5 * HOUR, "closure_reason": "completed"})
    assert store.upsert(later) is True
    stored = store.get(record.code)
    assert stored is not None and stored.closure_reason == "completed"
    assert stored.erased and stored.nationality is None and stored.age_group == "unknown" and stored.erased_at == T0 + 3 * HOUR
    assert store.mark_erased("XXXXX", T0) is False


def test_deleting_by_date_keeps_open_referrals_and_those_closed_later(store: LedgerStore) -> None:
    old = referral(closed_at=T0 + HOUR, closure_reason="completed", services=[service("shelter"), service("legal")])
    recent = referral(closed_at=T0 + 48 * HOUR, closure_reason="closed")
    still_open = referral(started=T0 - 100 * HOUR)
    for r in (old, recent, still_open):
        store.upsert(r)
    assert store.delete_closed_before(T0 + 24 * HOUR) == 1
    assert store.get(old.code) is None and store.get(recent.code) == recent and store.get(still_open.code) == still_open
    assert (rows(store, referrals), rows(store, services), rows(store, offers), rows(store, referral_indicators)) == (2, 2, 2, 2)
    assert store.delete_closed_before(T0 + 24 * HOUR) == 0
    with pytest.raises(ValueError, match="before"):
        store.delete_closed_before((T0 + HOUR).replace(tzinfo=None))


def test_records_are_chosen_by_start_and_region(store: LedgerStore) -> None:
    a = referral(started=T0, region="oriental")
    b = referral(started=T0 + 24 * HOUR, region="souss-massa")
    c = referral(started=T0 + 48 * HOUR, region="oriental")
    for r in (c, a, b):
        store.upsert(r)
    assert store.records() == [a, b, c]
    assert store.records(started_from=T0 + HOUR) == [b, c]
    assert store.records(started_before=T0 + 48 * HOUR) == [a, b]
    assert store.records(region="oriental") == [a, c]
    assert store.records(started_from=T0, started_before=T0 + 47 * HOUR, region="oriental") == [a]
    assert store.count() == 3


def test_the_store_says_when_the_database_is_not_migrated(ledger_url: str) -> None:
    store = LedgerStore.for_url(ledger_url)
    with pytest.raises(LedgerNotReady, match="referral ledger upgrade"):
        store.check()
    assert migrate.upgrade(ledger_url) == migrate.head_revision()
    assert migrate.upgrade(ledger_url) == migrate.head_revision()  # again: nothing to do
    store.check()
    # The unreachable database is a clear refusal, without the URL (it may hold a password).
    broken = LedgerStore.for_url("postgresql+psycopg://ledger:secret-pw@127.0.0.1:9/ledger")
    with pytest.raises(LedgerNotReady) as caught:
        broken.check()
    assert "secret-pw" not in str(caught.value)
    assert "secret-pw" not in describe("postgresql+psycopg://ledger:secret-pw@127.0.0.1:9/ledger")


def test_the_migrations_make_exactly_the_tables_of_the_schema(ledger_url: str) -> None:
    migrate.upgrade(ledger_url)
    with engine_for(ledger_url).connect() as conn:
        # The project's database: the ledger's tables and the referrals' data keys.
        differences = compare_metadata(MigrationContext.configure(conn), [metadata, data_keys_metadata])  # type: ignore[arg-type]
    assert differences == []


def test_a_record_holds_codes_only() -> None:
    """No field for the person's name, phone or notes, and no free text in a code field."""
    record = referral()
    for field in ("pseudonym", "contact_phone", "notes", "external_ref", "officer_id", "reason"):
        assert field not in LedgerRecord.model_fields
        with pytest.raises(ValidationError):
            LedgerRecord.model_validate({**record.model_dump(), field: "Amina K."})
    for field, value in (("region", "Amina K."), ("sector", "near Berrechid"), ("indicators", ["passport held by the employer"])):
        with pytest.raises(ValidationError):
            LedgerRecord.model_validate({**record.model_dump(), field: value})
    with pytest.raises(ValidationError, match="decline_code"):
        offer(outcome="accepted", decline_code=2)
    with pytest.raises(ValidationError, match="time zone"):
        referral(started=T0.replace(tzinfo=None))
    with pytest.raises(ValidationError, match="closure_reason"):
        referral(closed_at=T0 + timedelta(days=1))


def test_a_read_never_mixes_two_versions_of_a_record(store: LedgerStore) -> None:
    """A record read while another version is being written is one version or the other, never a
    service of the new one with the offers of the old (each SELECT its own snapshot, before)."""
    one = referral(services=[service(offers=[offer(after=None, outcome=None)], stage="awaiting_acceptance")])
    store.upsert(one)
    three = [offer(partner=p, after=None, outcome="timed_out") for p in ("cas-assoc", "cas-shelter", "nat-shelter-amal")]
    versions = [
        one.model_copy(update={"updated_at": T0 + i * HOUR, "services": [service(offers=three, stage="escalated")] if i % 2 else one.services})
        for i in range(1, 400)
    ]
    torn: list[str] = []
    done = threading.Event()

    def write() -> None:
        for version in versions:
            store.upsert(version)
        done.set()

    def read() -> None:
        while not done.is_set():
            got = store.get(one.code)
            assert got is not None
            s = got.services[0]
            if (s.stage == "escalated") != (len(s.offers) == 3):
                torn.append(f"{s.stage} with {len(s.offers)} offer(s)")

    threads = [threading.Thread(target=write), *(threading.Thread(target=read) for _ in range(2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert torn == []
