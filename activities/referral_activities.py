"""The referral's side effects: reading the directory and policy, sending SMS and email.

Every activity is safe to repeat: sends carry a key stable across retries and across the
referral's runs (its workflow id and the notice's number), reads have no effects. Permanent failures raise non-retryable ApplicationErrors
whose types the workflow's retry policy also names.
"""

from __future__ import annotations

import structlog
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.directory import ConfigError, Contact, Directory, Partner, load_directory, load_policy
from activities.email import EmailRefused, build_email, send_email
from activities.messages import RenderedMessage, render
from activities.observability import count_sms_failure
from activities.partner_links import LINK_TEMPLATES, partner_link
from activities.sms import SmsBackend, SmsRefused
from activities.sms_channel import build_sms_backend
from activities.sms_store import is_opted_out
from config.settings import Settings
from workflows.models import Candidate, Delivery, EscalationPolicy, MatchRequest, Notice
from workflows.projection import alerted

log = structlog.get_logger("activities")


def _idempotency_key(notice: Notice, channel: str) -> str:
    info = activity.info()
    # A notice scheduled before notices were numbered keeps the key it was first tried with.
    workflow_id = info.workflow_id or ""
    return notice.send_key(workflow_id, channel) or f"{workflow_id}/{info.workflow_run_id}/{info.activity_id}"


