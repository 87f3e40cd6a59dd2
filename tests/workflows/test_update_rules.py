"""The update validators' rules for the outcome codes (workflows/update_rules.py), pure: a
decline_code only with a decline, an outcome only when a coordinator ends services."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from temporalio.exceptions import ApplicationError

from ledger.record import DECLINE_CODES, SERVICE_OUTCOMES
from workflows.models import COORDINATOR_ACTIONS, PARTNER_ACTIONS, Attempt, CoordinatorAction, PartnerReply, ServiceStatus
from workflows.update_rules import check_coordinator_action, reply_targets

T0 = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
REF = "R-7K3Q9"


def offered(partner_id: str = "cas-assoc") -> ServiceStatus:
    attempt = Attempt(partner_id=partner_id, offered_at=T0, remind_at=T0 + timedelta(hours=1), deadline=T0 + timedelta(hours=2))
    return ServiceStatus(service="shelter", stage="awaiting_acceptance", partner_id=partner_id, attempts=[attempt])


def accepted(partner_id: str = "cas-assoc") -> ServiceStatus:
    status = offered(partner_id)
    status.attempts[0].outcome = "accepted"
    return status.model_copy(update={"stage": "follow_up", "accepted_at": T0 + timedelta(minutes=5)})


def rejection(call) -> ApplicationError:
    with pytest.raises(ApplicationError) as caught:
        call()
    return caught.value


@pytest.mark.parametrize("decline_code", sorted(DECLINE_CODES))
def test_a_decline_takes_any_code_or_none(decline_code: int) -> None:
    for code in (decline_code, None):
        reply = PartnerReply(partner_id="cas-assoc", action="decline", decline_code=code)
        assert [s.service for s in reply_targets([offered()], set(), reply, ref=REF, closed=False)] == ["shelter"]
    shouted = PartnerReply(partner_id="cas-assoc", action="DECLINE", decline_code=decline_code)
    assert reply_targets([offered()], set(), shouted, ref=REF, closed=False)


@pytest.mark.parametrize("action", [a for a in PARTNER_ACTIONS if a != "decline"])
def test_a_decline_code_with_another_reply_is_refused_naming_the_field(action: str) -> None:
    reply = PartnerReply(partner_id="cas-assoc", action=action, decline_code=1)
    for services in ([offered()], [accepted()]):
        err = rejection(lambda s=services: reply_targets(s, set(), reply, ref=REF, closed=False))
        assert err.type == "invalid" and err.message.startswith("decline_code:") and action in err.message
    # Without the code the same reply is judged as before (accept applies to the offer).
    if action == "accept":
        assert reply_targets([offered()], set(), PartnerReply(partner_id="cas-assoc", action=action), ref=REF, closed=False)


@pytest.mark.parametrize("outcome", SERVICE_OUTCOMES)
def test_close_and_cancel_take_any_outcome_or_none(outcome: str) -> None:
    for action in ("close", "cancel"):
        for given in (outcome, None):
            check_coordinator_action([offered()], set(), CoordinatorAction(action=action, outcome=given), ref=REF, closed=False)
    check_coordinator_action([offered()], set(), CoordinatorAction(action="close", service="shelter", outcome=outcome), ref=REF, closed=False)


def test_an_outcome_with_assign_is_refused_naming_the_field() -> None:
    action = CoordinatorAction(action="assign", service="shelter", partner_id="nat-shelter-amal", outcome="delivered")
    err = rejection(lambda: check_coordinator_action([offered()], set(), action, ref=REF, closed=False))
    assert err.type == "invalid" and err.message == "outcome: only with close or cancel, not assign"
    check_coordinator_action([offered()], set(), action.model_copy(update={"outcome": None}), ref=REF, closed=False)


@pytest.mark.parametrize("outcome", SERVICE_OUTCOMES)
def test_a_withdrawal_of_consent_is_the_person_declining(outcome: str) -> None:
    action = CoordinatorAction(action="withdraw_consent", outcome=outcome)
    if outcome == "person_declined":
        check_coordinator_action([offered()], set(), action, ref=REF, closed=False)
    else:
        err = rejection(lambda: check_coordinator_action([offered()], set(), action, ref=REF, closed=False))
        assert err.type == "invalid" and err.message == f"outcome: a withdrawal of consent is person_declined, not {outcome}"
    check_coordinator_action([offered()], set(), CoordinatorAction(action="withdraw_consent"), ref=REF, closed=False)


def test_the_field_is_named_before_the_state_is_judged() -> None:
    """Bad input is bad whatever the referral's state: a closed referral names the field first."""
    reply = PartnerReply(partner_id="cas-assoc", action="accept", decline_code=2)
    assert rejection(lambda: reply_targets([offered()], set(), reply, ref=REF, closed=True)).type == "invalid"
    action = CoordinatorAction(action="assign", service="shelter", partner_id="x", outcome="other")
    assert rejection(lambda: check_coordinator_action([offered()], set(), action, ref=REF, closed=True)).type == "invalid"
    # A right combination on a closed referral is refused for being closed.
    closing = CoordinatorAction(action="close", outcome="delivered")
    assert rejection(lambda: check_coordinator_action([offered()], set(), closing, ref=REF, closed=True)).type == "referral_closed"


def test_every_action_is_covered() -> None:
    assert set(COORDINATOR_ACTIONS) == {"assign", "cancel", "close", "withdraw_consent"}
