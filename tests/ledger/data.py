"""A hand-made ledger: builders with defaults that read as a case, so each test says only what matters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from ledger.record import LedgerRecord, OfferRecord, ServiceRecord

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def offer(
    partner: str = "cas-assoc", at: datetime = T0, after: float | None = 1.0, outcome: str | None = "accepted", within: float = 4.0, **extra: Any
) -> OfferRecord:
    """An offer made `at`, answered `after` hours (None: not answered), deadline `within` hours."""
    replied = at + after * HOUR if after is not None else None
    return OfferRecord(partner_id=partner, offered_at=at, deadline=at + within * HOUR, replied_at=replied, outcome=outcome, **extra)


def service(name: str = "shelter", offers: list[OfferRecord] | None = None, **extra: Any) -> ServiceRecord:
    made = offers if offers is not None else [offer()]
    accepted = next((o for o in made if o.outcome == "accepted"), None)
    values: dict[str, Any] = {"service": name, "stage": "follow_up" if accepted else "awaiting_acceptance", "offers": made}
    if accepted is not None:
        values.update(accepted_at=accepted.replied_at, accepted_by=accepted.partner_id)
    values.update(extra)
    return ServiceRecord(**values)


_counter = iter(range(10**6))
ALPHABET = "34679ACDEFGHJKMNPQRTUVWXY"


def next_code() -> str:
    n = next(_counter)
    chars = []
    for _ in range(5):
        n, i = divmod(n, len(ALPHABET))
        chars.append(ALPHABET[i])
    return "".join(chars)


def referral(started: datetime = T0, services: list[ServiceRecord] | None = None, **extra: Any) -> LedgerRecord:
    values: dict[str, Any] = {
        "code": next_code(),
        "started_at": started,
        "region": "oriental",
        "urgency": "normal",
        "sector": "agriculture",
        "indicators": ["deception"],
        "age_group": "adult",
        "sex": "female",
        "nationality": "CI",
        "languages_count": 2,
        "updated_at": started,
        "services": services if services is not None else [service(offers=[offer(at=started)])],
    }
    values.update(extra)
    return LedgerRecord(**values)
