"""ReferralWorkflow: one referral, from identification to closure, however many months it takes.

Deterministic code only. Each needed service runs its own partner ladder side by side
(workflows/service_ladder.py): offer -> reminder -> deadline (escalate, next candidate) -> ... ->
escalated (alerts back off and climb until the coordinator assigns a partner) -> follow-up
check-ins through the reflection period -> completed. Partner replies and coordinator actions
arrive as updates whose validators reject, without a trace in history, anything that does not
apply (a late reply, a stranger, an unknown action).

A referral continues as new (same workflow id, a fresh history) once its run's history is long:
at a safe point, where every service sits in a safe wait with nothing to handle, no handler runs
and no notice is being sent, it hands its whole state (models.CarriedState) to the next run,
which waits for the very same reminders, deadlines, alerts and check-ins.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities.referral_activities import ReferralActivities
    from ledger.record import LedgerRecord, ServiceOutcome
    from workflows import generations, ledger_entry, projection, schedules, status_memo, update_rules
    from workflows import search_attributes as sa
    from workflows.continuation import REFLECTION, Continuation
    from workflows.intake import assess
    from workflows.ledger_writes import LedgerWriter
    from workflows.models import (
        MATCH_AVAILABLE_PARTNERS,
        ActionOutcome,
        CarriedState,
        ChannelProblem,
        ChannelReport,
        CoordinatorAction,
        EscalationPolicy,
        MatchRequest,
        MatchResult,
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
    from workflows.service_ladder import ServiceLadder, ServiceRun

# Config files can be fixed by an operator while the activity retries, so nothing is final.
CONFIG_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(minutes=1))

# Asked once at the start of every run (workflows/generations.py): alerts that back off and climb,
# follow-up through the reflection period and its notice, continue-as-new. A referral started
# before it (no marker in its history) keeps the former lifecycle in its current run until it
# continues as new (workflows/continuation.py); its next run is all new.
LONG_LIVED = generations.LONG_LIVED
# Asked once when a new referral is matched: partners full for a service are skipped, an
# emergency goes first to partners open now, offers to a closed partner count their reply period
# from its next opening, and the status shows who was skipped.
CAPACITY = generations.CAPACITY


@workflow.defn
class ReferralWorkflow(Continuation, ServiceLadder):
    @workflow.init
    def __init__(self, input: ReferralInput) -> None:
        self._input = input
        self._code = input.code
        # Computed once by the starter (or carried); `assess` only for referrals started before that.
        self._assessment = input.carried.assessment if input.carried else input.assessment or assess(input.intake)
        self._services = {
            s: ServiceRun(status=ServiceStatus(service=s)) for s in self._assessment.needs
        }
        self._policy: EscalationPolicy | None = None
        self._closing: str | None = None  # closed | cancelled | consent_withdrawn
        self._closing_outcome: ServiceOutcome | None = None  # for the services still open when it closes
        self._closed_reason: str | None = None
        self._closed_at: datetime | None = None
        self._channel_problems: list[ChannelProblem] = []
        # The execution's start (as describe gives it) of the referral's first run, carried after.
        self._started_at = workflow.info().workflow_start_time
        self._run_number = 1
        self._reflection_ends_at: datetime | None = None
        self._reflection_notice_done = False
        self._long_lived = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._safe_waits: dict[str, Callable[[], bool]] = {}
        carried = input.carried
        if carried is not None:
            self._resume(carried)
        self._notices = Notices(
            input.intake.region, self._context, self._channel_problems, lambda: self._closed_at is not None,
            sent=carried.notices_sent if carried else 0,
        )
        self._published: tuple | None = None

    def _resume(self, carried: CarriedState) -> None:
        """The state the run before handed over; nothing is loaded or matched again."""
        self._assessment = carried.assessment
        self._services = {c.status.service: ServiceRun.resumed(c) for c in carried.services}
        self._policy = carried.policy
        self._channel_problems = carried.channel_problems
        self._started_at = carried.started_at
        self._run_number = carried.run
        self._reflection_ends_at = carried.reflection_ends_at
        self._reflection_notice_done = carried.reflection_notice_done

    # --- the lifecycle -------------------------------------------------------------------

    @workflow.run
    async def run(self, input: ReferralInput) -> ReferralSummary:
        generation = input.generation
        self._long_lived = generations.runs(generation, LONG_LIVED)
        # The status in the memo (a no-op for referrals started before it); from generation 1 the
        # search attributes go with it, once the workflow task has settled: one upsert a task.
        alongside = (self._search_attributes_due, self._upsert_search_attributes) if generation >= 1 else None
        self._memo = status_memo.MemoPublisher(self.status, generation, alongside)
        # The ledger's record goes with the notices (a no-op for runs started before it)
        self._ledger = LedgerWriter(
            self._ledger_record, lambda: ledger_entry.milestones_of(self._statuses(), self._closed_reason), lambda: self._notices.sent, self._code, generation
        )
        self._publish()
        if input.carried is None:
            await self._identify(input)
        else:
            self._log("referral continued as new", run=self._run_number)
        policy = self._require_policy()
        if self._long_lived and self._reflection_ends_at is None:
            self._reflection_ends_at = schedules.reflection_ends(policy, self._started_at, minor=self._assessment.minor)
        self._tasks = {name: asyncio.create_task(self._run_service(run)) for name, run in self._services.items()}
        if self._long_lived and not self._reflection_notice_done:
            self._tasks[REFLECTION] = asyncio.create_task(self._watch_reflection_period())
        await self._run_services_or_continue_as_new()

        self._closed_reason = self._closing or "completed"
        self._closed_at = workflow.now()
        for run in self._services.values():
            run.status.stage = "closed"
            if run.status.outcome is None:
                run.status.outcome = self._closing_outcome
        self._publish()
        self._log("referral closed", reason=self._closed_reason)
        self._notices.to_coordinator(
            "summary",
            closed_reason=self._closed_reason,
            summary_lines=[projection.summary_line(r.status) for r in self._services.values()],
        )
        await self._notices.drain()
        await self._ledger.drain()  # the closed referral's record, written with the summary
        self._memo.flush()  # the closed status, should nothing have waited since
        return ReferralSummary(
            code=self._code,
            closed_reason=self._closed_reason,
            services=[r.status for r in self._services.values()],
        )

    async def _identify(self, input: ReferralInput) -> None:
        """A new referral: load the policy it will keep for its whole life, rank each service's partners."""
        self._log("referral started", urgency=self._assessment.urgency, region=input.intake.region, services=list(self._services))
        self._count("referrals_started", "referrals started", urgency=self._assessment.urgency, region=input.intake.region)
        policy = workflow.execute_activity_method(
            ReferralActivities.load_policy,
            self._assessment.urgency,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=CONFIG_RETRY,
            summary=f"load the escalation policy for {self._assessment.urgency}",
        )
        matched: list[MatchResult]
        if input.generation >= 1:  # the policy and the ladders together: one workflow task
            ladders = asyncio.gather(*(self._match(service, input, True) for service in self._services))
            self._policy, matched = await asyncio.gather(policy, ladders)
        else:  # as referrals started before generations did: the policy first
            self._policy = await policy
            with_capacity = workflow.patched(CAPACITY)
            matched = await asyncio.gather(*(self._match(service, input, with_capacity) for service in self._services))
        for run, result in zip(self._services.values(), matched, strict=True):
            run.ladder = result.candidates
            run.status.candidates = [c.partner_id for c in result.candidates]
            run.status.skipped = result.skipped

    async def _match(self, service: str, input: ReferralInput, with_capacity: bool) -> MatchResult:
        """A service's ladder: with partners' capacity and opening hours (capacity-2026-12), or,
        for a referral started before, as it was matched then."""
        request = MatchRequest(service=service, region=input.intake.region, languages=input.intake.person.languages, minor=self._assessment.minor)
        summary = f"rank partners for {service} in {input.intake.region}"
        if with_capacity:
            return await workflow.execute_activity(
                MATCH_AVAILABLE_PARTNERS,
                request.model_copy(update={"urgency": self._assessment.urgency}),
                result_type=MatchResult,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=CONFIG_RETRY,
                summary=summary,
            )
        ladder = await workflow.execute_activity_method(
            ReferralActivities.match_partners, request, start_to_close_timeout=timedelta(seconds=30), retry_policy=CONFIG_RETRY, summary=summary
        )
        return MatchResult(candidates=ladder)

    # --- the reflection period ---------------------------------------------------------------

    async def _watch_reflection_period(self) -> None:
        """Tell the coordinator, `reflection_end_notice` before the reflection period ends, while
        the referral is open."""
        ends = self._reflection_ends_at
        assert ends is not None
        at = schedules.reflection_notice_at(self._require_policy(), ends)
        over = lambda: bool(self._closing) or all(r.done for r in self._services.values())  # noqa: E731
        if await self._wait_until(over, at, f"tell the coordinator the reflection period ends {_at(ends)}", safe=REFLECTION):
            return
        self._reflection_notice_done = True
        if workflow.now() < ends:
            self._notices.to_coordinator("reflection_ending", deadline=ends)

    # --- partner replies -----------------------------------------------------------------

    @workflow.update
    async def partner_reply(self, reply: PartnerReply) -> ReplyOutcome:
        await self._until_resumed()
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
                attempt.decline_code = reply.decline_code if action == "decline" else None
                self._log(f"offer {attempt.outcome}", service=run.status.service, partner=reply.partner_id)
                if action == "accept":
                    waited = (now - self._started_at).total_seconds()
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
                    run.status.outcome = "delivered"
                elif action == "issue":
                    run.status.issues_reported += 1
                    # The partner's text stays in the (encrypted) history, never in an email.
                    self._notify_coordinator(run, "issue_reported", partner_id=reply.partner_id)
        self._publish()
        outcome = {"accept": "accepted", "decline": "declined", "ok": "noted", "done": "completed", "issue": "issue_reported"}[action]
        return ReplyOutcome(code=self._code, outcome=outcome, services=[r.status.service for r in runs])

    @partner_reply.validator
    def _validate_partner_reply(self, reply: PartnerReply) -> None:
        self._reply_targets(reply)

    def _reply_targets(self, reply: PartnerReply) -> list[ServiceRun]:
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
        await self._until_resumed()
        if action.action == "assign":
            assert action.service is not None  # the validator requires it
            run = self._services[action.service]
            run.assignment = action.partner_id
            await workflow.wait_condition(lambda: run.assignment is None or bool(self._closing))
        elif action.action == "close" and action.service:
            run = self._services[action.service]
            run.done = True
            run.closed_by_coordinator = True
            run.status.outcome = action.outcome
            await workflow.wait_condition(lambda: run.status.stage == "closed")
        else:
            self._closing = {"close": "closed", "cancel": "cancelled", "withdraw_consent": "consent_withdrawn"}[action.action]
            # What became of the services still open: the coordinator's outcome; a withdrawal of
            # consent is the person declining them.
            self._closing_outcome = action.outcome or (
                update_rules.CONSENT_WITHDRAWN_OUTCOME if action.action == "withdraw_consent" else None
            )
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
            started_at=self._started_at,
            assessment=self._assessment,
            age_group=intake.person.age_group,
            languages=intake.person.languages,
            services=self._statuses(),
            escalation_level=self._escalation_level(),
            awaiting_partners=awaiting,
            reply_due_by=due,
            channel_problems=self._channel_problems,
            reflection_ends_at=self._reflection_ends_at,
            closed_at=self._closed_at,
            closed_reason=self._closed_reason,
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

    def _ledger_record(self, updated_at: datetime) -> LedgerRecord:
        """The de-identified record the ledger keeps (workflows/ledger_entry.py), dated `updated_at`."""
        return ledger_entry.ledger_record(self._input.intake, self.status(), updated_at)

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
        upsert search attributes only when something they show changed: at once, or (generation
        1 on) with the memo's status once the workflow task has settled."""
        workflow.set_current_details(
            projection.details_markdown(self._code, self._stage(), self._assessment.urgency, self._statuses(), self._closed_reason)
        )
        memo = getattr(self, "_memo", None)  # (none yet for an update handled before the run began)
        if memo is None or not memo.carries_alongside():
            self._upsert_search_attributes()

    def _search_attributes_state(self) -> tuple:
        awaiting, due = projection.awaited(self._statuses())
        engaged = projection.engaged_partners(r.status for r in self._services.values() if not r.done)
        return (self._stage(), tuple(awaiting), tuple(engaged), due, self._escalation_level())

    def _search_attributes_due(self) -> bool:
        return self._search_attributes_state() != self._published

    def _upsert_search_attributes(self) -> None:
        state = self._search_attributes_state()
        if state == self._published:
            return
        self._published = state
        stage, awaiting, engaged, due, level = state
        intake = self._input.intake
        workflow.upsert_search_attributes(
            sa.current(stage, self._assessment.urgency, intake.region, list(self._services), list(awaiting), list(engaged), level, due)
        )

    # --- helpers -------------------------------------------------------------------------

    def _log(self, message: str, **fields: object) -> None:
        """Replay-safe: workflow.logger writes nothing while replaying. Codes, ids, services and
        counts only; never anything from the intake's person or notes."""
        workflow.logger.info(message, extra={"referral": self._code, **fields})

    def _count(self, name: str, description: str, **labels: str) -> None:
        """A counter on the workflow's metric meter (replay-safe: nothing is recorded on replay)."""
        workflow.metric_meter().create_counter(name, description).add(1, labels)

    def _context(self, **extra: object) -> NoticeContext:
        services, level = list(self._services), self._escalation_level()
        return notice_context(self._code, self._input.intake, self._assessment, services, level, **extra)

    def _notify_partner(self, run: ServiceRun, partner_id: str, template: str, **extra: object) -> asyncio.Task[bool]:
        return self._notices.send("partner", partner_id, template, service=run.status.service, **extra)

    def _notify_coordinator(self, run: ServiceRun, template: str, **extra: object) -> asyncio.Task[bool]:
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
