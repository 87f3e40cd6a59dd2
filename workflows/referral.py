"""ReferralWorkflow: one referral, from identification to closure.

Deterministic code only. Each needed service runs its own partner ladder side by side:
offer -> reminder -> deadline (escalate, next candidate) -> ... -> escalated (alerts repeat until
the coordinator assigns a partner) -> follow-up check-ins -> completed. Partner replies and
coordinator actions arrive as updates whose validators reject, without a trace in history,
anything that does not apply (a late reply, a stranger, an unknown action).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.referral_activities import ReferralActivities
    from workflows import projection, status_memo, update_rules
    from workflows import search_attributes as sa
    from workflows.intake import assess
    from workflows.models import (
        ActionOutcome,
        Attempt,
        Candidate,
        ChannelProblem,
        ChannelReport,
        CoordinatorAction,
        EscalationPolicy,
        FollowUp,
        MatchRequest,
        NoticeContext,
        PartnerReply,
        PersonDetails,
        ReferralInput,
        ReferralStatus,
        ReferralSummary,
        ReplyOutcome,
        ServiceStatus,
        Stage,
    )
    from workflows.notices import Notices, notice_context
    from workflows.projection import when_utc as _at

# Config files can be fixed by an operator while the activity retries, so nothing is final.
CONFIG_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))


@dataclass
class _ServiceRun:
    """A service's ladder and the state the status query shows."""

    status: ServiceStatus
    ladder: list[Candidate] = field(default_factory=list)
    next_index: int = 0
    assignment: str | None = None  # partner assigned by hand, not yet taken up
    done: bool = False


