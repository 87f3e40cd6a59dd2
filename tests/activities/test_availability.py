"""Matching with partners' capacity and opening hours, and the backup number (issue 15).

Pure rules first (opening hours, the ladder, when a reply period starts), then the activities
against a real SQLite ledger, the local SMTP server and the SMS outbox, with a clock the test
sets (the activity's, never the machine's)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import yaml
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.availability import AvailabilityActivities
from activities.directory import ConfigError, Directory, load_directory
from activities.matching import MATCH_HORIZON, available_ladder
from activities.opening_hours import OpeningHours, parse_hours
from activities.referral_activities import ReferralActivities
from activities.sms import read_outbox
from activities.sms_store import record_opt_out
from ledger import migrate
from ledger.capacity import CapacityChange, CapacityStore, FullSpell
from tests.cases import NOTES, PHONE, PSEUDONYM
from tests.fixtures import PARTNERS_FILE
from workflows.models import CapacityNotice, MatchRequest, Notice, NoticeContext, OpenWindow
from workflows.schedules import reply_period_starts

TZ = ZoneInfo("Africa/Casablanca")
# Wednesday 2 December 2026, 02:00 in Casablanca (UTC+1): night.
NIGHT = datetime(2026, 12, 2, 2, 0, tzinfo=TZ).astimezone(UTC)
# The same day at 10:00: office hours.
MORNING = datetime(2026, 12, 2, 10, 0, tzinfo=TZ).astimezone(UTC)
OFFICE = {"mon-fri": "08:30-17:00"}
H = timedelta(hours=1)
D = timedelta(days=1)


def directory_file(tmp_path: Path, partners: list[dict[str, Any]]) -> Path:
    """The tests' directory with its partners replaced."""
    data = yaml.safe_load(PARTNERS_FILE.read_text(encoding="utf-8"))
    data["partners"] = partners
    path = tmp_path / "partners.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def partner(pid: str, number: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": pid, "name": pid, "services": ["shelter"], "regions": ["dakhla-oued-ed-dahab"], "languages": ["fr"],
        "sms": f"+2126501235{number:02d}", "email": f"{pid}@partners.example.org", "rank": number, **extra,
    }  # fmt: skip


SHELTERS = [
    partner("day-shelter", 1, hours=OFFICE),
    partner("night-shelter", 2, hours={"mon-sun": "20:00-08:00"}),
    partner("any-time-shelter", 3, hours="always"),
]
REQUEST = MatchRequest(service="shelter", region="dakhla-oued-ed-dahab", languages=["fr"])


@pytest.fixture
def shelters(tmp_path: Path) -> Directory:
    return load_directory(directory_file(tmp_path, SHELTERS))


def ladder_of(result) -> list[str]:  # type: ignore[no-untyped-def]
    return [c.partner_id for c in result.candidates]


# --- opening hours -------------------------------------------------------------------------------


def test_opening_hours_in_local_time_across_the_clock_change() -> None:
    office = parse_hours(OFFICE)
    assert office.is_open(MORNING, TZ) and not office.is_open(NIGHT, TZ)
    assert office.next_opening(NIGHT, TZ) == datetime(2026, 12, 2, 8, 30, tzinfo=TZ)
    # Friday evening: next Monday.
    friday = datetime(2026, 12, 4, 18, 0, tzinfo=TZ)
    assert office.next_opening(friday, TZ) == datetime(2026, 12, 7, 8, 30, tzinfo=TZ)
    # During Ramadan Morocco is on UTC+0: 08:30 local is 08:30 UTC, not 07:30.
    ramadan = datetime(2026, 3, 2, 6, 0, tzinfo=UTC)
    assert office.next_opening(ramadan, TZ) == datetime(2026, 3, 2, 8, 30, tzinfo=UTC)
    assert OpeningHours().is_open(NIGHT, TZ) and parse_hours("always").always


def test_a_range_past_midnight_and_several_ranges_a_day() -> None:
    night = parse_hours({"mon-sun": "20:00-08:00"})
    assert night.is_open(NIGHT, TZ) and not night.is_open(MORNING, TZ)
    split = parse_hours({"mon-fri": "08:30-12:30, 14:00-18:00", "sat": "09:00-13:00", "sun": "closed"})
    lunch = datetime(2026, 12, 2, 13, 0, tzinfo=TZ)
    assert not split.is_open(lunch, TZ) and split.next_opening(lunch, TZ) == datetime(2026, 12, 2, 14, 0, tzinfo=TZ)
    windows = split.windows(MORNING, MORNING + D, TZ)
    assert [(o.astimezone(TZ).hour, c.astimezone(TZ).hour) for o, c in windows] == [(8, 12), (14, 18), (8, 12)]


