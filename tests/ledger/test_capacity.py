"""Partners' capacity in the ledger's database (ledger/capacity.py): the rule that says who is full
now, the store on SQLite and PostgreSQL, migration 0002, and the report's table."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import inspect

from infra.database import engine_for
from ledger import migrate
from ledger.capacity import CapacityChange, CapacityStore, FullSpell, full_spell, full_spells
from ledger.migrate import LedgerNotReady
from ledger.report_output import to_csv, to_text
from ledger.reports import HIDDEN, Filters, build_report
from ledger.store import LedgerStore

T0 = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
H = timedelta(hours=1)
D = timedelta(days=1)


def change(state: str, at: datetime, service: str | None = None, until: datetime | None = None, channel: str = "sms", **kw: object) -> CapacityChange:
    return CapacityChange(partner_id=kw.pop("partner", "cas-assoc"), service=service, state=state, until=until, channel=channel, at=at, **kw)  # type: ignore[arg-type]


# --- the rule --------------------------------------------------------------------------------


def test_full_until_open() -> None:
    changes = [change("full", T0, "shelter"), change("open", T0 + 5 * H, "shelter")]
    assert full_spell(changes, "shelter", T0 + H) == FullSpell(since=T0, until=None)
    assert full_spell(changes[:1], "shelter", T0 + 100 * D) == FullSpell(since=T0, until=None)
    assert full_spell(changes, "shelter", T0 + 6 * H) is None
    assert full_spell(changes, "legal", T0 + H) is None  # another service


def test_full_for_every_service_then_one_reopened() -> None:
    changes = [change("full", T0), change("open", T0 + H, "shelter")]
    assert full_spells(changes, ["shelter", "legal", "psychosocial"], T0 + 2 * H) == {
        "legal": FullSpell(T0, None), "psychosocial": FullSpell(T0, None),
    }  # fmt: skip
    # ... and OPEN for all reopens what one FULL closed.
    assert full_spells([change("full", T0, "legal"), change("open", T0 + H)], ["legal"], T0 + 2 * H) == {}


def test_a_full_with_an_end_lapses_by_itself() -> None:
    ends = T0 + 3 * D
    changes = [change("full", T0, "shelter", until=ends)]
    assert full_spell(changes, "shelter", ends - timedelta(seconds=1)) == FullSpell(T0, ends)
    assert full_spell(changes, "shelter", ends) is None
    # A FULL after the end starts a new spell; one before it prolongs the spell from its start.
    assert full_spell([*changes, change("full", ends + H, "shelter")], "shelter", ends + 2 * H) == FullSpell(ends + H, None)
    longer = [*changes, change("full", T0 + D, "shelter", until=T0 + 7 * D)]
    assert full_spell(longer, "shelter", T0 + 5 * D) == FullSpell(T0, T0 + 7 * D)
    # The lapse's own row (for the reports) changes nothing.
    assert full_spell([*changes, change("lapsed", ends, "shelter", channel="expiry")], "shelter", ends + H) is None


def test_a_change_holds_codes_only() -> None:
    with pytest.raises(ValueError, match="partner_id"):
        change("full", T0, partner="Amina K.")
    with pytest.raises(ValueError, match="service"):
        change("full", T0, "a shelter for tonight")
    with pytest.raises(ValueError, match="channel"):
        change("full", T0, channel="phone")
    with pytest.raises(ValueError, match="time zone"):
        change("full", T0.replace(tzinfo=None))


# --- the store ---------------------------------------------------------------------------------


@pytest.fixture
def capacity(store: LedgerStore) -> CapacityStore:
    return CapacityStore(store.engine)


def test_changes_are_kept_in_order_with_who_how_and_when(capacity: CapacityStore) -> None:
    first, new = capacity.record(change("full", T0, "shelter", until=T0 + 3 * D, regions=["casablanca-settat"]))
    assert new and first.id is not None
    second, _ = capacity.record(change("open", T0 + H, "shelter", channel="web", regions=["casablanca-settat"]))
    capacity.record(change("full", T0, partner="nat-shelter-amal"))
    kept = capacity.changes_of(["cas-assoc", "nat-shelter-amal", "nobody"])
    assert [(c.state, c.channel, c.at, c.until, c.regions) for c in kept["cas-assoc"]] == [
        ("full", "sms", T0, T0 + 3 * D, ["casablanca-settat"]),
        ("open", "web", T0 + H, None, ["casablanca-settat"]),
    ]
    assert [c.regions for c in kept["nat-shelter-amal"]] == [[]]
    assert "nobody" not in kept
    assert capacity.get(second.id or 0) == second


def test_a_key_makes_a_write_safe_to_repeat(capacity: CapacityStore) -> None:
    stored, new = capacity.record(change("full", T0, "shelter"), key="sms-SM1")
    again, new_again = capacity.record(change("full", T0 + H, "shelter"), key="sms-SM1")
    assert new and not new_again and again == stored
    assert len(capacity.changes_of(["cas-assoc"])["cas-assoc"]) == 1


def test_migration_0002_adds_the_table_and_the_store_refuses_an_older_database(ledger_url: str) -> None:
    migrate.upgrade(ledger_url, "0001")
    store = CapacityStore(engine_for(ledger_url))
    with pytest.raises(LedgerNotReady, match="revision 0001"):
        store.changes_of(["cas-assoc"])
    assert migrate.upgrade(ledger_url, "0002") == "0002"
    assert "capacity_changes" in inspect(engine_for(ledger_url)).get_table_names()
    migrate.upgrade(ledger_url)
    assert store.changes_of(["cas-assoc"]) == {}


# --- the report --------------------------------------------------------------------------------


def changes_for_the_report() -> list[CapacityChange]:
    made = [change("full", T0 + i * H, "shelter", regions=["oriental"]) for i in range(6)]
    made += [change("open", T0 + 7 * H, "shelter", channel="web", regions=["oriental"])]
    made += [change("full", T0, partner="nat-shelter-amal"), change("lapsed", T0 + D, partner="nat-shelter-amal", channel="expiry")]
    made += [change("full", T0 + 40 * D, partner="late-partner", regions=["oriental"])]  # after the period
    return made


def test_capacity_changes_by_partner_suppressed_and_not() -> None:
    filters = Filters(date_to=(T0 + 30 * D).date())
    report = build_report([], filters, tz=UTC, now=T0 + 60 * D, capacity_changes=changes_for_the_report())
    rows = {r.partner_id: r for r in report.capacity}
    assert set(rows) == {"cas-assoc", "nat-shelter-amal"}
    cas = rows["cas-assoc"]
    assert (cas.full, cas.reopened, cas.lapsed, cas.by_sms, cas.by_web) == (6, HIDDEN, 0, 6, HIDDEN)
    amal = rows["nat-shelter-amal"]
    assert (amal.full, amal.lapsed, amal.by_sms) == (HIDDEN, HIDDEN, HIDDEN)
    raw = build_report([], filters, tz=UTC, now=T0, suppress=False, capacity_changes=changes_for_the_report())
    assert {r.partner_id: (r.full, r.reopened, r.lapsed, r.by_web) for r in raw.capacity}["cas-assoc"] == (6, 1, 0, 1)
    assert "capacity,cas-assoc,full,6" in to_csv(report) and "capacity,cas-assoc,reopened,<5" in to_csv(report)
    assert "Capacity" in to_text(report)


def test_capacity_changes_by_region_keep_national_partners() -> None:
    report = build_report([], Filters(region="souss-massa"), tz=UTC, now=T0, capacity_changes=changes_for_the_report())
    assert [r.partner_id for r in report.capacity] == ["nat-shelter-amal"]


def test_the_stores_report_reads_the_changes(store: LedgerStore) -> None:
    capacity = CapacityStore(store.engine)
    for made in changes_for_the_report():
        capacity.record(made)
    report = store.report(Filters(region="oriental", date_to=(T0 + 30 * D).date()), tz=UTC, now=T0 + 60 * D, suppress=False)
    assert {r.partner_id: r.full for r in report.capacity} == {"cas-assoc": 6, "nat-shelter-amal": 1}
