"""ReferralWorkflow: one referral, from identification to closure.

Deterministic code only. Each needed service runs its own partner ladder side by side:
offer -> reminder -> deadline (escalate, next candidate) -> ... -> escalated (alerts repeat until
the coordinator assigns a partner) -> follow-up check-ins -> completed. Partner replies and
coordinator actions arrive as updates whose validators reject, without a trace in history,
anything that does not apply (a late reply, a stranger, an unknown action).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Callable

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.referral_activities import ReferralActivities
    from workflows import search_attributes as sa
    from workflows.intake import assess
    from workflows.models import (
        COORDINATOR_ACTIONS,
        PARTNER_ACTIONS,
        STAGE_ORDER,
        ActionOutcome,
        Attempt,
        Candidate,
        ChannelProblem,
        ChannelReport,
        CoordinatorAction,
        EscalationPolicy,
        FollowUp,
        MatchRequest,
        Notice,
        NoticeContext,
        PartnerReply,
        PersonDetails,
        ReferralInput,
        ReferralStatus,
        ReferralSummary,
        ReplyOutcome,
        ServiceStatus,
    )

# Errors that retrying cannot fix: the channel is recorded as a problem and the other used.
NON_RETRYABLE_DELIVERY = [
    "InvalidPhoneNumber",
    "OptedOut",
    "NoSmsNumber",
    "InvalidEmailAddress",
    "RecipientRefused",
    "UnknownRecipient",
]
DELIVERY_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=2),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=2),
    non_retryable_error_types=NON_RETRYABLE_DELIVERY,
)
# Config files can be fixed by an operator while the activity retries, so nothing is final.
CONFIG_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))
SEND_TIMEOUT = timedelta(seconds=45)
# Past this a message is given up and shown as a channel problem.
DELIVERY_GIVE_UP = timedelta(hours=24)

PARTNER_TEMPLATES_BY_SMS = {"offer", "reminder", "offer_withdrawn", "assigned", "checkin", "referral_closed"}
# Coordinators get every notice by email; these also by SMS because someone must act now.
COORDINATOR_TEMPLATES_BY_SMS = {"escalation", "ladder_exhausted", "escalated_alert", "issue_reported"}


def _at(when: datetime) -> str:
    """A deadline as timer summaries and the details table show it."""
    return when.strftime("%Y-%m-%d %H:%M UTC")


def _last_event(s: ServiceStatus) -> str:
    """The service's latest event, for the details table: what happened, to whom, when."""
    events: list[tuple[datetime, str]] = []
    for a in s.attempts:
        events.append((a.offered_at, f"offered to {a.partner_id}"))
        if a.reminded:
            events.append((a.remind_at, f"{a.partner_id} reminded"))
        if a.outcome is not None:
            at = a.replied_at or (a.deadline if a.outcome == "timed_out" else a.offered_at)
            events.append((at, f"{a.partner_id} {a.outcome.replace('_', ' ')}"))
    for f in s.follow_ups:
        if f.sent_at is not None:
            events.append((f.sent_at, f"check-in {f.number} sent"))
        if f.answer is not None:
            events.append((f.answered_at or f.answer_by or f.due_at, f"check-in {f.number}: {f.answer}"))
    if s.assigned_by_coordinator and s.accepted_at is not None and s.partner_id:
        events.append((s.accepted_at, f"assigned to {s.partner_id}"))
    if s.completed_at is not None:
        events.append((s.completed_at, "completed"))
    if not events:
        return "-"
    # The latest; of events at the same time, the one recorded last.
    _, (at, what) = max(enumerate(events), key=lambda e: (e[1][0], e[0]))
    return f"{what} ({at:%H:%M} UTC)"


def _delivery_summary(notice: Notice, channel: str) -> str:
    """`SMS offer to partner casa-shelter (shelter)`: what the UI shows for a send activity."""
    what = "SMS" if channel == "sms" else "email"
    about = notice.context.service or ", ".join(notice.context.services)
    return f"{what} {notice.template.replace('_', ' ')} to {notice.recipient} {notice.recipient_id} ({about})"


def _reject(kind: str, message: str) -> ApplicationError:
    return ApplicationError(message, type=kind, non_retryable=True)


@dataclass
class _ServiceRun:
    """A service's ladder and the state the status query shows."""

    status: ServiceStatus
    ladder: list[Candidate] = field(default_factory=list)
    next_index: int = 0
    assignment: str | None = None  # partner assigned by hand, not yet taken up
    done: bool = False

    def pending_attempt(self) -> Attempt | None:
        if self.status.attempts and self.status.attempts[-1].outcome is None:
            return self.status.attempts[-1]
        return None

    def open_checkin(self) -> FollowUp | None:
        for f in reversed(self.status.follow_ups):
            if f.sent_at is not None and f.answer is None:
                return f
        return None

    def passed_over(self, partner_id: str) -> bool:
        return any(a.partner_id == partner_id and a.outcome is not None for a in self.status.attempts)