@pytest.mark.parametrize(
    ("hours", "words"),
    [
        ({"monday": "08:00-17:00"}, "partners.0.hours: monday: not a day"),
        ({"mon-fri": "8h-17h"}, "partners.0.hours: mon-fri: not a time such as 08:30"),
        ({"mon-fri": "08:00"}, "partners.0.hours: mon-fri: not a time range"),
        ({"mon-fri": "25:00-26:00"}, "not a time of day"),
        ({"sun": "closed"}, "partners.0.hours: no opening at all"),
        ("sometimes", "partners.0.hours: write 'always'"),
    ],
)
def test_bad_opening_hours_name_the_key(tmp_path: Path, hours: object, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_directory(directory_file(tmp_path, [partner("day-shelter", 1, hours=hours)]))
    assert words in str(err.value) and "partners.yaml" in str(err.value)


def test_backup_numbers_are_the_partners_and_no_one_elses(tmp_path: Path) -> None:
    directory = load_directory(PARTNERS_FILE)
    gon = directory.partner("gon-assoc")
    assert gon is not None and gon.backup_sms and gon.backup_email
    assert directory.partner_by_sms(gon.backup_sms) == gon
    assert directory.partner_by_sms("0650123460") is None  # not normalised here: the webhook does
    with pytest.raises(ConfigError, match=r"partners\.0: backup_sms: the same number as sms"):
        load_directory(directory_file(tmp_path, [partner("a", 1, backup_sms="+212650123501")]))
    with pytest.raises(ConfigError, match="the backup_sms of b is also a number of a"):
        load_directory(directory_file(tmp_path, [partner("a", 1), partner("b", 2, backup_sms="+212650123501")]))
    with pytest.raises(ConfigError, match=r"partners\.0\.backup_sms"):
        load_directory(directory_file(tmp_path, [partner("a", 1, backup_sms="not a phone")]))


# --- the ladder ----------------------------------------------------------------------------------


def test_a_full_partner_is_skipped_for_the_one_after_it(shelters: Directory) -> None:
    ranked = shelters.ranked(REQUEST)
    full = {"day-shelter": FullSpell(since=NIGHT - D, until=None)}
    result = available_ladder(ranked, full, "normal", MORNING, TZ)
    assert ladder_of(result) == ["night-shelter", "any-time-shelter"]
    [skipped] = result.skipped
    assert (skipped.partner_id, skipped.reason, skipped.until, skipped.offered_instead) == ("day-shelter", "full", None, "night-shelter")
    # The last one full: skipped with no one after it.
    result = available_ladder(ranked, {"any-time-shelter": FullSpell(NIGHT, MORNING + 3 * D)}, "normal", MORNING, TZ)
    assert [(s.partner_id, s.until, s.offered_instead) for s in result.skipped] == [("any-time-shelter", MORNING + 3 * D, None)]


def test_an_emergency_at_night_goes_first_to_partners_open_then(shelters: Directory) -> None:
    ranked = shelters.ranked(REQUEST)
    at_night = available_ladder(ranked, {}, "emergency", NIGHT, TZ)
    assert ladder_of(at_night) == ["night-shelter", "any-time-shelter", "day-shelter"]
    [closed] = at_night.skipped
    opens = datetime(2026, 12, 2, 8, 30, tzinfo=TZ)
    assert (closed.partner_id, closed.reason, closed.until, closed.offered_instead) == ("day-shelter", "closed", opens, "night-shelter")
    # In the morning the night shelter is the one closed.
    assert ladder_of(available_ladder(ranked, {}, "emergency", MORNING, TZ)) == ["day-shelter", "any-time-shelter", "night-shelter"]
    # Urgent and normal referrals keep the ranking, at night too.
    for urgency in ("urgent", "normal"):
        result = available_ladder(ranked, {}, urgency, NIGHT, TZ)
        assert ladder_of(result) == ["day-shelter", "night-shelter", "any-time-shelter"] and result.skipped == []


def test_candidates_carry_their_opening_windows_for_the_horizon(shelters: Directory) -> None:
    result = available_ladder(shelters.ranked(REQUEST), {}, "normal", NIGHT, TZ)
    day, _night, always = result.candidates
    assert always.open_windows is None
    assert day.open_windows is not None and day.open_windows[0].opens == datetime(2026, 12, 2, 8, 30, tzinfo=TZ)
    assert max(w.closes for w in day.open_windows) <= NIGHT + MATCH_HORIZON + D


@pytest.mark.parametrize(
    ("urgency", "at", "starts"),
    [
        ("emergency", NIGHT, NIGHT),  # an emergency counts from the offer, closed or not
        ("urgent", NIGHT, datetime(2026, 12, 2, 8, 30, tzinfo=TZ)),
        ("normal", NIGHT, datetime(2026, 12, 2, 8, 30, tzinfo=TZ)),
        ("urgent", MORNING, MORNING),  # open: at once
        ("normal", NIGHT + 30 * D, NIGHT + 30 * D),  # past the windows the matching gave: at once
    ],
)
def test_the_reply_period_of_an_offer_to_a_closed_partner(urgency: str, at: datetime, starts: datetime) -> None:
    windows = [OpenWindow(opens=o, closes=c) for o, c in parse_hours(OFFICE).windows(NIGHT, NIGHT + MATCH_HORIZON, TZ)]
    assert reply_period_starts(windows, at, urgency) == starts
    assert reply_period_starts(None, at, urgency) == at  # always open


# --- the matching activity: the database and the activity's clock ---------------------------------


def settings_for(make_settings, tmp_path: Path, migrated: bool = True, **extra: Any):  # type: ignore[no-untyped-def]
    settings = make_settings(referral_partners_file=directory_file(tmp_path, SHELTERS), **extra)
    if migrated:
        migrate.upgrade(settings.ledger_url)
    return settings


async def match(settings, at: datetime, urgency: str = "normal"):  # type: ignore[no-untyped-def]
    activities = AvailabilityActivities(settings, clock=lambda: at)
    return await ActivityEnvironment().run(activities.match_available_partners, REQUEST.model_copy(update={"urgency": urgency}))


def full(pid: str, at: datetime, until: datetime | None = None, state: str = "full") -> CapacityChange:
    return CapacityChange(partner_id=pid, service="shelter", state=state, until=until, channel="sms", at=at)  # type: ignore[arg-type]


async def test_full_reopened_and_a_full_that_lapses(make_settings, tmp_path: Path) -> None:
    settings = settings_for(make_settings, tmp_path)
    store = CapacityStore.from_settings(settings)
    store.record(full("day-shelter", MORNING - D))
    store.record(full("night-shelter", MORNING - D, until=MORNING + 3 * D))
    assert ladder_of(await match(settings, MORNING)) == ["any-time-shelter"]
    store.record(full("day-shelter", MORNING + H, state="open"))  # reopened
    assert ladder_of(await match(settings, MORNING + 2 * H)) == ["day-shelter", "any-time-shelter"]
    # FULL 3d: back by itself three days after it was said.
    assert ladder_of(await match(settings, MORNING + 3 * D)) == ["day-shelter", "night-shelter", "any-time-shelter"]


async def test_without_the_database_every_partner_is_matched(make_settings, tmp_path: Path) -> None:
    settings = settings_for(make_settings, tmp_path, migrated=False)
    assert ladder_of(await match(settings, MORNING)) == ["day-shelter", "night-shelter", "any-time-shelter"]


async def test_the_activity_clock_decides_who_is_open(make_settings, tmp_path: Path) -> None:
    settings = settings_for(make_settings, tmp_path)
    result = await match(settings, NIGHT, "emergency")
    assert ladder_of(result) == ["night-shelter", "any-time-shelter", "day-shelter"]
    assert [(s.partner_id, s.reason) for s in result.skipped] == [("day-shelter", "closed")]


# --- the backup number -------------------------------------------------------------------------------


def partner_notice(template: str, backup: bool, partner_id: str = "gon-assoc", number: int = 1) -> Notice:
    context = NoticeContext(code="7K3Q9", urgency="emergency", region="guelmim-oued-noun", service="shelter", deadline=MORNING)
    return Notice(recipient="partner", recipient_id=partner_id, template=template, context=context, number=number, backup_sms=backup)  # type: ignore[arg-type]


async def test_offers_go_to_the_backup_number_when_the_policy_says_so(make_settings, smtp) -> None:
    settings = make_settings()
    gon = load_directory(PARTNERS_FILE).partner("gon-assoc")
    assert gon is not None
    activities = ReferralActivities(settings)
    env = ActivityEnvironment()
    await env.run(activities.send_sms, partner_notice("offer", backup=False, number=1))
    await env.run(activities.send_sms, partner_notice("offer", backup=True, number=2))
    await env.run(activities.send_email, partner_notice("reminder", backup=True, number=3))
    sent = [(m["to"], m["id"].split("/notice-")[1]) for m in read_outbox(settings.outbox_dir)]
    assert sent == [(gon.sms, "1/sms/gon-assoc"), (gon.sms, "2/sms/gon-assoc"), (gon.backup_sms, "2/sms/gon-assoc/backup")]
    assert [m["To"] for m in smtp.messages] == [gon.email, gon.backup_email]


async def test_when_the_main_number_is_refused_the_backup_number_carries_the_offer(make_settings) -> None:
    settings = make_settings()
    gon = load_directory(PARTNERS_FILE).partner("gon-assoc")
    assert gon is not None and gon.sms and gon.backup_sms
    record_opt_out(settings, gon.sms, gon.id)
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(ReferralActivities(settings).send_sms, partner_notice("offer", backup=False))
    assert err.value.type == "OptedOut" and err.value.non_retryable  # the coordinator still hears of it
    assert [m["to"] for m in read_outbox(settings.outbox_dir)] == [gon.backup_sms]


# --- telling the coordinators ------------------------------------------------------------------------


def capacity_notice(**extra: Any) -> CapacityNotice:
    values = dict(change_id=7, partner_id="cas-assoc", state="full", scope="shelter", flipped=["shelter"], at=MORNING, until=MORNING + 3 * D, channel="sms")
    return CapacityNotice(**{**values, **extra})  # type: ignore[arg-type]


@pytest.mark.parametrize(("extra", "subject"), [({}, "Partenaire complet"), ({"state": "open", "until": None}, "de nouveau disponible")])
async def test_the_regions_coordinator_is_emailed_without_personal_data(make_settings, smtp, extra, subject: str) -> None:
    settings = make_settings()
    directory = load_directory(PARTNERS_FILE)
    coordinator = directory.coordinator("casablanca-settat")
    sent = await ActivityEnvironment().run(AvailabilityActivities(settings).tell_coordinators_of_capacity, capacity_notice(**extra))
    assert sent == 1
    [mail] = smtp.to(coordinator.email or "")
    body = mail.get_content()
    assert subject in mail["Subject"] and "cas-assoc" in body and "hébergement" in body
    for secret in (PSEUDONYM, PHONE, NOTES[:20]):
        assert secret not in body


async def test_a_national_partner_is_told_to_the_national_focal_point(make_settings, smtp) -> None:
    settings = make_settings()
    focal = load_directory(PARTNERS_FILE).national_focal_point
    notice = capacity_notice(partner_id="nat-shelter-amal", change_id=8)
    assert await ActivityEnvironment().run(AvailabilityActivities(settings).tell_coordinators_of_capacity, notice) == 1
    assert len(smtp.to(focal.email or "")) == 1


async def test_a_full_lapses_once_unless_a_later_change_decided(make_settings, tmp_path: Path) -> None:
    settings = make_settings()
    migrate.upgrade(settings.ledger_url)
    store = CapacityStore.from_settings(settings)
    ends = MORNING + 3 * D
    stored, _ = store.record(full("cas-assoc", MORNING, until=ends))
    notice = capacity_notice(change_id=stored.id)
    activities = AvailabilityActivities(settings, clock=lambda: ends)
    env = ActivityEnvironment()
    assert await env.run(activities.record_capacity_lapse, notice) == ["shelter"]
    assert await env.run(activities.record_capacity_lapse, notice) == ["shelter"]  # a retry: recorded once
    assert [c.state for c in store.changes_of(["cas-assoc"])["cas-assoc"]] == ["full", "lapsed"]
    # A FULL for ever said before the end: nothing lapses.
    other, _ = store.record(full("dra-assoc", MORNING, until=ends))
    store.record(full("dra-assoc", MORNING + D))
    assert await env.run(activities.record_capacity_lapse, capacity_notice(change_id=other.id, partner_id="dra-assoc")) == []
