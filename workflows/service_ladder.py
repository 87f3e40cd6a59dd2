"""How one service of a referral goes, side by side with the others: offers down its partner
ladder (offer -> reminder -> deadline: escalate, next candidate); `escalated` when none is left,
with alerts that back off and climb to the national focal point until the coordinator assigns a
partner; then follow-up check-ins through the reflection period until DONE.

A mixin of ReferralWorkflow (workflows/referral.py), deterministic like it. Each wait a service
may sit in for long is a *safe* wait: what comes after it is read from the service's status (an
offer's reminder and deadline, the next alert, the next check-in), so the referral can continue
as new while a service waits there and the new run waits for the very same moment, having sent
nothing twice. `_run_service` picks the step from the status alone, so it resumes a carried
service as it runs a new one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows import generations, projection, schedules
    from workflows.models import (
        Attempt,
        Candidate,
        CarriedService,
        EscalationPolicy,
        FollowUp,
        MatchResult,
        ReferralInput,
        ServiceStatus,
    )
    from workflows.notices import Notices
    from workflows.projection import when_utc as _at

# The change, asked when a service moves on to another partner: the ladder is matched again
# first, so a partner that said FULL since the start is not offered (README, "Partners' capacity
# and hours"). A referral without it goes down its ladder as it was matched.
RECHECK = generations.RECHECK


@dataclass
class ServiceRun:
    """A service's ladder and the state the status query shows."""

    status: ServiceStatus
    ladder: list[Candidate] = field(default_factory=list)
    next_index: int = 0
    assignment: str | None = None  # partner assigned by hand, not yet taken up
    done: bool = False
    checkins_from: int = 0  # where the current partner's check-ins start in status.follow_ups
    checkins_for: datetime | None = None  # the acceptance they follow
    started: bool = False  # its coroutine has begun (in this run)
    closed_by_coordinator: bool = False  # closed on its own by a coordinator's action, not yet stamped so

    @classmethod
    def resumed(cls, carried: CarriedService) -> ServiceRun:
        """A service as the run before left it, at a safe wait (so no assignment pending)."""
        status = carried.status
        return cls(
            status=status,
            ladder=carried.ladder,
            next_index=carried.next_index,
            done=status.stage == "closed",
            checkins_from=carried.checkins_from,
            checkins_for=status.accepted_at,  # at a safe wait, its follow-up (if any) has begun
        )

    def carried(self) -> CarriedService:
        return CarriedService(status=self.status, ladder=self.ladder, next_index=self.next_index, checkins_from=self.checkins_from)


