"""The search attributes operators filter on in the Temporal UI. None holds personal data.

Registered at server start (make run, tests, docker-compose) from `ALL` below.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from temporalio.common import SearchAttributeKey, SearchAttributePair, SearchAttributeUpdate, TypedSearchAttributes

REFERRAL_STAGE = SearchAttributeKey.for_keyword("ReferralStage")
REFERRAL_URGENCY = SearchAttributeKey.for_keyword("ReferralUrgency")
REFERRAL_REGION = SearchAttributeKey.for_keyword("ReferralRegion")
REFERRAL_SERVICES = SearchAttributeKey.for_keyword_list("ReferralServices")
AWAITING_PARTNERS = SearchAttributeKey.for_keyword_list("AwaitingPartners")
# Partners offered the referral now or serving it: who may reply by SMS without a code.
REFERRAL_PARTNERS = SearchAttributeKey.for_keyword_list("ReferralPartners")
ESCALATION_LEVEL = SearchAttributeKey.for_int("EscalationLevel")
# Earliest deadline of a reply awaited now; lets `referral list --overdue` find stuck referrals.
REPLY_DUE_BY = SearchAttributeKey.for_datetime("ReplyDueBy")

ALL = (
    REFERRAL_STAGE,
    REFERRAL_URGENCY,
    REFERRAL_REGION,
    REFERRAL_SERVICES,
    AWAITING_PARTNERS,
    REFERRAL_PARTNERS,
    ESCALATION_LEVEL,
    REPLY_DUE_BY,
)


def initial(region: str, urgency: str, services: Sequence[str]) -> TypedSearchAttributes:
    """Set at start, so a referral is findable before its first workflow task runs."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(REFERRAL_STAGE, "identification"),
            SearchAttributePair(REFERRAL_URGENCY, urgency),
            SearchAttributePair(REFERRAL_REGION, region),
            SearchAttributePair(REFERRAL_SERVICES, list(services)),
            SearchAttributePair(ESCALATION_LEVEL, 0),
        ]
    )


def current(
    stage: str,
    urgency: str,
    region: str,
    services: list[str],
    awaiting: list[str],
    engaged: list[str],
    level: int,
    due: datetime | None,
) -> list[SearchAttributeUpdate]:
    """Everything the referral shows now, upserted whenever one of them changes."""
    return [
        REFERRAL_STAGE.value_set(stage),
        REFERRAL_URGENCY.value_set(urgency),
        REFERRAL_REGION.value_set(region),
        REFERRAL_SERVICES.value_set(services),
        AWAITING_PARTNERS.value_set(awaiting),
        REFERRAL_PARTNERS.value_set(engaged),
        ESCALATION_LEVEL.value_set(level),
        REPLY_DUE_BY.value_set(due) if due else REPLY_DUE_BY.value_unset(),
    ]