@workflow.defn
class ReferralWorkflow:
    @workflow.init
    def __init__(self, input: ReferralInput) -> None:
        self._input = input
        self._code = input.code
        self._assessment = assess(input.intake)
        self._services = {
            s: _ServiceRun(status=ServiceStatus(service=s)) for s in self._assessment.needs
        }
        self._policy: EscalationPolicy | None = None
        self._closing: str | None = None  # closed | cancelled | consent_withdrawn
        self._closed_reason: str | None = None
        self._closed_at: datetime | None = None
        self._channel_problems: list[ChannelProblem] = []
        self._background: list[asyncio.Task] = []
        self._published: tuple | None = None

    # --- the lifecycle -------------------------------------------------------------------

    @workflow.run
    async def run(self, input: ReferralInput) -> ReferralSummary:
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
        self._notify(
            "coordinator",
            self._input.intake.region,
            "summary",
            closed_reason=self._closed_reason,
            summary_lines=[self._summary_line(r.status) for r in self._services.values()],
        )
        await self._drain_background()
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
                attempt = run.pending_attempt()
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
                checkin = run.open_checkin()
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
        """The services a reply applies to, or the reason it applies to none."""
        action = reply.action.lower()
        code = f"R-{self._code}"
        if action not in PARTNER_ACTIONS:
            raise _reject("unknown_action", f"unknown command {reply.action!r}")
        if self._closing or self._closed_reason:
            raise _reject("referral_closed", f"{code} is closed")
        runs = [
            r for r in self._services.values()
            if reply.service is None or r.status.service == reply.service
        ]
        if not runs:
            raise _reject("invalid", f"{code} has no service {reply.service!r}")
        pid = reply.partner_id
        if action in ("accept", "decline"):
            pending = [r for r in runs if (a := r.pending_attempt()) and a.partner_id == pid]
            if pending:
                return pending
            if any(r.status.partner_id == pid and r.status.accepted_at for r in runs):
                if action == "accept":
                    raise _reject("already_applied", f"{code}: you have already accepted")
                raise _reject("not_applicable", f"{code}: already accepted; reply ISSUE to raise a problem")
        else:
            mine = [
                r for r in runs
                if r.status.partner_id == pid and r.status.accepted_at and not r.done
            ]
            if mine:
                if action == "ok" and not any(r.open_checkin() for r in mine):
                    raise _reject("already_applied", f"{code}: nothing to confirm now")
                return mine
            if any(r.status.partner_id == pid and r.done for r in runs):
                raise _reject("already_applied", f"{code}: already completed")
            if any((a := r.pending_attempt()) and a.partner_id == pid for r in runs):
                raise _reject("not_applicable", f"{code}: accept the referral first")
        if any(r.passed_over(pid) for r in runs):
            raise _reject("reassigned", f"{code} was reassigned")
        raise _reject("not_offered", f"{code} is not offered to you")

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
        services = [r.status.service for r in self._services.values() if report.partner_id in self._involved(r)]
        self._notify(
            "coordinator",
            self._input.intake.region,
            "channel_problem",
            service=services[0] if services else None,
            partner_id=report.partner_id,
            channel=report.channel,
            problem=report.problem,
        )

    @staticmethod
    def _involved(run: _ServiceRun) -> set[str]:
        return {a.partner_id for a in run.status.attempts} | ({run.status.partner_id} if run.status.partner_id else set())

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
        code = f"R-{self._code}"
        if action.action not in COORDINATOR_ACTIONS:
            raise _reject("unknown_action", f"unknown action {action.action!r}; expected one of {', '.join(COORDINATOR_ACTIONS)}")
        if self._closing or self._closed_reason:
            raise _reject("referral_closed", f"{code} is closed")
        if action.action == "assign" and not action.partner_id:
            raise _reject("invalid", "partner_id: required to assign")
        if action.action == "assign" and not action.service:
            raise _reject("invalid", "service: required to assign")
        if action.service is not None:
            run = self._services.get(action.service)
            if run is None:
                raise _reject("invalid", f"service: {code} has no service {action.service!r}")
            if run.done or run.status.stage == "closed":
                raise _reject("not_applicable", f"service: {action.service} is already completed")
            if action.action == "assign" and run.status.accepted_at and run.status.partner_id == action.partner_id:
                raise _reject("already_applied", f"{action.partner_id} already has {action.service}")

    # --- what operators and the CLI see ----------------------------------------------------

    @workflow.query
    def status(self) -> ReferralStatus:
        intake = self._input.intake
        awaiting, due = self._awaiting()
        return ReferralStatus(
            code=self._code,
            workflow_id=workflow.info().workflow_id,
            external_ref=intake.external_ref,
            stage=self._stage(),  # type: ignore[arg-type]
            urgency=self._assessment.urgency,
            region=intake.region,
            started_at=workflow.info().start_time,
            assessment=self._assessment,
            age_group=intake.person.age_group,
            languages=intake.person.languages,
            services=[r.status for r in self._services.values()],
            escalation_level=self._escalation_level(),
            awaiting_partners=awaiting,
            reply_due_by=due,
            channel_problems=self._channel_problems,
            closed_at=self._closed_at,
            closed_reason=self._closed_reason,  # type: ignore[arg-type]
        )

    @workflow.query
    def person_details(self, partner_id: str) -> PersonDetails | None:
        """PERSONAL DATA, for the partner details page only: the person and notes, when this
        partner currently holds a service (accepted, or assigned by the coordinator, and not yet
        completed) of an open referral; None otherwise, e.g. before acceptance or for anyone else."""
        if self._closing or self._closed_at is not None:
            return None
        for run in self._services.values():
            if run.done or run.status.stage == "closed":
                continue
            holds = run.status.partner_id == partner_id and run.status.accepted_at is not None
            # Accepted by an update the service loop has not taken up yet
            last = run.status.attempts[-1] if run.status.attempts else None
            just_accepted = (
                run.status.accepted_at is None
                and last is not None
                and last.partner_id == partner_id
                and last.outcome == "accepted"
            )
            if holds or just_accepted:
                intake = self._input.intake
                return PersonDetails(person=intake.person, notes=intake.notes)
        return None

    def _stage(self) -> str:
        if self._closed_at is not None:
            return "closed"
        stages = [r.status.stage for r in self._services.values()]
        if "escalated" in stages:
            return "escalated"
        return min(stages, key=STAGE_ORDER.index) if stages else "identification"

    def _escalation_level(self) -> int:
        return max((r.status.escalation_level for r in self._services.values()), default=0)

    def _awaiting(self) -> tuple[list[str], datetime | None]:
        partners: list[str] = []
        deadlines: list[datetime] = []
        for run in self._services.values():
            attempt = run.pending_attempt()
            checkin = run.open_checkin()
            if attempt is not None:
                partners.append(attempt.partner_id)
                deadlines.append(attempt.deadline)
            elif checkin is not None and run.status.partner_id and checkin.answer_by:
                partners.append(run.status.partner_id)
                deadlines.append(checkin.answer_by)
        return sorted(set(partners)), min(deadlines, default=None)

    def _engaged(self) -> list[str]:
        """Partners offered the referral now, or serving a service not yet completed."""
        partners = set()
        for run in self._services.values():
            if run.status.stage == "closed" or run.done:
                continue
            if run.pending_attempt() is not None or run.status.accepted_at is not None:
                if run.status.partner_id:
                    partners.add(run.status.partner_id)
        return sorted(partners)

    def _publish(self) -> None:
        """Refresh the UI's current details (no history event: served by the metadata query);
        upsert search attributes only when something they show changed."""
        awaiting, due = self._awaiting()
        engaged = self._engaged()
        stage = self._stage()
        level = self._escalation_level()
        workflow.set_current_details(self._details_markdown(stage))
        state = (stage, tuple(awaiting), tuple(engaged), due, level)
        if state == self._published:
            return
        self._published = state
        workflow.upsert_search_attributes(
            [
                sa.REFERRAL_STAGE.value_set(stage),
                sa.REFERRAL_URGENCY.value_set(self._assessment.urgency),
                sa.REFERRAL_REGION.value_set(self._input.intake.region),
                sa.REFERRAL_SERVICES.value_set(list(self._services)),
                sa.AWAITING_PARTNERS.value_set(awaiting),
                sa.REFERRAL_PARTNERS.value_set(engaged),
                sa.ESCALATION_LEVEL.value_set(level),
                sa.REPLY_DUE_BY.value_set(due) if due else sa.REPLY_DUE_BY.value_unset(),
            ]
        )

    def _details_markdown(self, stage: str) -> str:
        lines = [f"**R-{self._code}** · stage `{stage}` · urgency `{self._assessment.urgency}`", ""]
        lines.append("| service | stage | partner | deadline | level | last event |")
        lines.append("|---|---|---|---|---|---|")
        for run in self._services.values():
            s = run.status
            attempt = run.pending_attempt()
            checkin = run.open_checkin()
            deadline = attempt.deadline if attempt else (checkin.answer_by if checkin else None)
            when = _at(deadline) if deadline else "-"
            lines.append(
                f"| {s.service} | {s.stage} | {s.partner_id or '-'} | {when} | {s.escalation_level} | {_last_event(s)} |"
            )
        if self._closed_reason:
            lines += ["", f"Closed: {self._closed_reason}"]
        return "\n".join(lines)

    @staticmethod
    def _summary_line(s: ServiceStatus) -> str:
        partner = s.partner_id if s.accepted_at else "no partner"
        return f"{s.service}: {s.stage}, {partner}, {len(s.attempts)} offer(s), escalation level {s.escalation_level}"

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
        except asyncio.TimeoutError:
            return condition()

    def _context(self, **extra: object) -> NoticeContext:
        intake = self._input.intake
        values: dict[str, object] = dict(
            code=self._code,
            urgency=self._assessment.urgency,
            region=intake.region,
            services=list(self._services),
            escalation_level=self._escalation_level(),
            age_group=intake.person.age_group,
            languages=intake.person.languages,
            interpreter_needed=self._assessment.interpreter_needed,
        )
        values.update(extra)
        return NoticeContext.model_validate(values)

    def _notify_partner(self, run: _ServiceRun, partner_id: str, template: str, **extra: object) -> asyncio.Task[bool]:
        return self._notify("partner", partner_id, template, service=run.status.service, **extra)

    def _notify_coordinator(self, run: _ServiceRun, template: str, **extra: object) -> asyncio.Task[bool]:
        extra.setdefault("escalation_level", run.status.escalation_level)
        return self._notify("coordinator", self._input.intake.region, template, service=run.status.service, **extra)

    def _notify(self, recipient: str, recipient_id: str, template: str, **extra: object) -> asyncio.Task[bool]:
        """Send by email and, where it matters, SMS, in the background; the task says if any got through."""
        notice = Notice(
            recipient=recipient,  # type: ignore[arg-type]
            recipient_id=recipient_id,
            template=template,  # type: ignore[arg-type]
            context=self._context(**extra),
        )
        by_sms = PARTNER_TEMPLATES_BY_SMS if recipient == "partner" else COORDINATOR_TEMPLATES_BY_SMS
        channels = ["sms", "email"] if template in by_sms else ["email"]
        task = asyncio.create_task(self._deliver_any(notice, channels))
        self._background.append(task)
        return task

    async def _deliver_any(self, notice: Notice, channels: list[str]) -> bool:
        sends = [asyncio.create_task(self._deliver(notice, c)) for c in channels]
        results = await asyncio.gather(*sends, return_exceptions=True)
        return any(r is True for r in results)

    async def _deliver(self, notice: Notice, channel: str) -> bool:
        method = ReferralActivities.send_sms if channel == "sms" else ReferralActivities.send_email
        try:
            await workflow.execute_activity_method(
                method,
                notice,
                start_to_close_timeout=SEND_TIMEOUT,
                schedule_to_close_timeout=DELIVERY_GIVE_UP,
                retry_policy=DELIVERY_RETRY,
                summary=_delivery_summary(notice, channel),
            )
            return True
        except ActivityError as err:
            cause = err.cause
            problem = cause.type if isinstance(cause, ApplicationError) and cause.type else "gave_up"
            self._channel_problems.append(
                ChannelProblem(at=workflow.now(), partner_id=notice.recipient_id, channel=channel, problem=problem)  # type: ignore[arg-type]
            )
            if notice.recipient == "partner" and not self._closed_at:
                self._notify(
                    "coordinator",
                    self._input.intake.region,
                    "channel_problem",
                    service=notice.context.service,
                    partner_id=notice.recipient_id,
                    channel=channel,
                    problem=problem,
                )
            return False

    def _cancel_pending_messages(self) -> None:
        """On closure, offers and check-ins still retrying must not go out late."""
        for task in self._background:
            if not task.done():
                task.cancel()
        self._background = []
        for run in self._services.values():
            attempt = run.pending_attempt()
            if attempt is not None:
                attempt.outcome = "withdrawn"
                self._notify_partner(run, attempt.partner_id, "referral_closed", closed_reason=self._closing)
            elif run.status.accepted_at and run.status.partner_id and not run.done:
                self._notify_partner(run, run.status.partner_id, "referral_closed", closed_reason=self._closing)

    async def _drain_background(self) -> None:
        while self._background:
            pending, self._background = self._background, []
            await asyncio.gather(*pending, return_exceptions=True)