class ServiceLadder:
    """The per-service coroutine of ReferralWorkflow and the waits it is made of."""

    if TYPE_CHECKING:  # provided by ReferralWorkflow
        _closing: str | None
        _notices: Notices
        _policy: EscalationPolicy | None
        _started_at: datetime
        _long_lived: bool  # the referral runs this code's lifecycle (workflow.patched, referral.py)
        _reflection_ends_at: datetime | None
        _safe_waits: dict[str, Callable[[], bool]]
        _input: ReferralInput

        def _publish(self) -> None: ...
        def _log(self, message: str, **fields: object) -> None: ...
        def _count(self, name: str, description: str, **labels: str) -> None: ...
        def _notify_coordinator(self, run: ServiceRun, template: str, **extra: object) -> asyncio.Task[bool]: ...
        def _notify_partner(self, run: ServiceRun, partner_id: str, template: str, **extra: object) -> asyncio.Task[bool]: ...
        async def _match(self, service: str, input: ReferralInput, with_capacity: bool) -> MatchResult: ...
        def _holds_for_continue_as_new(self) -> bool: ...

    async def _run_service(self, run: ServiceRun) -> None:
        run.started = True
        while not self._closing and not run.done:
            if run.assignment is not None:
                self._take_assignment(run)
            if run.status.accepted_at is not None:
                await self._follow_up(run)
            elif (pending := projection.pending_attempt(run.status)) is not None:
                await self._await_reply(run, pending)  # an offer carried from the run before
            elif run.next_index < len(run.ladder):
                if run.status.attempts and generations.runs(self._input.generation, RECHECK):
                    # Moving on to another partner: match again first (capacity-recheck-2026-12).
                    await self._rematch(run)
                    if self._interrupted(run) or run.next_index >= len(run.ladder):
                        continue  # assigned or closed meanwhile, or nobody left to offer
                candidate = run.ladder[run.next_index]
                run.next_index += 1
                await self._offer(run, candidate)
            else:
                await self._escalated(run)
        if run.done and run.status.completed_at is None:
            run.status.completed_at = workflow.now()
        if run.closed_by_coordinator or (self._closing and not run.done):
            self._coordinator_acted(run)  # closed the service, or the whole referral
        run.status.stage = "closed"
        run.status.next_alert_at = None
        self._publish()

    # --- offers ------------------------------------------------------------------------------

    async def _rematch(self, run: ServiceRun) -> None:
        """The rest of the ladder as matching sees it now: a partner that said FULL since the
        referral was matched is passed over like one full at the start (and named in `skipped`),
        one that reopened may be offered, and opening hours are today's. Partners already offered
        are never offered again."""
        result = await self._match(run.status.service, self._input, True)
        offered = {a.partner_id for a in run.status.attempts}
        run.ladder = run.ladder[: run.next_index] + [c for c in result.candidates if c.partner_id not in offered]
        run.status.candidates = [c.partner_id for c in run.ladder]
        known = {(s.partner_id, s.reason) for s in run.status.skipped}
        run.status.skipped += [s for s in result.skipped if s.partner_id not in offered and (s.partner_id, s.reason) not in known]
        self._publish()

    async def _offer(self, run: ServiceRun, candidate: Candidate) -> None:
        policy = self._require_policy()
        now = workflow.now()
        # A partner closed now (its opening hours, from a matching of capacity-2026-12) has its
        # reply period counted from its next opening, unless the referral is an emergency.
        starts = schedules.reply_period_starts(candidate.open_windows, now, policy.urgency)
        attempt = Attempt(
            partner_id=candidate.partner_id,
            offered_at=now,
            remind_at=starts + policy.remind_after,
            deadline=starts + policy.reply_within,
            opens_at=starts if starts > now else None,
        )
        run.status.attempts.append(attempt)
        run.status.partner_id = candidate.partner_id
        run.status.stage = "notification"
        self._publish()
        self._log("offer", service=run.status.service, partner=candidate.partner_id, offer=len(run.status.attempts))
        self._count("offers_sent", "offers made to a partner", service=run.status.service)

        settled = lambda: attempt.outcome is not None or self._interrupted(run)  # noqa: E731
        reached = self._notify_partner(run, candidate.partner_id, "offer", deadline=attempt.deadline, backup_sms=policy.offers_to_backup_sms)
        # Not a safe wait: whether the offer reached the partner decides what comes next.
        await self._wait_until(
            lambda: settled() or reached.done(),
            attempt.deadline,
            f"offer to {candidate.partner_id} ({run.status.service}): wait for the SMS or email to go out, until {_at(attempt.deadline)} at most",
        )
        if reached.done() and not reached.cancelled() and not reached.result() and attempt.outcome is None:
            # Neither SMS nor email can reach this partner: move on at once.
            attempt.outcome = "timed_out"
            attempt.reason = "unreachable"
            return self._after_attempt(run)
        if self._closing:
            return self._after_attempt(run)  # the closing referral has withdrawn this offer
        run.status.stage = "awaiting_acceptance"
        self._publish()
        await self._await_reply(run, attempt)

    async def _await_reply(self, run: ServiceRun, attempt: Attempt) -> None:
        """The offer went out: remind at its reminder point (unless done), escalate at its deadline."""
        who = f"{attempt.partner_id} ({run.status.service})"
        service = run.status.service
        settled = lambda: attempt.outcome is not None or self._interrupted(run)  # noqa: E731
        if not attempt.reminded and not await self._wait_until(
            settled, attempt.remind_at, f"remind {who} if no reply by {_at(attempt.remind_at)}", safe=service
        ):
            attempt.reminded = True
            backup = self._require_policy().offers_to_backup_sms
            self._notify_partner(run, attempt.partner_id, "reminder", deadline=attempt.deadline, backup_sms=backup)
        if not await self._wait_until(
            settled, attempt.deadline, f"escalate if {who} has not replied by {_at(attempt.deadline)}", safe=service
        ):
            attempt.outcome = "timed_out"
            run.status.escalation_level += 1
            self._escalation(run, "no reply", partner=attempt.partner_id)
            self._notify_coordinator(run, "escalation", partner_id=attempt.partner_id)
        elif attempt.outcome is None:
            # Interrupted: assigned to someone else by hand, or the service closed.
            # (A closing referral has already withdrawn its offers.)
            attempt.outcome = "reassigned" if run.assignment else "withdrawn"
            self._notify_partner(run, attempt.partner_id, "offer_withdrawn")
        self._after_attempt(run)

    def _after_attempt(self, run: ServiceRun) -> None:
        attempt = run.status.attempts[-1]
        if attempt.outcome == "accepted":
            run.status.accepted_at = attempt.replied_at
            run.status.stage = "follow_up"
        else:
            run.status.partner_id = None
        self._publish()

    # --- escalated -----------------------------------------------------------------------------

    async def _escalated(self, run: ServiceRun) -> None:
        """No candidate left: alert the coordinator, again and again, until someone acts."""
        policy = self._require_policy()
        if run.status.stage != "escalated":  # (a service carried from the run before already is)
            run.status.stage = "escalated"
            run.status.escalation_level += 1
            self._escalation(run, "no candidate left")
            self._alerted(run, "ladder_exhausted", workflow.now() + schedules.alert_delay(policy, 0))
            self._publish()
            self._notify_coordinator(run, "ladder_exhausted")
        while not self._interrupted(run):
            if self._long_lived:
                await self._alert_when_due(run, policy)
                continue
            # A referral started before alerts backed off: every `escalated_alert_every`, coordinator only.
            next_alert = workflow.now() + policy.escalated_alert_every
            run.status.next_alert_at = next_alert
            if not await self._wait_until(
                lambda: self._interrupted(run), next_alert, f"{run.status.service}: alert the coordinator again at {_at(next_alert)}",
                safe=run.status.service,
            ):
                run.status.escalated_alerts += 1
                self._alerted(run, "escalated_alert", workflow.now() + policy.escalated_alert_every)
                self._notify_coordinator(run, "escalated_alert", alert_count=run.status.escalated_alerts)

    async def _alert_when_due(self, run: ServiceRun, policy: EscalationPolicy) -> None:
        """The next repeat of the alert at its time (kept in the status); after
        `focal_point_after_alerts` unanswered ones the national focal point is alerted too."""
        due = run.status.next_alert_at or workflow.now() + schedules.alert_delay(policy, run.status.escalated_alerts)
        if await self._wait_until(
            lambda: self._interrupted(run), due, f"{run.status.service}: alert again at {_at(due)}", safe=run.status.service
        ):
            return
        number = run.status.escalated_alerts + 1
        run.status.escalated_alerts = number
        template = "escalated_alert"
        if schedules.alert_climbs(policy, number):
            run.status.escalation_level += 1
            self._escalation(run, "alerts unanswered", alerts=number - 1)
            template = "escalation_to_focal_point"
        # On the schedule, not after the moment this one was handled (no drift over months);
        # after a long outage, a full interval from now rather than a burst of catch-up alerts.
        next_at = due + schedules.alert_delay(policy, number)
        self._alerted(run, template, next_at if next_at > workflow.now() else workflow.now() + schedules.alert_delay(policy, number))
        self._publish()
        self._notify_coordinator(run, template, alert_count=number)

    def _alerted(self, run: ServiceRun, template: str, next_at: datetime) -> None:
        """Who an alert about to go reaches, and when the next one goes (shown in the status)."""
        urgency = self._require_policy().urgency
        run.status.last_alert_at = workflow.now()
        run.status.last_alerted = projection.alerted(template, urgency, run.status.escalation_level)
        run.status.next_alert_at = next_at

    def _take_assignment(self, run: ServiceRun) -> None:
        previous = run.status.partner_id if run.status.accepted_at else None
        partner_id, run.assignment = run.assignment, None
        assert partner_id is not None
        if previous and previous != partner_id:
            self._notify_partner(run, previous, "offer_withdrawn")
        run.status.partner_id = partner_id
        run.status.accepted_at = workflow.now()
        run.status.assigned_by_coordinator = True
        self._coordinator_acted(run)
        run.status.stage = "follow_up"
        run.status.next_alert_at = None
        self._publish()
        self._notify_partner(run, partner_id, "assigned")

    # --- follow-up -----------------------------------------------------------------------------

    async def _follow_up(self, run: ServiceRun) -> None:
        """Check-ins after acceptance (schedules.checkin_plan), each from the status: sent when
        due, escalated when unanswered; then the service stays with its partner until DONE."""
        policy = self._require_policy()
        partner_id = run.status.partner_id
        accepted_at = run.status.accepted_at
        assert partner_id is not None and accepted_at is not None
        if run.checkins_for != accepted_at:  # a new partner (or the first): their check-ins begin
            run.checkins_for, run.checkins_from = accepted_at, len(run.status.follow_ups)
        service = run.status.service
        stop = lambda: run.done or self._interrupted(run)  # noqa: E731
        for number, due_at in enumerate(schedules.checkin_plan(policy, accepted_at, self._reflection_ends_at), start=1):
            index = run.checkins_from + number - 1
            if index < len(run.status.follow_ups):
                checkin = run.status.follow_ups[index]  # carried from the run before
            else:
                checkin = FollowUp(number=number, partner_id=partner_id, due_at=due_at)
                run.status.follow_ups.append(checkin)
            if checkin.answer is not None:
                continue
            if checkin.sent_at is None:
                if await self._wait_until(stop, checkin.due_at, f"check-in {number} with {partner_id} ({service}) at {_at(checkin.due_at)}", safe=service):
                    return
                checkin.sent_at = workflow.now()
                checkin.answer_by = checkin.sent_at + policy.checkin_answer_within
                self._notify_partner(run, partner_id, "checkin", checkin_number=number, deadline=checkin.answer_by)
                self._publish()
            answer_by = checkin.answer_by
            assert answer_by is not None
            answered = lambda: checkin.answer is not None or stop()  # noqa: B023,E731
            if not await self._wait_until(
                answered, answer_by, f"escalate if {partner_id} has not answered check-in {number} by {_at(answer_by)}", safe=service
            ):
                checkin.answer = "silence"
                run.status.escalation_level += 1
                self._escalation(run, "check-in not answered", partner=partner_id)
                self._notify_coordinator(run, "checkin_silence", partner_id=partner_id, checkin_number=number)
            self._publish()
            if stop():
                return
        # All check-ins done: the service stays with its partner until DONE or the coordinator acts.
        await self._wait_until(stop, None, "", safe=service)

    # --- waits and helpers ---------------------------------------------------------------------

    async def _wait_until(self, condition: Callable[[], bool], until: datetime | None, summary: str, safe: str | None = None) -> bool:
        """Wait for `condition` until `until` (for ever if None); True if it held in time. A
        `safe` wait (named for its service) is one the referral may continue as new in."""
        remaining = None if until is None else until - workflow.now()
        if remaining is not None and remaining <= timedelta(0):
            return condition()
        if safe is not None:
            self._safe_waits[safe] = condition
        try:
            if remaining is None:
                await workflow.wait_condition(condition)
            else:
                await workflow.wait_condition(condition, timeout=remaining, timeout_summary=summary)
            return True
        except TimeoutError:
            if safe is None or condition() or not self._holds_for_continue_as_new():
                return condition()
            # Held for continue-as-new: the next run acts at this moment instead (no send twice).
            await workflow.wait_condition(condition)
            return True
        finally:
            if safe is not None:
                self._safe_waits.pop(safe, None)

    def _coordinator_acted(self, run: ServiceRun) -> None:
        """A coordinator assigned a partner or closed the service (or the referral): for the
        ledger, the first such action after the service's first escalation is the one that
        answered it."""
        status = run.status
        if status.first_escalated_at is not None and status.coordinator_acted_at is None:
            status.coordinator_acted_at = workflow.now()

    def _require_policy(self) -> EscalationPolicy:
        assert self._policy is not None
        return self._policy

    def _interrupted(self, run: ServiceRun) -> bool:
        return bool(self._closing) or run.assignment is not None or run.done

    def _escalation(self, run: ServiceRun, why: str, **fields: object) -> None:
        """Called as escalation_level rises: logged, counted, and its time kept for the ledger."""
        level = run.status.escalation_level
        now = workflow.now()
        run.status.first_escalated_at = run.status.first_escalated_at or now
        run.status.last_escalated_at = now
        self._log("escalation", service=run.status.service, escalation_level=level, why=why, **fields)
        self._count("escalations", "escalations, by the level reached", level=str(level))
