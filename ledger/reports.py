"""The reports: pure functions from ledger records to one `Report`, the same for the CLI, the JSON
API and the coordinators' page.

Small-cell suppression: every count from 1 to 4 is given as the string "<5", never its value,
and a statistic that would reveal such a count (a median or 90th percentile over fewer than 5
durations, a share whose numerator or its complement is 1 to 4) is left out (None). Only the
CLI's `--no-suppression` builds a report with `suppress=False`, and the report then says so
(`suppressed: false` and a notice). Suppression is primary only: each cell is judged alone.

Dates are calendar days in the mechanism's time zone (REFERRAL_TIMEZONE): a referral belongs to
the month and the days of its start there. Durations are in hours; percentiles by nearest rank.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ledger.capacity import CapacityChange
from ledger.record import AGE_GROUPS, DECLINE_CODES, SERVICE_OUTCOMES, URGENCIES, LedgerRecord

SMALL_CELL = 5
HIDDEN: Literal["<5"] = "<5"
Count = int | Literal["<5"]
NOT_SUPPRESSED_NOTICE = "SMALL CELLS NOT SUPPRESSED (--no-suppression): counts from 1 to 4 are shown; do not publish or share this output"
# Columns of the tables keyed by code: decline codes as text, then declines without a code.
DECLINE_COLUMNS: tuple[str, ...] = (*(str(c) for c in DECLINE_CODES), "none")
OUTCOME_COLUMNS: tuple[str, ...] = (*SERVICE_OUTCOMES, "no_outcome", "open")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Filters(_Model):
    date_from: date | None = Field(default=None, description="first day of start, inclusive")
    date_to: date | None = Field(default=None, description="last day of start, inclusive")
    region: str | None = None


class KeyCount(_Model):
    key: str
    count: Count


class MonthRow(_Model):
    month: str = Field(description="YYYY-MM")
    by_urgency: dict[str, Count]


class DurationRow(_Model):
    key: str
    accepted: Count = Field(description="referrals with at least one service accepted or assigned")
    not_accepted: Count
    median_hours: float | None = Field(description="start to first acceptance; None when fewer than 5 (suppressed) or none")
    p90_hours: float | None


class PartnerRow(_Model):
    partner_id: str
    offers: Count
    accepted: Count
    declined: Count
    declined_by_code: dict[str, Count] = Field(description="decline codes 1, 2, 3, 4, 9, and `none` for a decline without a code")
    timed_out: Count
    median_reply_hours: float | None = Field(description="offer to accept or decline")
    checkins_sent: Count
    checkins_answered: Count
    accepted_before_deadline_share: float | None = Field(description="offers accepted by their deadline / offers, 0 to 1")


class EscalationRow(_Model):
    service: str
    services_escalated: Count
    escalations: Count
    alerts: Count
    coordinator_actions: Count
    median_hours_to_action: float | None = Field(description="first escalation to the coordinator's action")
    p90_hours_to_action: float | None


class OutcomeRow(_Model):
    service: str
    by_outcome: dict[str, Count] = Field(description="service outcome codes, `no_outcome` (closed without one) and `open`")


class CapacityRow(_Model):
    partner_id: str
    full: Count = Field(description="FULL said (by SMS or on the partner's page)")
    reopened: Count = Field(description="OPEN said")
    lapsed: Count = Field(description="a FULL with an end (FULL shelter 3d) that lapsed by itself")
    by_sms: Count = Field(description="FULL or OPEN by SMS")
    by_web: Count = Field(description="FULL or OPEN on the partner's page")


class Report(_Model):
    generated_at: datetime
    filters: Filters
    suppressed: bool = Field(description="true: every count from 1 to 4 is shown as \"<5\"")
    notice: str | None = None
    referrals: Count
    by_month: list[MonthRow]
    by_region: list[KeyCount]
    by_sector: list[KeyCount]
    by_indicator: list[KeyCount]
    by_age_group: list[KeyCount]
    acceptance_by_urgency: list[DurationRow]
    acceptance_by_region: list[DurationRow]
    partners: list[PartnerRow]
    escalations: list[EscalationRow]
    outcomes: list[OutcomeRow]
    capacity: list[CapacityRow] = Field(
        default_factory=list, description="partners' capacity changes made in the period (its days), by partners covering the region or national"
    )


# --- the period --------------------------------------------------------------------------


def start_bounds(date_from: date | None, date_to: date | None, tz: tzinfo) -> tuple[datetime | None, datetime | None]:
    """[from, before) in UTC for starts on the days date_from..date_to (inclusive) in `tz`."""
    low = datetime.combine(date_from, time(), tz).astimezone(UTC) if date_from else None
    high = datetime.combine(date_to + timedelta(days=1), time(), tz).astimezone(UTC) if date_to else None
    return low, high


def chosen(records: Iterable[LedgerRecord], filters: Filters, tz: tzinfo) -> list[LedgerRecord]:
    low, high = start_bounds(filters.date_from, filters.date_to, tz)
    return [
        r
        for r in records
        if (low is None or r.started_at >= low) and (high is None or r.started_at < high) and (filters.region is None or r.region == filters.region)
    ]


# --- cells -------------------------------------------------------------------------------


def _cell(suppress: bool) -> Callable[[int], Count]:
    def cell(n: int) -> Count:
        return HIDDEN if suppress and 0 < n < SMALL_CELL else n

    return cell


def _hours(delta: timedelta) -> float:
    return delta.total_seconds() / 3600


def percentile(values: list[float], share: float) -> float:
    """Nearest rank: the smallest value with at least `share` of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def _stats(values: list[float], suppress: bool) -> tuple[float | None, float | None]:
    if not values or (suppress and len(values) < SMALL_CELL):
        return None, None
    return round(statistics.median(values), 1), round(percentile(values, 0.9), 1)