class ReferralActivities:
    def __init__(self, settings: Settings, sms: SmsBackend | None = None) -> None:
        self.settings = settings
        self.sms = sms or build_sms_backend(settings)

    def _directory(self) -> Directory:
        try:
            return load_directory(self.settings.referral_partners_file)
        except ConfigError as err:
            # Retryable: an operator can fix the file while the activity waits.
            raise ApplicationError(str(err), type="ConfigError") from None

    @activity.defn
    async def load_policy(self, urgency: str) -> EscalationPolicy:
        try:
            return load_policy(self.settings.referral_policy_file, urgency)
        except ConfigError as err:
            raise ApplicationError(str(err), type="ConfigError") from None

    @activity.defn
    async def match_partners(self, request: MatchRequest) -> list[Candidate]:
        candidates = self._directory().match(request)
        log.info("partners matched", service=request.service, region=request.region, candidates=len(candidates))
        return candidates

    def _recipients(self, notice: Notice) -> list[Contact]:
        directory = self._directory()
        if notice.recipient == "partner":
            partner = directory.partner(notice.recipient_id)
            if partner is None:
                raise ApplicationError(f"no partner {notice.recipient_id!r} in the directory", type="UnknownRecipient", non_retryable=True)
            return [partner]
        contacts = [directory.coordinator(notice.recipient_id)]
        # Emergencies and escalations that climb also reach the national focal point.
        reaches = "national_focal_point" in alerted(notice.template, notice.context.urgency, notice.context.escalation_level)
        if reaches and directory.national_focal_point.id != contacts[0].id:
            contacts.append(directory.national_focal_point)
        return contacts

    def _render(self, notice: Notice, contact: Contact) -> RenderedMessage:
        link = None
        if notice.recipient == "partner" and notice.template in LINK_TEMPLATES:
            # A fresh signed link to the partner details page; None when no secret is configured.
            link = partner_link(
                self.settings.public_base_url,
                self.settings.partner_link_secret,
                self.settings.partner_link_ttl_hours,
                notice.context.code,
                contact.id,
                contact.language,
            )
        return render(notice, contact.language, self.settings.referral_messages_dir, self.settings.referral_timezone, link)

    @activity.defn
    async def send_sms(self, notice: Notice) -> Delivery:
        key = _idempotency_key(notice, "sms")
        sent = 0
        for i, contact in enumerate(self._recipients(notice)):
            message = self._render(notice, contact)
            if not message.sms:
                continue
            problem: str | None = None
            if not contact.sms:
                problem = "NoSmsNumber"
            elif is_opted_out(self.settings, contact.sms):
                problem = "OptedOut"  # the number answered STOP (recorded by the SMS webhook): email only
            else:
                try:
                    await self.sms.send(
                        contact.sms,
                        message.sms,
                        f"{key}/{contact.id}",
                        callback_params={"code": notice.context.code, "partner": contact.id},
                    )
                except SmsRefused as err:
                    problem = err.kind
                except Exception as err:
                    # Retried by Temporal (TwilioUnavailable, TwilioOutcomeUnknown, a timeout, ...)
                    count_sms_failure(type(err).__name__)
                    raise
            if problem is None:
                sent += 1
                if notice.backup_sms:  # the policy sends offers and reminders to the backup too
                    sent += await self._sms_to_backup(notice, contact, message.sms, key)
                continue
            if i == 0 or problem not in ("NoSmsNumber", "OptedOut"):
                count_sms_failure(problem)
            if i == 0:
                # The main number cannot take it: the backup number does, and the coordinator
                # is told of the main one's problem all the same.
                await self._sms_to_backup(notice, contact, message.sms, key)
                detail = {"NoSmsNumber": "recipient has no SMS number", "OptedOut": "recipient opted out of SMS (STOP)"}.get(problem, f"SMS refused: {problem}")
                raise ApplicationError(detail, type=problem, non_retryable=True)
        log.info("sms sent", code=notice.context.code, template=notice.template, recipient=notice.recipient_id, messages=sent)
        return Delivery(channel="sms", status="sent" if sent else "skipped")

    async def _sms_to_backup(self, notice: Notice, contact: Contact, body: str, key: str) -> int:
        """The partner's backup number, if it has one that did not opt out: 1 when sent."""
        if not isinstance(contact, Partner) or not contact.backup_sms or is_opted_out(self.settings, contact.backup_sms):
            return 0
        try:
            await self.sms.send(
                contact.backup_sms, body, f"{key}/{contact.id}/backup", callback_params={"code": notice.context.code, "partner": contact.id}
            )
        except SmsRefused as err:
            count_sms_failure(err.kind)
            log.warning("sms to backup number refused", code=notice.context.code, recipient=contact.id, problem=err.kind)
            return 0
        return 1

    @activity.defn
    async def send_email(self, notice: Notice) -> Delivery:
        key = _idempotency_key(notice, "email")
        sent = 0
        for i, contact in enumerate(self._recipients(notice)):
            backup = contact.backup_email if isinstance(contact, Partner) else None
            if not contact.email:
                if i == 0:
                    await self._email_to_backup(notice, contact, backup, key)
                    raise ApplicationError("recipient has no email address", type="InvalidEmailAddress", non_retryable=True)
                continue
            message = self._render(notice, contact)
            try:
                msg = build_email(self.settings, contact.email, message.subject, message.body, f"{key}/{contact.id}", message.language)
                await send_email(self.settings, msg)
            except EmailRefused as err:
                if i == 0:
                    await self._email_to_backup(notice, contact, backup, key)
                    raise ApplicationError(f"email refused: {err.kind}", type=err.kind, non_retryable=True) from None
                continue
            sent += 1
            if notice.backup_sms:  # offers and reminders, when the policy says so: the backup address too
                sent += await self._email_to_backup(notice, contact, backup, key)
        log.info("email sent", code=notice.context.code, template=notice.template, recipient=notice.recipient_id, messages=sent)
        return Delivery(channel="email", status="sent" if sent else "skipped")

    async def _email_to_backup(self, notice: Notice, contact: Contact, address: str | None, key: str) -> int:
        if not address:
            return 0
        message = self._render(notice, contact)
        try:
            await send_email(self.settings, build_email(self.settings, address, message.subject, message.body, f"{key}/{contact.id}/backup", message.language))
        except EmailRefused as err:
            log.warning("email to backup address refused", code=notice.context.code, recipient=contact.id, problem=err.kind)
            return 0
        return 1

    async def aclose(self) -> None:
        await self.sms.aclose()

    def all(self) -> list:
        return [self.load_policy, self.match_partners, self.send_sms, self.send_email]
