"""Partners' capacity as they change it: `FULL [service] [3d]` / `OPEN [service]` by SMS
(starter/sms_capacity.py, answered by web/routes/sms_webhook.py) or on their capacity page
(web/routes/partner_capacity.py).

A change is recorded in the project's database (ledger/capacity.py) with the partner, the
channel and the time; then the coordinators' notice workflow (workflows/capacity_notice.py)
tells the coordinators what flipped and, for a FULL with an end, waits for it. An OPEN for
services that are not full changes nothing and records nothing. The matching activity reads
the changes for every new offer; offers already made are not withdrawn.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy.exc import SQLAlchemyError
from temporalio.client import Client
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError

from activities.directory import Partner
from activities.partner_links import organisation_link
from config.settings import Settings
from infra.translations import translations
from ledger.capacity import CapacityChange, CapacityStore, FullSpell, full_spells
from ledger.migrate import LedgerNotReady
from starter.sms_capacity import CapacityCommand
from workflows.capacity_notice import CapacityNoticeWorkflow, workflow_id
from workflows.models import CapacityNotice

log = structlog.get_logger("capacity")
START_TIMEOUT_SECONDS = 5.0


class ServiceNotOffered(ValueError):
    """The partner does not offer the service it named."""


@dataclass(frozen=True)
class CapacityOutcome:
    change: CapacityChange | None  # None: nothing to change (OPEN while open)
    services: list[str]  # what the change named: its service, or all the partner's
    flipped: list[str]  # the services that went full, or reopened, with it
    full: dict[str, FullSpell]  # the partner's services full after it


def _store(settings: Settings) -> CapacityStore:
    return CapacityStore.from_settings(settings)


def full_now(settings: Settings, partners: list[Partner], now: datetime | None = None) -> dict[str, dict[str, FullSpell]]:
    """For each partner, the services it is full for now (synchronous: call it in a thread)."""
    at = now or datetime.now(UTC)
    changes = _store(settings).changes_of(p.id for p in partners)
    return {p.id: full_spells(changes.get(p.id, []), p.services, at) for p in partners}


def _record(settings: Settings, partner: Partner, change: CapacityChange, key: str | None) -> CapacityOutcome:
    store = _store(settings)
    earlier = store.changes_of([partner.id]).get(partner.id, [])
    named = [change.service] if change.service else list(partner.services)
    if change.state == "open" and not full_spells(earlier, named, change.at):
        return CapacityOutcome(None, named, [], full_spells(earlier, partner.services, change.at))
    stored, _new = store.record(change, key)
    # From the rows themselves, so a redelivered SMS (same key) gets the same answer.
    prior = [c for c in earlier if c.id is not None and stored.id is not None and c.id < stored.id]
    before = full_spells(prior, partner.services, stored.at)
    after = full_spells([*prior, stored], partner.services, stored.at)
    flipped = [s for s in named if (s in before) != (s in after)]
    return CapacityOutcome(stored, named, flipped, after)


async def change_capacity(
    client: Client,
    settings: Settings,
    partner: Partner,
    state: Literal["full", "open"],
    service: str | None,
    channel: Literal["sms", "web"],
    *,
    until: datetime | None = None,
    key: str | None = None,
    now: datetime | None = None,
) -> CapacityOutcome:
    """Record the change and start the coordinators' notice. ServiceNotOffered; LedgerNotReady
    or SQLAlchemyError when the database cannot take it (nothing changed then)."""
    if service is not None and service not in partner.services:
        raise ServiceNotOffered(service)
    change = CapacityChange(
        partner_id=partner.id, service=service, state=state, until=until if state == "full" else None, channel=channel,
        at=now or datetime.now(UTC), regions=[] if partner.national else partner.regions,
    )  # fmt: skip
    outcome = await asyncio.to_thread(_record, settings, partner, change, key)
    stored = outcome.change
    if stored is not None and stored.id is not None and (outcome.flipped or stored.until is not None):
        notice = CapacityNotice(
            change_id=stored.id, partner_id=partner.id, state=state, scope=service, flipped=outcome.flipped,
            at=stored.at, until=stored.until, channel=channel,
        )  # fmt: skip
        await _start_notice(client, settings, notice)
    log.info("capacity changed", partner=partner.id, state=state, service=service or "all", channel=channel, flipped=outcome.flipped)
    return outcome


async def _start_notice(client: Client, settings: Settings, notice: CapacityNotice) -> None:
    try:
        await asyncio.wait_for(
            client.start_workflow(
                CapacityNoticeWorkflow.run, notice, id=workflow_id(notice), task_queue=settings.referral_task_queue
            ),
            START_TIMEOUT_SECONDS,
        )
    except WorkflowAlreadyStartedError:
        pass  # a redelivered SMS: told once
    except (TimeoutError, RPCError) as err:
        # The change stands (matching reads it); only the coordinators' email is missing.
        log.warning("capacity notice not started", partner=notice.partner_id, change=notice.change_id, error=type(err).__name__)


# --- the SMS commands -------------------------------------------------------------------------


async def on_sms(client: Client, settings: Settings, partner: Partner, command: CapacityCommand, sid: str) -> tuple[str, str, dict[str, Any]]:
    """(kind for the logs, the answer's `sms_reply.*` key, its values) for FULL, OPEN or LINK."""
    if command.problem is not None:
        return "capacity_not_understood", "capacity_help", {}
    if command.action == "link":
        link = organisation_link(settings.public_base_url, settings.partner_link_secret, settings.partner_link_ttl_hours, partner.id, partner.language)
        return ("capacity_link", "capacity_link", {"link": link}) if link else ("capacity_no_link", "capacity_no_link", {})
    now = datetime.now(UTC)
    until = now + command.duration if command.duration else None
    try:
        outcome = await change_capacity(client, settings, partner, command.action, command.service, "sms", until=until, key=f"sms-{sid}", now=now)
    except ServiceNotOffered:
        return "capacity_not_offered", "capacity_not_offered", {"services": [command.service]}
    except (LedgerNotReady, SQLAlchemyError) as err:
        log.error("capacity not recorded", partner=partner.id, error=str(err) if isinstance(err, LedgerNotReady) else type(err).__name__)
        return "unavailable", "unavailable", {}
    if command.action == "full":
        spell = outcome.full.get(outcome.services[0]) if outcome.services else None
        if spell is not None and spell.until is not None:
            return "capacity_full", "capacity_full_until", {"services": outcome.services, "until": _when(settings, partner, spell.until)}
        return "capacity_full", "capacity_full", {"services": outcome.services}
    if outcome.change is None:
        return "capacity_unchanged", "capacity_already_open", {"services": outcome.services}
    still = [s for s in partner.services if s in outcome.full]
    if still:
        labels = translations(settings.referral_messages_dir, partner.language).labels("services")
        return "capacity_open", "capacity_open_still_full", {"services": outcome.services, "still_full": ", ".join(labels.get(s, s) for s in still)}
    return "capacity_open", "capacity_open", {"services": outcome.services}


def _when(settings: Settings, partner: Partner, at: datetime) -> str:
    words = translations(settings.referral_messages_dir, partner.language)
    return at.astimezone(ZoneInfo(settings.referral_timezone)).strftime(words["message.time_format"])
