"""Which partner replies and coordinator actions apply, and why not: the rules of
ReferralWorkflow's update validators, pure over the services' statuses.

A refusal is an `ApplicationError` whose type is one of `models.REJECTION_TYPES` and whose
message names the referral (`ref`, e.g. "R-12345") but nothing about the person. `done` names
the services completed or closed by hand whose loop may not have marked them so yet.

The outcome codes (ledger.record) go with one action each: a `decline_code` only with a decline;
an `outcome` only when a coordinator ends services: `close` (one service or the referral) and
`cancel`; a withdrawal of consent is the person declining, so it takes no other outcome. Both
are optional here, so clients from before the codes still work; the CLI, API and pages ask for
an outcome on `close`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from temporalio.exceptions import ApplicationError

from ledger.record import ServiceOutcome
from workflows.models import (
    COORDINATOR_ACTIONS,
    PARTNER_ACTIONS,
    CoordinatorAction,
    PartnerReply,
    RejectionKind,
    ServiceStatus,
)
from workflows.projection import open_checkin, passed_over, pending_attempt

# The coordinator's actions that end services and may say how (ledger.record.SERVICE_OUTCOMES).
OUTCOME_ACTIONS = ("close", "cancel")
# What a withdrawal of consent makes of the services still open.
CONSENT_WITHDRAWN_OUTCOME: ServiceOutcome = "person_declined"


def reject(kind: RejectionKind, message: str) -> ApplicationError:
    return ApplicationError(message, type=kind, non_retryable=True)


def misplaced_decline_code(action: str, decline_code: int | None) -> str | None:
    """Why a reply's decline_code does not go with its action (naming the field), or None."""
    action = action.lower()
    if decline_code is not None and action != "decline":
        return f"decline_code: only with decline, not {action}"
    return None


def misplaced_outcome(action: str, outcome: str | None) -> str | None:
    """Why a coordinator's outcome does not go with the action (naming the field), or None."""
    if outcome is None or action in OUTCOME_ACTIONS:
        return None
    if action != "withdraw_consent":
        return f"outcome: only with {' or '.join(OUTCOME_ACTIONS)}, not {action}"
    if outcome != CONSENT_WITHDRAWN_OUTCOME:
        return f"outcome: a withdrawal of consent is {CONSENT_WITHDRAWN_OUTCOME}, not {outcome}"
    return None


def _offered_now(s: ServiceStatus, partner_id: str) -> bool:
    attempt = pending_attempt(s)
    return attempt is not None and attempt.partner_id == partner_id


def reply_targets(
    services: Sequence[ServiceStatus], done: Collection[str], reply: PartnerReply, *, ref: str, closed: bool
) -> list[ServiceStatus]:
    """The services a partner's reply applies to; raises the reason it applies to none."""
    action = reply.action.lower()
    if action not in PARTNER_ACTIONS:
        raise reject("unknown_action", f"unknown command {reply.action!r}")
    if problem := misplaced_decline_code(action, reply.decline_code):
        raise reject("invalid", problem)
    if closed:
        raise reject("referral_closed", f"{ref} is closed")
    named = [s for s in services if reply.service is None or s.service == reply.service]
    if not named:
        raise reject("invalid", f"{ref} has no service {reply.service!r}")
    pid = reply.partner_id
    if action in ("accept", "decline"):
        offered = [s for s in named if _offered_now(s, pid)]
        if offered:
            return offered
        if any(s.partner_id == pid and s.accepted_at for s in named):
            if action == "accept":
                raise reject("already_applied", f"{ref}: you have already accepted")
            raise reject("not_applicable", f"{ref}: already accepted; reply ISSUE to raise a problem")
    else:
        mine = [s for s in named if s.partner_id == pid and s.accepted_at and s.service not in done]
        if mine:
            if action == "ok" and not any(open_checkin(s) for s in mine):
                raise reject("already_applied", f"{ref}: nothing to confirm now")
            return mine
        if any(s.partner_id == pid and s.service in done for s in named):
            raise reject("already_applied", f"{ref}: already completed")
        if any(_offered_now(s, pid) for s in named):
            raise reject("not_applicable", f"{ref}: accept the referral first")
    if any(passed_over(s, pid) for s in named):
        raise reject("reassigned", f"{ref} was reassigned")
    raise reject("not_offered", f"{ref} is not offered to you")


def check_coordinator_action(
    services: Sequence[ServiceStatus], done: Collection[str], action: CoordinatorAction, *, ref: str, closed: bool
) -> None:
    """Raises the reason a coordinator's action does not apply."""
    if action.action not in COORDINATOR_ACTIONS:
        raise reject("unknown_action", f"unknown action {action.action!r}; expected one of {', '.join(COORDINATOR_ACTIONS)}")
    if problem := misplaced_outcome(action.action, action.outcome):
        raise reject("invalid", problem)
    if closed:
        raise reject("referral_closed", f"{ref} is closed")
    if action.action == "assign" and not action.partner_id:
        raise reject("invalid", "partner_id: required to assign")
    if action.action == "assign" and not action.service:
        raise reject("invalid", "service: required to assign")
    if action.service is not None:
        s = next((s for s in services if s.service == action.service), None)
        if s is None:
            raise reject("invalid", f"service: {ref} has no service {action.service!r}")
        if action.service in done or s.stage == "closed":
            raise reject("not_applicable", f"service: {action.service} is already completed")
        if action.action == "assign" and s.accepted_at and s.partner_id == action.partner_id:
            raise reject("already_applied", f"{action.partner_id} already has {action.service}")
