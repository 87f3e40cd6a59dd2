"""The search attributes operators filter on in the Temporal UI. None holds personal data.

Registered at server start (make run, tests, docker-compose) from `ALL` below.
"""

from collections.abc import Sequence

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

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
