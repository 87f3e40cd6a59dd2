"""The referral page of a referral left escalated for weeks: who the last alert reached, when the
next one goes, when the reflection period ends, in the three languages; and the same in the
Temporal UI's details. The status is made here (no server): only the page is under test."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from html import unescape

import pytest

from starter import referrals
from tests.cases import adult_intake
from tests.web.test_forms import browser_like, log_in, web_settings
from workflows import projection
from workflows.intake import assess
from workflows.models import Attempt, ReferralStatus, ServiceStatus

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def escalated_status() -> ReferralStatus:
    intake = adult_intake(needs=["shelter", "medical"])
    shelter = ServiceStatus(
        service="shelter",
        stage="escalated",
        candidates=["cas-assoc"],
        attempts=[Attempt(partner_id="cas-assoc", offered_at=T0, remind_at=T0 + timedelta(hours=12), deadline=T0 + timedelta(hours=24), outcome="timed_out")],
        escalation_level=3,
        escalated_alerts=5,
        last_alert_at=T0 + timedelta(days=3, hours=4),
        last_alerted=["coordinator", "national_focal_point"],
        next_alert_at=T0 + timedelta(days=4, hours=4),
    )
    medical = ServiceStatus(service="medical", stage="follow_up", partner_id="cas-clinic", accepted_at=T0 + timedelta(hours=1))
    return ReferralStatus(
        code="7K3Q9",
        workflow_id="referral-7K3Q9",
        external_ref=intake.external_ref,
        stage="escalated",
        urgency="normal",
        region="casablanca-settat",
        started_at=T0,
        assessment=assess(intake),
        services=[shelter, medical],
        escalation_level=3,
        awaiting_partners=[],
        reply_due_by=None,
        reflection_ends_at=T0 + timedelta(days=30),
    )


@pytest.mark.parametrize(
    ("lang", "words"),
    [
        ("fr", ["Dernière alerte", "la coordination régionale, le point focal national", "Prochaine alerte", "Fin du délai de réflexion"]),
        ("en", ["Last alert", "the regional coordinator, the national focal point", "Next alert", "Reflection period ends"]),
        ("ar", ["آخر تنبيه", "التنسيق الجهوي, نقطة الاتصال الوطنية", "التنبيه التالي", "نهاية مهلة التفكير"]),
    ],
)
async def test_the_page_shows_the_alerts_and_the_reflection_period(make_settings, monkeypatch, lang: str, words: list[str]) -> None:
    status = escalated_status()

    async def get_status(client, code):  # type: ignore[no-untyped-def]
        return status

    monkeypatch.setattr(referrals, "get_status", get_status)
    async with browser_like(web_settings(make_settings), client=object()) as http:
        await log_in(http)
        page = await http.get(f"/referrals/7K3Q9?lang={lang}")
    assert page.status_code == 200, page.text[:500]
    html = unescape(page.text)
    for word in words:
        assert word in html, word
    # Times in the page's time zone (Africa/Casablanca, UTC+1 here): last 04/12 14:00, next 05/12 14:00.
    assert 'id="last-alert-shelter">04/12/2026 14:00' in html
    assert 'id="next-alert-shelter">05/12/2026 14:00' in html
    assert 'id="reflection-ends">31/12/2026 10:00' in html
    assert 'id="last-alert-medical"' not in html and 'id="next-alert-medical"' not in html


def test_the_ui_details_show_the_alerts():
    status = escalated_status()
    text = projection.details_markdown(status.code, status.stage, status.urgency, status.services, None)
    assert "- `shelter`: alert 5 sent 2026-12-04 13:00 UTC to coordinator and national focal point; next alert 2026-12-05 13:00 UTC" in text
    assert "`medical`" not in text