@workflow.defn
class ReferralWorkflow:
    @workflow.init
    def __init__(self, input: ReferralInput) -> None:
        self._input = input
        self._code = input.code
        self._assessment = input.assessment or assess(input.intake)
        self._services = {
            s: _ServiceRun(status=ServiceStatus(service=s)) for s in self._assessment.needs
        }
        self._policy: EscalationPolicy | None = None
        self._closing: str | None = None  # closed | cancelled | consent_withdrawn
        self._closed_reason: str | None = None
        self._closed_at: datetime | None = None
        self._channel_problems: list[ChannelProblem] = []
        self._notices = Notices(input.intake.region, self._context, self._channel_problems, lambda: self._closed_at is not None)
        self._published: tuple | None = None

    # --- the lifecycle -------------------------------------------------------------------

    @workflow.run
    async def run(self, input: ReferralInput) -> ReferralSummary:
        self._memo = status_memo.MemoPublisher(self.status)  # a no-op for referrals started before it
        self._publish()
        self._log("referral started", urgency=self._assessment.urgency, region=input.intake.region, services=list(self._services))
        self._count("referrals_started", "referrals started", urgency=self._assessment.urgency, region=input.intake.region)
        self._policy = await workflow.execute_activity_method(
            ReferralActivities.load_policy,
            self._assessment.urgency,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=CONFIG_RETRY,
            summary=f"load the escalation policy for {self._assessment.urgency}",
        )
        ladders = await asyncio.gather(
            *(
                workflow.execute_activity_method(
                    ReferralActivities.match_partners,
                    MatchRequest(
                        service=service,
                        region=input.intake.region,
                        languages=input.intake.person.languages,
                        minor=self._assessment.minor,
                    ),
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=CONFIG_RETRY,
                    summary=f"rank partners for {service} in {input.intake.region}",
                )
                for service in self._services
            )
        )
        for run, ladder in zip(self._services.values(), ladders):
            run.ladder = ladder
            run.status.candidates = [c.partner_id for c in ladder]

        await asyncio.gather(*(self._run_service(run) for run in self._services.values()))

        self._closed_reason = self._closing or "completed"
        self._closed_at = workflow.now()
        for run in self._services.values():
            run.status.stage = "closed"
        self._publish()
        self._log("referral closed", reason=self._closed_reason)
        self._notices.to_coordinator(
            "summary",
            closed_reason=self._closed_reason,
            summary_lines=[projection.summary_line(r.status) for r in self._services.values()],
        )
        await self._notices.drain()
        self._memo.flush()  # the closed status, should nothing have waited since
        return ReferralSummary(
            code=self._code,
            closed_reason=self._closed_reason,
            services=[r.status for r in self._services.values()],
        )

    async def _run_service(self, run: _ServiceRun) -> None:
        while not self._closing and not run.done:
            if run.assignment is not None:
                self._take_assignment(run)
            if run.status.accepted_at is not None:
                await self._follow_up(run)
            elif run.next_index < len(run.ladder):
                candidate = run.ladder[run.next_index]
                run.next_index += 1
                await self._offer(run, candidate)
            else:
                await self._escalated(run)
        if run.done and run.status.completed_at is None:
            run.status.completed_at = workflow.now()
        run.status.stage = "closed"
        self._publish()

    async def _offer(self, run: _ServiceRun, candidate: Candidate) -> None:
        policy = self._require_policy()
        now = workflow.now()
        attempt = Attempt(
            partner_id=candidate.partner_id,
            offered_at=now,
            remind_at=now + policy.remind_after,
            deadline=now + policy.reply_within,
        )
        run.status.attempts.append(attempt)
        run.status.partner_id = candidate.partner_id
        run.status.stage = "notification"
        self._publish()
        self._log("offer", service=run.status.service, partner=candidate.partner_id, offer=len(run.status.attempts))
        self._count("offers_sent", "offers made to a partner", service=run.status.service)
        who = f"{candidate.partner_id} ({run.status.service})"

        settled = lambda: attempt.outcome is not None or self._interrupted(run)  # noqa: E731
        reached = self._notify_partner(run, candidate.partner_id, "offer", deadline=attempt.deadline)
        await self._wait_until(
            lambda: settled() or reached.done(),
            attempt.deadline,
            f"offer to {who}: wait for the SMS or email to go out, until {_at(attempt.deadline)} at most",
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

        if not await self._wait_until(
            settled, attempt.remind_at, f"remind {who} if no reply by {_at(attempt.remind_at)}"
        ):
            attempt.reminded = True
            self._notify_partner(run, candidate.partner_id, "reminder", deadline=attempt.deadline)
        if not await self._wait_until(
            settled, attempt.deadline, f"escalate if {who} has not replied by {_at(attempt.deadline)}"
        ):
            attempt.outcome = "timed_out"
            run.status.escalation_level += 1
            self._escalation(run, "no reply", partner=candidate.partner_id)
            self._notify_coordinator(run, "escalation", partner_id=candidate.partner_id)
        elif attempt.outcome is None:
            # Interrupted: assigned to someone else by hand, or the service closed.
            # (A closing referral has already withdrawn its offers.)
            attempt.outcome = "reassigned" if run.assignment else "withdrawn"
            self._notify_partner(run, candidate.partner_id, "offer_withdrawn")
        self._after_attempt(run)

    def _after_attempt(self, run: _ServiceRun) -> None:
        attempt = run.status.attempts[-1]
        if attempt.outcome == "accepted":
            run.status.accepted_at = attempt.replied_at
            run.status.stage = "follow_up"
        else:
            run.status.partner_id = None
        self._publish()

    async def _escalated(self, run: _ServiceRun) -> None:
        """No candidate left: alert the coordinator, again and again, until someone acts."""
        policy = self._require_policy()
        run.status.stage = "escalated"
        run.status.escalation_level += 1
        self._escalation(run, "no candidate left")
        self._publish()
        self._notify_coordinator(run, "ladder_exhausted")
        while not self._interrupted(run):
            next_alert = workflow.now() + policy.escalated_alert_every
            if not await self._wait_until(
                lambda: self._interrupted(run), next_alert, f"{run.status.service}: alert the coordinator again at {_at(next_alert)}"
            ):
                run.status.escalated_alerts += 1
                self._notify_coordinator(run, "escalated_alert", alert_count=run.status.escalated_alerts)

    def _take_assignment(self, run: _ServiceRun) -> None:
        previous = run.status.partner_id if run.status.accepted_at else None
        partner_id, run.assignment = run.assignment, None
        assert partner_id is not None
        if previous and previous != partner_id:
            self._notify_partner(run, previous, "offer_withdrawn")
        run.status.partner_id = partner_id
        run.status.accepted_at = workflow.now()
        run.status.assigned_by_coordinator = True
        run.status.stage = "follow_up"
        self._publish()
        self._notify_partner(run, partner_id, "assigned")

    async def _follow_up(self, run: _ServiceRun) -> None:
        """Check-ins at the policy's offsets after acceptance; silence escalates."""
        policy = self._require_policy()
        partner_id = run.status.partner_id
        accepted_at = run.status.accepted_at
        assert partner_id is not None and accepted_at is not None
        stop = lambda: run.done or self._interrupted(run)  # noqa: E731
        for number, offset in enumerate(policy.follow_ups, start=1):
            checkin = FollowUp(number=number, partner_id=partner_id, due_at=accepted_at + offset)
            run.status.follow_ups.append(checkin)
            if await self._wait_until(stop, checkin.due_at, f"check-in {number} with {partner_id} ({run.status.service}) at {_at(checkin.due_at)}"):
                return
            checkin.sent_at = workflow.now()
            checkin.answer_by = checkin.sent_at + policy.checkin_answer_within
            self._notify_partner(run, partner_id, "checkin", checkin_number=number, deadline=checkin.answer_by)
            self._publish()
            answered = lambda: checkin.answer is not None or stop()  # noqa: E731
            if not await self._wait_until(
                answered, checkin.answer_by, f"escalate if {partner_id} has not answered check-in {number} by {_at(checkin.answer_by)}"
            ):
                checkin.answer = "silence"
                run.status.escalation_level += 1
                self._escalation(run, "check-in not answered", partner=partner_id)
                self._notify_coordinator(run, "checkin_silence", partner_id=partner_id, checkin_number=number)
            self._publish()
            if stop():
                return
        # All check-ins done: the service stays with its partner until DONE or the coordinator acts.
        await workflow.wait_condition(stop)

    # --- partner replies -----------------------------------------------------------------

    @workflow.update
    async def partner_reply(self, reply: PartnerReply) -> ReplyOutcome:
        runs = self._reply_targets(reply)
        now = workflow.now()
        action = reply.action.lower()
        for run in runs:
            if action in ("accept", "decline"):
                attempt = projection.pending_attempt(run.status)
                assert attempt is not None
                attempt.outcome = "accepted" if action == "accept" else "declined"
                attempt.replied_at = now
                attempt.reason = reply.reason if action == "decline" else None
                self._log(f"offer {attempt.outcome}", service=run.status.service, partner=reply.partner_id)
                if action == "accept":
                    waited = (now - workflow.info().start_time).total_seconds()
                    workflow.metric_meter().create_histogram_float(
                        "time_to_acceptance_seconds", "from the referral's start to a partner's acceptance", "s"
                    ).record(max(waited, 0.0), {"urgency": self._assessment.urgency})
            else:
                checkin = projection.open_checkin(run.status)
                if checkin is not None:
                    checkin.answer = action  # type: ignore[assignment]
                    checkin.answered_at = now
                if action == "done":
                    run.done = True
                    run.status.completed_at = now
                elif action == "issue":
                    run.status.issues_reported += 1
                    # The partner's text stays in the (encrypted) history, never in an email.
                    self._notify_coordinator(run, "issue_reported", partner_id=reply.partner_id)
        self._publish()
        outcome = {"accept": "accepted", "decline": "declined", "ok": "noted", "done": "completed", "issue": "issue_reported"}[action]
        return ReplyOutcome(code=self._code, outcome=outcome, services=[r.status.service for r in runs])  # type: ignore[arg-type]

    @partner_reply.validator
    def _validate_partner_reply(self, reply: PartnerReply) -> None:
        self._reply_targets(reply)

    def _reply_targets(self, reply: PartnerReply) -> list[_ServiceRun]:
        """The services a reply applies to; raises the reason it applies to none."""
        targets = update_rules.reply_targets(
            self._statuses(), self._done(), reply, ref=f"R-{self._code}", closed=bool(self._closing or self._closed_reason)
        )
        return [self._services[s.service] for s in targets]

    @workflow.signal
    def report_channel_problem(self, report: ChannelReport) -> None:
        """A delivery failure or opt-out seen by the SMS webhook: record it, tell the coordinator.
        The email to the partner went out beside the SMS, so email is the fallback already."""
        if self._closed_at is not None:
            return
        if report.message_sid and any(p.message_sid == report.message_sid for p in self._channel_problems):
            return  # Twilio may call back more than once
        self._channel_problems.append(
            ChannelProblem(
                at=workflow.now(),
                partner_id=report.partner_id,
                channel=report.channel,
                problem=report.problem,
                message_sid=report.message_sid,
            )
        )
        self._log("channel problem reported", partner=report.partner_id, channel=report.channel, problem=report.problem)
        if report.channel == "sms":
            self._count("sms_failures", "SMS that could not be sent or delivered, by problem", problem=report.problem)
        services = [r.status.service for r in self._services.values() if projection.involves(r.status, report.partner_id)]
        self._notices.to_coordinator(
            "channel_problem",
            service=services[0] if services else None,
            partner_id=report.partner_id,
            channel=report.channel,
            problem=report.problem,
        )

    # --- coordinator actions -------------------------------------------------------------

    @workflow.update
    async def coordinator_action(self, action: CoordinatorAction) -> ActionOutcome:
        if action.action == "assign":
            run = self._services[action.service]  # type: ignore[index]
            run.assignment = action.partner_id
            await workflow.wait_condition(lambda: run.assignment is None or bool(self._closing))
        elif action.action == "close" and action.service:
            run = self._services[action.service]
            run.done = True
            await workflow.wait_condition(lambda: run.status.stage == "closed")
        else:
            self._closing = {"close": "closed", "cancel": "cancelled", "withdraw_consent": "consent_withdrawn"}[action.action]
            self._cancel_pending_messages()
            await workflow.wait_condition(lambda: self._closed_at is not None)
        return ActionOutcome(code=self._code, action=action.action, stage=self._stage())

    @coordinator_action.validator
    def _validate_action(self, action: CoordinatorAction) -> None:
        update_rules.check_coordinator_action(
            self._statuses(), self._done(), action, ref=f"R-{self._code}", closed=bool(self._closing or self._closed_reason)
        )

    # --- what operators and the CLI see ----------------------------------------------------

    @workflow.query
    def status(self) -> ReferralStatus:
        intake = self._input.intake
        awaiting, due = projection.awaited(self._statuses())
        return ReferralStatus(
            code=self._code,
            workflow_id=workflow.info().workflow_id,
            external_ref=intake.external_ref,
            stage=self._stage(),
            urgency=self._assessment.urgency,
            region=intake.region,
            started_at=workflow.info().workflow_start_time,  # the execution's, as describe gives it
            assessment=self._assessment,
            age_group=intake.person.age_group,
            languages=intake.person.languages,
            services=self._statuses(),
            escalation_level=self._escalation_level(),
            awaiting_partners=awaiting,
            reply_due_by=due,
            channel_problems=self._channel_problems,
            closed_at=self._closed_at,
            closed_reason=self._closed_reason,  # type: ignore[arg-type]
        )

    @workflow.query
    def person_details(self, partner_id: str) -> PersonDetails | None:
        """PERSONAL DATA, for the partner details page only: the person and notes when
        `projection.may_see_person_details` allows this partner; None otherwise."""
        # A service the coordinator has just closed is done before its loop stamps completed_at.
        open_services = [r.status for r in self._services.values() if not r.done]
        closed = bool(self._closing) or self._closed_at is not None
        if not projection.may_see_person_details(open_services, partner_id, closed=closed):
            return None
        return PersonDetails(person=self._input.intake.person, notes=self._input.intake.notes)

    def _statuses(self) -> list[ServiceStatus]:
        return [r.status for r in self._services.values()]

    def _done(self) -> set[str]:
        """Services completed or closed by hand, perhaps not yet marked so by their loop."""
        return {name for name, r in self._services.items() if r.done}

    def _stage(self) -> Stage:
        return projection.referral_stage(self._statuses(), closed=self._closed_at is not None)

    def _escalation_level(self) -> int:
        return projection.escalation_level(self._statuses())

    def _publish(self) -> None:
        """Refresh the UI's current details (no history event: served by the metadata query);
        upsert search attributes only when something they show changed."""
        awaiting, due = projection.awaited(self._statuses())
        engaged = projection.engaged_partners(r.status for r in self._services.values() if not r.done)
        stage = self._stage()
        level = self._escalation_level()
        workflow.set_current_details(
            projection.details_markdown(self._code, stage, self._assessment.urgency, self._statuses(), self._closed_reason)
        )
        state = (stage, tuple(awaiting), tuple(engaged), due, level)
        if state == self._published:
            return
        self._published = state
        intake = self._input.intake
        workflow.upsert_search_attributes(
            sa.current(stage, self._assessment.urgency, intake.region, list(self._services), awaiting, engaged, level, due)
        )

    # --- helpers -------------------------------------------------------------------------

    def _log(self, message: str, **fields: object) -> None:
        """Replay-safe: workflow.logger writes nothing while replaying. Codes, ids, services and
        counts only; never anything from the intake's person or notes."""
        workflow.logger.info(message, extra={"referral": self._code, **fields})

    def _count(self, name: str, description: str, **labels: str) -> None:
        """A counter on the workflow's metric meter (replay-safe: nothing is recorded on replay)."""
        workflow.metric_meter().create_counter(name, description).add(1, labels)

    def _escalation(self, run: _ServiceRun, why: str, **fields: object) -> None:
        level = run.status.escalation_level
        self._log("escalation", service=run.status.service, escalation_level=level, why=why, **fields)
        self._count("escalations", "escalations, by the level reached", level=str(level))

    def _require_policy(self) -> EscalationPolicy:
        assert self._policy is not None
        return self._policy

    def _interrupted(self, run: _ServiceRun) -> bool:
        return bool(self._closing) or run.assignment is not None or run.done

    async def _wait_until(self, condition: Callable[[], bool], until: datetime, summary: str) -> bool:
        """Wait for `condition` until `until`; True if it held in time."""
        remaining = until - workflow.now()
        if remaining <= timedelta(0):
            return condition()
        try:
            await workflow.wait_condition(condition, timeout=remaining, timeout_summary=summary)
            return True
        except TimeoutError:
            return condition()

    def _context(self, **extra: object) -> NoticeContext:
        services, level = list(self._services), self._escalation_level()
        return notice_context(self._code, self._input.intake, self._assessment, services, level, **extra)

    def _notify_partner(self, run: _ServiceRun, partner_id: str, template: str, **extra: object) -> asyncio.Task[bool]:
        return self._notices.send("partner", partner_id, template, service=run.status.service, **extra)

    def _notify_coordinator(self, run: _ServiceRun, template: str, **extra: object) -> asyncio.Task[bool]:
        extra.setdefault("escalation_level", run.status.escalation_level)
        return self._notices.to_coordinator(template, service=run.status.service, **extra)

    def _cancel_pending_messages(self) -> None:
        """On closure, offers and check-ins still retrying must not go out late; the partners
        offered or holding a service are told the referral is closed."""
        self._notices.cancel_pending()
        for run in self._services.values():
            attempt = projection.pending_attempt(run.status)
            if attempt is not None:
                attempt.outcome = "withdrawn"
                self._notify_partner(run, attempt.partner_id, "referral_closed", closed_reason=self._closing)
            elif run.status.accepted_at and run.status.partner_id and not run.done:
                self._notify_partner(run, run.status.partner_id, "referral_closed", closed_reason=self._closing)
