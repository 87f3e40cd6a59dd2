"""Partners' availability: the matching activity, which reads the directory, the partners'
capacity (ledger/capacity.py) and the clock; and the coordinators' emails when a partner goes
full or reopens (workflows/capacity_notice.py).

These read the project's database, which workflow code never imports: the workflows call them
by name (workflows.models.MATCH_AVAILABLE_PARTNERS ...), and the worker registers them beside
ReferralActivities. The clock is the activity's (`clock`), so a test can say "it is 02:00 in
Casablanca" without touching the machine's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy.exc import SQLAlchemyError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.directory import ConfigError, Contact, Directory, Partner, load_directory
from activities.email import EmailRefused, build_email, send_email
from activities.matching import available_ladder
from config.settings import Settings
from infra.translations import DEFAULT_LANGUAGE, LANGUAGES, translations
from ledger.capacity import CapacityChange, CapacityStore, FullSpell, full_spell
from ledger.migrate import LedgerNotReady
from workflows.models import (
    MATCH_AVAILABLE_PARTNERS,
    RECORD_CAPACITY_LAPSE,
    TELL_CAPACITY_CHANGE,
    CapacityNotice,
    MatchRequest,
    MatchResult,
)

log = structlog.get_logger("activities")
_JUST_BEFORE = timedelta(microseconds=1)


def capacity_contacts(directory: Directory, partner: Partner) -> list[Contact]:
    """Who is told a partner's capacity changed: the coordinator of each region it covers; for a
    national partner, the national focal point."""
    contacts = [directory.national_focal_point] if partner.national else [directory.coordinator(r) for r in partner.regions]
    return list({c.id: c for c in contacts}.values())


class AvailabilityActivities:
    def __init__(self, settings: Settings, clock: Callable[[], datetime] | None = None) -> None:
        self.settings = settings
        self.clock = clock or (lambda: datetime.now(UTC))
        self.store = CapacityStore.from_settings(settings)

    def _directory(self) -> Directory:
        try:
            return load_directory(self.settings.referral_partners_file)
        except ConfigError as err:
            raise ApplicationError(str(err), type="ConfigError") from None  # retried: an operator can fix it

    # --- matching --------------------------------------------------------------------------

    @activity.defn(name=MATCH_AVAILABLE_PARTNERS)
    async def match_available_partners(self, request: MatchRequest) -> MatchResult:
        ranked = self._directory().ranked(request)
        now = self.clock()
        full = await asyncio.to_thread(self._full_now, [p.id for p in ranked], request.service, now)
        result = available_ladder(ranked, full, request.urgency, now, ZoneInfo(self.settings.referral_timezone))
        log.info(
            "partners matched", service=request.service, region=request.region, candidates=len(result.candidates),
            skipped_full=sum(s.reason == "full" for s in result.skipped), skipped_closed=sum(s.reason == "closed" for s in result.skipped),
        )  # fmt: skip
        return result

    def _full_now(self, partner_ids: list[str], service: str, now: datetime) -> dict[str, FullSpell]:
        try:
            changes = self.store.changes_of(partner_ids)
        except (LedgerNotReady, SQLAlchemyError) as err:
            # An emergency must not wait for the database: match as before capacity was known.
            log.warning("capacity unknown, matching without it", service=service, error=str(err) if isinstance(err, LedgerNotReady) else type(err).__name__)
            return {}
        spells = {pid: full_spell(changes.get(pid, []), service, now) for pid in partner_ids}
        return {pid: spell for pid, spell in spells.items() if spell is not None}

    # --- telling the coordinators ----------------------------------------------------------

    @activity.defn(name=TELL_CAPACITY_CHANGE)
    async def tell_coordinators_of_capacity(self, notice: CapacityNotice) -> int:
        """Email the coordinators that the partner went full, or reopened, for `notice.flipped`.
        The number of emails sent; a recipient that refuses (invalid address) is skipped."""
        directory = self._directory()
        partner = directory.partner(notice.partner_id)
        if partner is None or not notice.flipped:
            return 0
        template = "full" if notice.state == "full" else "lapsed" if notice.channel == "expiry" else "reopened"
        sent = 0
        for contact in capacity_contacts(directory, partner):
            if not contact.email:
                continue
            language = contact.language if contact.language in LANGUAGES else DEFAULT_LANGUAGE
            subject, body = self._render(template, notice, partner, language)
            key = f"capacity-{notice.change_id}-{template}/{contact.id}"
            try:
                await send_email(self.settings, build_email(self.settings, contact.email, subject, body, key, language))
            except EmailRefused as err:
                log.warning("capacity notice refused", partner=partner.id, recipient=contact.id, problem=err.kind)
                continue
            sent += 1
        log.info("capacity notice sent", partner=partner.id, template=template, services=notice.flipped, messages=sent)
        return sent

    def _render(self, template: str, notice: CapacityNotice, partner: Partner, language: str) -> tuple[str, str]:
        words = translations(self.settings.referral_messages_dir, language)
        tz = ZoneInfo(self.settings.referral_timezone)
        labels = words.labels("services")

        def when(value: datetime) -> str:
            return value.astimezone(tz).strftime(words["message.time_format"])

        values = {
            "partner": partner.name,
            "partner_id": partner.id,
            "services": ", ".join(labels.get(s, s) for s in notice.flipped),
            "since": when(notice.at),
            "until": when(notice.until) if notice.until else words["message.capacity_until_open"],
            "channel": words.labels("capacity_channels").get(notice.channel, notice.channel),
        }
        body = words.format(f"message.capacity.{template}.body", **values).strip() + "\n\n" + words.format("message.footer").strip() + "\n"
        return words.format(f"message.capacity.{template}.subject", **values).strip(), body

    @activity.defn(name=RECORD_CAPACITY_LAPSE)
    async def record_capacity_lapse(self, notice: CapacityNotice) -> list[str]:
        """At the end of a FULL with a time limit: the services it kept full that reopen now,
        recorded once as `lapsed`; none when a later FULL or OPEN decided first."""
        assert notice.until is not None
        directory = self._directory()
        partner = directory.partner(notice.partner_id)
        if partner is None:
            return []
        return await asyncio.to_thread(self._lapse, notice, partner)

    def _lapse(self, notice: CapacityNotice, partner: Partner) -> list[str]:
        until = notice.until
        assert until is not None
        before = [c for c in self.store.changes_of([partner.id]).get(partner.id, []) if c.at < until]
        covered = [notice.scope] if notice.scope else partner.services
        lapsing = [
            s for s in covered
            if (spell := full_spell(before, s, until - _JUST_BEFORE)) is not None and spell.until == until
        ]  # fmt: skip
        if lapsing:
            change = CapacityChange(
                partner_id=partner.id, service=notice.scope, state="lapsed", channel="expiry", at=until,
                regions=[] if partner.national else partner.regions,
            )  # fmt: skip
            self.store.record(change, key=f"lapse-{notice.change_id}")
        return lapsing

    def all(self) -> list:
        return [self.match_available_partners, self.tell_coordinators_of_capacity, self.record_capacity_lapse]
