"""How a referral's notices go out: email always, SMS too where someone must act now, each in
the background. A channel that cannot deliver is recorded as a channel problem and, for a
partner's message, the region's coordinator is told.

Workflow code (runs inside ReferralWorkflow): deterministic, schedules the send activities.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.referral_activities import ReferralActivities
    from workflows.intake import Assessment, Intake
    from workflows.models import ChannelProblem, Notice, NoticeContext

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
SEND_TIMEOUT = timedelta(seconds=45)
# Past this a message is given up and shown as a channel problem.
DELIVERY_GIVE_UP = timedelta(hours=24)

PARTNER_TEMPLATES_BY_SMS = {"offer", "reminder", "offer_withdrawn", "assigned", "checkin", "referral_closed"}
# Coordinators get every notice by email; these also by SMS because someone must act now.
COORDINATOR_TEMPLATES_BY_SMS = {"escalation", "ladder_exhausted", "escalated_alert", "escalation_to_focal_point", "issue_reported"}


def delivery_summary(notice: Notice, channel: str) -> str:
    """`SMS offer to partner casa-shelter (shelter)`: what the UI shows for a send activity."""
    what = "SMS" if channel == "sms" else "email"
    about = notice.context.service or ", ".join(notice.context.services)
    return f"{what} {notice.template.replace('_', ' ')} to {notice.recipient} {notice.recipient_id} ({about})"


def notice_context(
    code: str, intake: Intake, assessment: Assessment, services: Sequence[str], escalation_level: int, /, **extra: object
) -> NoticeContext:
    """What a template may say about the referral now: nothing that identifies the person.
    `extra` adds or overrides fields (e.g. a service's own escalation level)."""
    values: dict[str, object] = dict(
        code=code,
        urgency=assessment.urgency,
        region=intake.region,
        services=list(services),
        escalation_level=escalation_level,
        age_group=intake.person.age_group,
        languages=intake.person.languages,
        interpreter_needed=assessment.interpreter_needed,
    )
    values.update(extra)
    return NoticeContext.model_validate(values)


class Notices:
    """The referral's outgoing messages, each a background task saying if any channel got through.

    Each notice is numbered (`sent`, carried from run to run when the referral continues as new):
    its sends are deduplicated on that number, so a notice keeps its key whatever run sends it."""

    def __init__(
        self,
        region: str,
        context: Callable[..., NoticeContext],
        problems: list[ChannelProblem],
        referral_closed: Callable[[], bool],
        sent: int = 0,
    ) -> None:
        self._region = region  # the coordinator told is the region's
        self._context = context  # builds what a template may say, from the referral's state now
        self._problems = problems  # the referral's channel problems, appended to
        self._referral_closed = referral_closed
        self._background: list[asyncio.Task] = []
        self.sent = sent  # notices of the referral so far, in every run

    def in_flight(self) -> bool:
        """A notice is still being sent (or retried)."""
        return any(not task.done() for task in self._background)

    def send(self, recipient: str, recipient_id: str, template: str, **extra: object) -> asyncio.Task[bool]:
        """Send by email and, where it matters, SMS, in the background; the task says if any got through."""
        self.sent += 1
        backup_sms = bool(extra.pop("backup_sms", False))  # to the partner's backup number too
        notice = Notice(
            recipient=recipient,
            recipient_id=recipient_id,
            template=template,
            context=self._context(**extra),
            number=self.sent,
            backup_sms=backup_sms,
        )
        by_sms = PARTNER_TEMPLATES_BY_SMS if recipient == "partner" else COORDINATOR_TEMPLATES_BY_SMS
        channels = ["sms", "email"] if template in by_sms else ["email"]
        task = asyncio.create_task(self._deliver_any(notice, channels))
        self._background.append(task)
        return task

    def to_coordinator(self, template: str, **extra: object) -> asyncio.Task[bool]:
        return self.send("coordinator", self._region, template, **extra)

    def cancel_pending(self) -> None:
        """On closure: messages still retrying must not go out late."""
        for task in self._background:
            if not task.done():
                task.cancel()
        self._background = []

    async def drain(self) -> None:
        """Wait for every message, including those sent while waiting."""
        while self._background:
            pending, self._background = self._background, []
            await asyncio.gather(*pending, return_exceptions=True)

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
                summary=delivery_summary(notice, channel),
            )
            return True
        except ActivityError as err:
            cause = err.cause
            problem = cause.type if isinstance(cause, ApplicationError) and cause.type else "gave_up"
            self._problems.append(
                ChannelProblem(at=workflow.now(), partner_id=notice.recipient_id, channel=channel, problem=problem)
            )
            if notice.recipient == "partner" and not self._referral_closed():
                self.to_coordinator(
                    "channel_problem",
                    service=notice.context.service,
                    partner_id=notice.recipient_id,
                    channel=channel,
                    problem=problem,
                )
            return False
