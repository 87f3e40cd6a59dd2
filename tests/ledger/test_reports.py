"""Every aggregate of the reports over a hand-made ledger, with and without small-cell suppression.

The ledger (times in UTC, the report's time zone UTC unless said):
- 6 normal referrals in January, Oriental, agriculture, adults, indicator deception: shelter
  offered to cas-assoc, accepted after 1..6 h (deadline 4 h), 2 check-ins sent and 1 answered
  each; 5 delivered, 1 the person declined.
- 2 urgent referrals in January, Souss-Massa, domestic work, minors, deception and isolation:
  shelter offered to p-slow, timed out; the first then accepted by cas-assoc after 1 h (open);
  the second escalated, 3 alerts, a coordinator acted 2 h later (not needed), never accepted.
- 5 emergency referrals in February, Oriental, construction, age unknown, closed: medical
  declined by p-decliner after 15 min (codes 1, 1, 2, 9, none), then accepted by med-2 at
  0.5, 1, 1, 2 and 10 h from the start; each escalated twice, the coordinator acting 1..5 h
  after the first escalation; no outcome recorded.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.record import LedgerRecord
from ledger.report_output import CSV_COLUMNS, to_csv, to_text
from ledger.reports import HIDDEN, NOT_SUPPRESSED_NOTICE, Filters, Report, build_report, percentile
from tests.ledger.data import HOUR, offer, referral, service

JAN = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
FEB = datetime(2026, 2, 3, 14, 0, tzinfo=UTC)
NOW = datetime(2026, 3, 1, tzinfo=UTC)


def normal(i: int) -> LedgerRecord:
    start = JAN + i * 24 * HOUR
    shelter = service(
        "shelter", [offer("cas-assoc", at=start, after=i, within=4)],
        checkins_sent=2, checkins_answered=1, outcome="delivered" if i < 6 else "person_declined",
    )  # fmt: skip
    return referral(started=start, urgency="normal", region="oriental", sector="agriculture", age_group="adult", indicators=["deception"], services=[shelter])


def urgent(first: bool) -> LedgerRecord:
    start = JAN + (40 if first else 50) * HOUR
    common = dict(urgency="urgent", region="souss-massa", sector="domestic_work", age_group="minor", minor=True, indicators=["deception", "isolation"])
    timed_out = offer("p-slow", at=start, after=None, outcome="timed_out", within=4)
    if first:
        return referral(started=start, services=[service("shelter", [timed_out, offer("cas-assoc", at=start, after=1, within=4)])], **common)
    shelter = service(
        "shelter", [timed_out], escalations=1, first_escalated_at=start + 4 * HOUR, last_escalated_at=start + 4 * HOUR, alerts=3,
        coordinator_acted_at=start + 6 * HOUR, outcome="not_needed", completed_at=start + 6 * HOUR,
    )  # fmt: skip
    return referral(started=start, services=[shelter], closed_at=start + 6 * HOUR, closure_reason="closed", **common)


def emergency(n: int, accepted_after: float, code: int | None) -> LedgerRecord:
    start = FEB + n * 24 * HOUR
    declined = offer("p-decliner", at=start, after=0.25, outcome="declined", decline_code=code, within=1)
    accepted = offer("med-2", at=start + 0.25 * HOUR, after=accepted_after - 0.25, within=4)
    medical = service(
        "medical", [declined, accepted], escalations=2, first_escalated_at=start + HOUR, last_escalated_at=start + 2 * HOUR,
        coordinator_acted_at=start + HOUR + (n + 1) * HOUR,
    )  # fmt: skip
    return referral(
        started=start, urgency="emergency", region="oriental", sector="construction", age_group="unknown", indicators=[],
        services=[medical], closed_at=start + 30 * HOUR, closure_reason="completed",
    )  # fmt: skip


LEDGER = [
    *(normal(i) for i in range(1, 7)),
    urgent(True),
    urgent(False),
    *(emergency(n, after, code) for n, (after, code) in enumerate([(0.5, 1), (1, 1), (1, 2), (2, 9), (10, None)])),
]


def report(suppress: bool = True, tz=UTC, **filters) -> Report:
    return build_report(LEDGER, Filters(**filters), tz=tz, now=NOW, suppress=suppress)


def rows(table) -> dict:
    return {r.model_dump()[next(iter(r.model_dump()))]: r.model_dump() for r in table}


def test_counts_by_month_and_urgency() -> None:
    r = report()
    assert r.referrals == 13
    assert [m.model_dump() for m in r.by_month] == [
        {"month": "2026-01", "by_urgency": {"normal": 6, "urgent": HIDDEN, "emergency": 0}},
        {"month": "2026-02", "by_urgency": {"normal": 0, "urgent": 0, "emergency": 5}},
    ]
    assert report(suppress=False).by_month[0].by_urgency["urgent"] == 2


def test_counts_by_region_sector_indicator_and_age_group() -> None:
    r = report()
    assert [(k.key, k.count) for k in r.by_region] == [("oriental", 11), ("souss-massa", HIDDEN)]
    assert [(k.key, k.count) for k in r.by_sector] == [("agriculture", 6), ("construction", 5), ("domestic_work", HIDDEN)]
    assert [(k.key, k.count) for k in r.by_indicator] == [("deception", 8), ("isolation", HIDDEN)]
    assert [(k.key, k.count) for k in r.by_age_group] == [("adult", 6), ("minor", HIDDEN), ("unknown", 5)]
    raw = report(suppress=False)
    assert [(k.key, k.count) for k in raw.by_sector] == [("agriculture", 6), ("construction", 5), ("domestic_work", 2)]
    assert [(k.key, k.count) for k in raw.by_age_group] == [("adult", 6), ("minor", 2), ("unknown", 5)]


def test_time_to_first_acceptance_by_urgency_and_region() -> None:
    by_urgency = rows(report().acceptance_by_urgency)
    assert by_urgency["normal"] == {"key": "normal", "accepted": 6, "not_accepted": 0, "median_hours": 3.5, "p90_hours": 6.0}
    assert by_urgency["urgent"] == {"key": "urgent", "accepted": HIDDEN, "not_accepted": HIDDEN, "median_hours": None, "p90_hours": None}
    assert by_urgency["emergency"] == {"key": "emergency", "accepted": 5, "not_accepted": 0, "median_hours": 1.0, "p90_hours": 10.0}
    assert rows(report(suppress=False).acceptance_by_urgency)["urgent"] == {
        "key": "urgent", "accepted": 1, "not_accepted": 1, "median_hours": 1.0, "p90_hours": 1.0
    }  # fmt: skip
    by_region = rows(report().acceptance_by_region)
    # Oriental: 1..6 h and 0.5, 1, 1, 2, 10 h: eleven waits, the 6th is 2 h, the 10th 6 h.
    assert by_region["oriental"] == {"key": "oriental", "accepted": 11, "not_accepted": 0, "median_hours": 2.0, "p90_hours": 6.0}
    assert by_region["souss-massa"]["median_hours"] is None and by_region["souss-massa"]["accepted"] == HIDDEN


def test_per_partner() -> None:
    partners = rows(report().partners)
    assert set(partners) == {"cas-assoc", "p-decliner", "med-2", "p-slow"}
    cas = partners["cas-assoc"]
    assert (cas["offers"], cas["accepted"], cas["declined"], cas["timed_out"]) == (7, 7, 0, 0)
    assert cas["median_reply_hours"] == 3.0  # 1, 1, 2, 3, 4, 5, 6
    assert (cas["checkins_sent"], cas["checkins_answered"]) == (12, 6)
    assert cas["accepted_before_deadline_share"] is None  # 5 of 7 on time: the 2 late would show
    decliner = partners["p-decliner"]
    assert (decliner["offers"], decliner["declined"], decliner["accepted"]) == (5, 5, 0)
    assert decliner["declined_by_code"] == {"1": HIDDEN, "2": HIDDEN, "3": 0, "4": 0, "9": HIDDEN, "none": HIDDEN}
    assert decliner["median_reply_hours"] == 0.2 and decliner["accepted_before_deadline_share"] == 0.0
    med = partners["med-2"]
    assert (med["offers"], med["accepted"], med["median_reply_hours"]) == (5, 5, 0.8)  # 0.25, 0.75, 0.75, 1.75, 9.75
    slow = partners["p-slow"]
    assert (slow["offers"], slow["timed_out"], slow["median_reply_hours"], slow["accepted_before_deadline_share"]) == (HIDDEN, HIDDEN, None, None)

    raw = rows(report(suppress=False).partners)
    assert raw["cas-assoc"]["accepted_before_deadline_share"] == round(5 / 7, 3)
    assert raw["p-decliner"]["declined_by_code"] == {"1": 2, "2": 1, "3": 0, "4": 0, "9": 1, "none": 1}
    assert raw["med-2"]["accepted_before_deadline_share"] == 0.8
    assert (raw["p-slow"]["offers"], raw["p-slow"]["timed_out"]) == (2, 2)


def test_escalations_alerts_and_time_to_coordinator_action() -> None:
    escalations = rows(report().escalations)
    assert escalations["medical"] == {
        "service": "medical", "services_escalated": 5, "escalations": 10, "alerts": 0, "coordinator_actions": 5,
        "median_hours_to_action": 3.0, "p90_hours_to_action": 5.0,
    }  # fmt: skip
    assert escalations["shelter"] == {
        "service": "shelter", "services_escalated": HIDDEN, "escalations": HIDDEN, "alerts": HIDDEN, "coordinator_actions": HIDDEN,
        "median_hours_to_action": None, "p90_hours_to_action": None,
    }  # fmt: skip
    raw = rows(report(suppress=False).escalations)["shelter"]
    assert (raw["escalations"], raw["alerts"], raw["median_hours_to_action"]) == (1, 3, 2.0)


def test_outcomes_by_service() -> None:
    outcomes = rows(report().outcomes)
    assert outcomes["shelter"]["by_outcome"] == {
        "delivered": 5, "person_declined": HIDDEN, "lost_contact": 0, "transferred": 0, "not_needed": HIDDEN, "other": 0,
        "no_outcome": 0, "open": HIDDEN,
    }  # fmt: skip
    assert outcomes["medical"]["by_outcome"]["no_outcome"] == 5
    assert rows(report(suppress=False).outcomes)["shelter"]["by_outcome"]["open"] == 1


def test_filters_by_period_and_region() -> None:
    assert report(region="souss-massa").referrals == HIDDEN
    assert report(region="souss-massa", suppress=False).referrals == 2
    assert report(region="oriental").referrals == 11
    february = report(date_from=date(2026, 2, 1))
    assert february.referrals == 5 and [m.month for m in february.by_month] == ["2026-02"]
    assert report(date_to=date(2026, 1, 31)).referrals == 8
    # Days are whole and inclusive: the last emergency started on 7 February at 14:00.
    assert report(date_from=date(2026, 2, 7), date_to=date(2026, 2, 7), suppress=False).referrals == 1
    assert report(date_from=date(2026, 3, 1)).referrals == 0 and report(date_from=date(2026, 3, 1)).partners == []


def test_months_and_days_are_those_of_the_report_time_zone() -> None:
    late = referral(started=datetime(2026, 1, 31, 23, 30, tzinfo=UTC))
    plus_one = timezone(timedelta(hours=1))
    ledger = [late]
    assert build_report(ledger, Filters(), tz=UTC, now=NOW, suppress=False).by_month[0].month == "2026-01"
    assert build_report(ledger, Filters(), tz=plus_one, now=NOW, suppress=False).by_month[0].month == "2026-02"
    assert build_report(ledger, Filters(date_to=date(2026, 1, 31)), tz=plus_one, now=NOW, suppress=False).referrals == 0
    assert build_report(ledger, Filters(date_to=date(2026, 1, 31)), tz=UTC, now=NOW, suppress=False).referrals == 1


def test_percentiles_by_nearest_rank() -> None:
    assert percentile([5.0], 0.9) == 5.0
    assert percentile([float(n) for n in range(1, 11)], 0.9) == 9.0
    assert percentile([float(n) for n in range(1, 12)], 0.9) == 10.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0


def _ints(node) -> list[int]:
    if isinstance(node, bool):
        return []
    if isinstance(node, int):
        return [node]
    if isinstance(node, dict):
        return [i for v in node.values() for i in _ints(v)]
    if isinstance(node, list):
        return [i for v in node for i in _ints(v)]
    return []


def test_no_count_from_1_to_4_in_any_output_when_suppressed() -> None:
    r = report()
    assert r.suppressed is True and r.notice is None
    assert not [n for n in _ints(r.model_dump(mode="json")) if 0 < n < 5]
    lines = to_csv(r).splitlines()
    assert lines[0] == ",".join(CSV_COLUMNS)
    values = [line.rsplit(",", 1)[1] for line in lines[1:]]
    assert HIDDEN in values and not {"1", "2", "3", "4"} & set(values)
    table_lines = [line for line in to_text(r).splitlines() if line.startswith("  ")]
    assert table_lines and not {"1", "2", "3", "4"} & {cell for line in table_lines for cell in line.split()}


def test_without_suppression_every_output_says_so() -> None:
    r = report(suppress=False)
    assert r.suppressed is False and r.notice == NOT_SUPPRESSED_NOTICE
    assert {1, 2} <= set(_ints(r.model_dump(mode="json")))
    assert json.loads(r.model_dump_json())["notice"] == NOT_SUPPRESSED_NOTICE
    assert f"report,notice,,{NOT_SUPPRESSED_NOTICE}" in to_csv(r).splitlines()
    text = to_text(r)
    assert text.startswith(f"*** {NOT_SUPPRESSED_NOTICE} ***") and text.rstrip().endswith(f"*** {NOT_SUPPRESSED_NOTICE} ***")


def test_the_csv_holds_every_table() -> None:
    lines = to_csv(report()).splitlines()
    tables = {line.split(",", 1)[0] for line in lines[1:]}
    assert tables == {
        "report", "referrals", "by_month", "by_region", "by_sector", "by_indicator", "by_age_group", "acceptance_by_urgency",
        "acceptance_by_region", "partners", "escalations", "outcomes",
    }  # fmt: skip
    assert "partners,p-decliner,declined_by_code.1,<5" in lines
    assert "by_month,2026-01,normal,6" in lines
    assert "acceptance_by_urgency,urgent,median_hours," in lines  # left out: fewer than 5


_times = st.integers(min_value=0, max_value=400).map(lambda h: JAN + h * HOUR)


@st.composite
def ledgers(draw) -> list[LedgerRecord]:
    out = []
    for _ in range(draw(st.integers(0, 25))):
        start = draw(_times)
        made = []
        for partner in draw(st.lists(st.sampled_from(["a-1", "a-2", "a-3"]), max_size=3)):
            outcome = draw(st.sampled_from(["accepted", "declined", "timed_out", None]))
            after = None if outcome in ("timed_out", None) else draw(st.floats(0.1, 50))
            code = draw(st.sampled_from([1, 2, 9, None])) if outcome == "declined" else None
            made.append(offer(partner, at=start, after=after, outcome=outcome, decline_code=code))
        extra = dict(escalations=draw(st.integers(0, 3)), alerts=draw(st.integers(0, 3)), checkins_sent=draw(st.integers(0, 3)))
        out.append(
            referral(
                started=start, urgency=draw(st.sampled_from(["normal", "urgent", "emergency"])),
                region=draw(st.sampled_from(["oriental", "souss-massa", "fes-meknes"])), services=[service("shelter", made, **extra)],
            )
        )  # fmt: skip
    return out


@settings(max_examples=60, derandomize=True, database=None, deadline=None)
@given(ledgers())
def test_suppression_holds_for_any_ledger(ledger: list[LedgerRecord]) -> None:
    r = build_report(ledger, Filters(), tz=UTC, now=NOW)
    assert not [n for n in _ints(r.model_dump(mode="json")) if 0 < n < 5]
    raw = build_report(ledger, Filters(), tz=UTC, now=NOW, suppress=False)
    assert raw.referrals == len(ledger)