def _ranked(counts: Counter[str], cell: Callable[[int], Count], order: Iterable[str] | None = None) -> list[KeyCount]:
    """Rows with a count, the largest first (cells shown as "<5" after, by key, so their order
    says nothing of their values); or in `order`, zeros included."""
    if order is not None:
        return [KeyCount(key=k, count=cell(counts.get(k, 0))) for k in order]
    rows = [KeyCount(key=k, count=cell(n)) for k, n in counts.items() if n]
    return sorted(rows, key=lambda r: (-r.count if isinstance(r.count, int) else 0, r.key))


# --- the report ----------------------------------------------------------------------------


def build_report(
    records: Iterable[LedgerRecord],
    filters: Filters,
    *,
    tz: tzinfo,
    now: datetime,
    suppress: bool = True,
    capacity_changes: Iterable[CapacityChange] = (),
) -> Report:
    chosen_records = chosen(records, filters, tz)
    cell = _cell(suppress)
    return Report(
        generated_at=now.astimezone(UTC),
        filters=filters,
        suppressed=suppress,
        notice=None if suppress else NOT_SUPPRESSED_NOTICE,
        referrals=cell(len(chosen_records)),
        by_month=by_month(chosen_records, tz, cell),
        by_region=_ranked(Counter(r.region for r in chosen_records), cell),
        by_sector=_ranked(Counter(r.sector for r in chosen_records), cell),
        by_indicator=_ranked(Counter(i for r in chosen_records for i in r.indicators), cell),
        by_age_group=_ranked(Counter(r.age_group for r in chosen_records), cell, AGE_GROUPS),
        acceptance_by_urgency=time_to_acceptance(chosen_records, lambda r: r.urgency, suppress, URGENCIES),
        acceptance_by_region=time_to_acceptance(chosen_records, lambda r: r.region, suppress),
        partners=partners(chosen_records, suppress),
        escalations=escalations(chosen_records, suppress),
        outcomes=outcomes(chosen_records, cell),
        capacity=capacity(capacity_changes, filters, tz, cell),
    )


def by_month(records: list[LedgerRecord], tz: tzinfo, cell: Callable[[int], Count]) -> list[MonthRow]:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for r in records:
        counts[r.started_at.astimezone(tz).strftime("%Y-%m")][r.urgency] += 1
    return [MonthRow(month=m, by_urgency={u: cell(counts[m][u]) for u in URGENCIES}) for m in sorted(counts)]


def first_acceptance(record: LedgerRecord) -> datetime | None:
    accepted = [s.accepted_at for s in record.services if s.accepted_at is not None]
    return min(accepted) if accepted else None


def time_to_acceptance(
    records: list[LedgerRecord], key: Callable[[LedgerRecord], str], suppress: bool, order: Iterable[str] | None = None
) -> list[DurationRow]:
    """Per key: how long from the referral's start to its first service accepted (or assigned)."""
    waits: dict[str, list[float]] = defaultdict(list)
    missing: Counter[str] = Counter()
    for r in records:
        first = first_acceptance(r)
        if first is None:
            missing[key(r)] += 1
        else:
            waits[key(r)].append(_hours(first - r.started_at))
    keys = list(order) if order is not None else sorted(set(waits) | set(missing))
    cell = _cell(suppress)
    rows = []
    for k in keys:
        median, p90 = _stats(waits.get(k, []), suppress)
        rows.append(DurationRow(key=k, accepted=cell(len(waits.get(k, []))), not_accepted=cell(missing[k]), median_hours=median, p90_hours=p90))
    return rows


def partners(records: list[LedgerRecord], suppress: bool) -> list[PartnerRow]:
    offers: Counter[str] = Counter()
    outcome: dict[str, Counter[str]] = defaultdict(Counter)
    declined_by_code: dict[str, Counter[str]] = defaultdict(Counter)
    replies: dict[str, list[float]] = defaultdict(list)
    on_time: Counter[str] = Counter()
    sent: Counter[str] = Counter()
    answered: Counter[str] = Counter()
    for r in records:
        for s in r.services:
            if s.accepted_by is not None:
                sent[s.accepted_by] += s.checkins_sent
                answered[s.accepted_by] += s.checkins_answered
            for o in s.offers:
                offers[o.partner_id] += 1
                if o.outcome is not None:
                    outcome[o.partner_id][o.outcome] += 1
                if o.outcome == "declined":
                    declined_by_code[o.partner_id][str(o.decline_code) if o.decline_code is not None else "none"] += 1
                if o.outcome in ("accepted", "declined") and o.replied_at is not None:
                    replies[o.partner_id].append(_hours(o.replied_at - o.offered_at))
                if o.outcome == "accepted" and o.replied_at is not None and o.replied_at <= o.deadline:
                    on_time[o.partner_id] += 1
    cell = _cell(suppress)
    rows = []
    for p in sorted(set(offers) | set(sent)):
        median, _ = _stats(replies.get(p, []), suppress)
        rows.append(
            PartnerRow(
                partner_id=p,
                offers=cell(offers[p]),
                accepted=cell(outcome[p]["accepted"]),
                declined=cell(outcome[p]["declined"]),
                declined_by_code={c: cell(declined_by_code[p][c]) for c in DECLINE_COLUMNS},
                timed_out=cell(outcome[p]["timed_out"]),
                median_reply_hours=median,
                checkins_sent=cell(sent[p]),
                checkins_answered=cell(answered[p]),
                accepted_before_deadline_share=_share(on_time[p], offers[p], suppress),
            )
        )
    return rows


def _share(part: int, whole: int, suppress: bool) -> float | None:
    """part / whole, unless it would give away a count of 1 to 4 (the part, or the rest)."""
    if whole == 0:
        return None
    if suppress and (0 < part < SMALL_CELL or 0 < whole - part < SMALL_CELL):
        return None
    return round(part / whole, 3)


def escalations(records: list[LedgerRecord], suppress: bool) -> list[EscalationRow]:
    escalated: Counter[str] = Counter()
    events: Counter[str] = Counter()
    alerts: Counter[str] = Counter()
    actions: Counter[str] = Counter()
    waits: dict[str, list[float]] = defaultdict(list)
    for r in records:
        for s in r.services:
            if s.escalations == 0 and s.alerts == 0:
                continue
            escalated[s.service] += 1
            events[s.service] += s.escalations
            alerts[s.service] += s.alerts
            if s.coordinator_acted_at is not None:
                actions[s.service] += 1
                if s.first_escalated_at is not None and s.coordinator_acted_at >= s.first_escalated_at:
                    waits[s.service].append(_hours(s.coordinator_acted_at - s.first_escalated_at))
    cell = _cell(suppress)
    rows = []
    for service in sorted(escalated):
        median, p90 = _stats(waits.get(service, []), suppress)
        rows.append(
            EscalationRow(
                service=service,
                services_escalated=cell(escalated[service]),
                escalations=cell(events[service]),
                alerts=cell(alerts[service]),
                coordinator_actions=cell(actions[service]),
                median_hours_to_action=median,
                p90_hours_to_action=p90,
            )
        )
    return rows


def outcomes(records: list[LedgerRecord], cell: Callable[[int], Count]) -> list[OutcomeRow]:
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for r in records:
        for s in r.services:
            column = s.outcome or ("no_outcome" if r.closed_at is not None or s.completed_at is not None else "open")
            counts[s.service][column] += 1
    return [OutcomeRow(service=s, by_outcome={c: cell(counts[s][c]) for c in OUTCOME_COLUMNS}) for s in sorted(counts)]


def capacity(changes: Iterable[CapacityChange], filters: Filters, tz: tzinfo, cell: Callable[[int], Count]) -> list[CapacityRow]:
    """Per partner: the capacity changes made in the period, by partners covering the region."""
    low, high = start_bounds(filters.date_from, filters.date_to, tz)
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for c in changes:
        if (low is not None and c.at < low) or (high is not None and c.at >= high):
            continue
        if filters.region is not None and c.regions and filters.region not in c.regions:
            continue
        counts[c.partner_id][{"full": "full", "open": "reopened", "lapsed": "lapsed"}[c.state]] += 1
        if c.channel in ("sms", "web"):
            counts[c.partner_id][f"by_{c.channel}"] += 1
    return [
        CapacityRow(partner_id=p, **{column: cell(counts[p][column]) for column in ("full", "reopened", "lapsed", "by_sms", "by_web")})
        for p in sorted(counts)
    ]
