"""Partners' capacity end to end (issue 15), against the Temporal dev server with a real worker,
the web app in-process, the SMS outbox, the local SMTP server and a SQLite ledger migrated for
the test: FULL and OPEN by SMS and on the partner's page, matching that skips a full partner, an
emergency at 02:00 in Casablanca (the matching activity's clock, set by the test), the deadline
of an offer to a closed partner, and replies from a backup number.

Partners used: cas-assoc (Casablanca, FULL / OPEN), dak-assoc (Dakhla, office hours),
gon-assoc (Guelmim, with a backup number); no other test offers them referrals of these regions.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import httpx
import pytest
import yaml
from temporalio.api.sdk.v1 import WorkflowMetadata

from activities.availability import AvailabilityActivities
from activities.directory import load_directory
from activities.partner_links import sign_partner_link
from activities.referral_activities import ReferralActivities
from config.settings import Settings
from ledger import migrate
from ledger.capacity import CapacityStore
from starter import referrals
from tests.cases import adult_intake, uniform_policy
from tests.conftest import SmtpSink, wait_for
from tests.fixtures import PARTNERS_FILE
from tests.web.test_forms import HASH, PASSWORD, csrf_of
from tests.web.test_sms_webhook import PUBLIC, TOKEN, TWILIO_NUMBER, Harness, _close_all, text_of
from web.app import create_app
from worker import build_worker

SECRET = "partner-link-test-secret-0123456789abcdef"
TZ = ZoneInfo("Africa/Casablanca")
DIRECTORY = load_directory(PARTNERS_FILE)
POLICY = uniform_policy("6h", "3h", "6h", "6h", "6h")  # nothing times out while a test runs
NONCE = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def settings(make_settings, tmp_path: Path) -> Settings:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    made = make_settings(
        twilio_auth_token=TOKEN, public_base_url=PUBLIC, twilio_from_number=TWILIO_NUMBER, referral_policy_file=policy,
        partner_link_secret=SECRET, coordinator_logins=f"amina:{HASH}", web_session_secret="s" * 40,
    )  # fmt: skip
    migrate.upgrade(made.ledger_url)
    return made


@asynccontextmanager
async def harness(dev_env, settings: Settings, clock: Callable[[], datetime] | None = None) -> AsyncIterator[Harness]:
    """The SMS webhook's harness, with the matching activity on `clock` (the machine's by default)."""
    task_queue = f"capacity-test-{datetime.now(UTC).timestamp()}"
    settings = settings.model_copy(update={"referral_task_queue": task_queue})
    worker = build_worker(
        dev_env.client, settings, task_queue=task_queue, activities=ReferralActivities(settings), availability=AvailabilityActivities(settings, clock=clock)
    )
    app = create_app(settings, client=dev_env.client)
    async with worker, httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://referrals.example.org") as http:
        h = Harness(dev_env, settings, task_queue, http)
        try:
            yield h
        finally:
            await _close_all(h)
            # Notices still waiting for a FULL's end: not left on the session's dev server.
            query = f"WorkflowType = 'CapacityNoticeWorkflow' AND ExecutionStatus = 'Running' AND TaskQueue = '{task_queue}'"
            async for running in h.client.list_workflows(query):
                await h.client.get_workflow_handle(running.id, run_id=running.run_id).terminate("test over")


def emails(smtp: SmtpSink, address: str, subject: str) -> list[Any]:
    return [m for m in smtp.messages if m["To"] == address and subject in m["Subject"]]


async def ui_details(h: Harness, code: str) -> str:
    handle = h.client.get_workflow_handle(referrals.workflow_id(code))
    metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    return metadata.current_details


# --- FULL, then the next referral skips the partner; OPEN restores it -------------------------


async def test_full_by_sms_skips_the_partner_and_open_restores_it(dev_env, settings, smtp: SmtpSink) -> None:
    coordinator = DIRECTORY.coordinator("casablanca-settat").email or ""
    async with harness(dev_env, settings) as h:
        text = await h.reply("cas-assoc", "COMPLET hébergement")
        assert "hébergement" in text and "OPEN" in text
        await wait_for(lambda: emails(smtp, coordinator, "Partenaire complet"))

        code = await h.start()
        await h.offered(code, "nat-shelter-amane")
        shelter = (await h.status(code)).services[0]
        assert "cas-assoc" not in shelter.candidates and shelter.attempts[0].partner_id == "nat-shelter-amane"
        [skipped] = shelter.skipped
        assert (skipped.partner_id, skipped.reason, skipped.until, skipped.offered_instead) == ("cas-assoc", "full", None, "nat-shelter-amane")
        assert "cas-assoc full, offered to nat-shelter-amane instead" in await ui_details(h, code)
        # Offers already made are not withdrawn: a FULL of all services changes nothing here.
        assert "plus de nouvelles propositions" in await h.reply("nat-shelter-amane", "FULL")
        assert (await h.status(code)).services[0].attempts[0].outcome is None
        assert "de nouveau" in await h.reply("nat-shelter-amane", "OPEN")

        # The coordinator's assign form says since when cas-assoc is full.
        page = await coordinator_page(h, code)
        assert re.search(r"cas-assoc\).{0,10}complet depuis le \d\d/\d\d/\d{4}", page), page

        text = await h.reply("cas-assoc", "OUVERT hébergement")
        assert "de nouveau" in text and "hébergement" in text
        await wait_for(lambda: emails(smtp, coordinator, "de nouveau disponible"))
        assert "Rien à changer" in await h.reply("cas-assoc", "OPEN")
        again = await h.start()
        await h.offered(again, "cas-assoc")
        assert (await h.status(again)).services[0].skipped == []
    changes = CapacityStore.from_settings(settings).changes_of(["cas-assoc"])["cas-assoc"]
    assert [(c.state, c.service, c.channel) for c in changes] == [("full", "shelter", "sms"), ("open", "shelter", "sms")]


async def coordinator_page(h: Harness, code: str) -> str:
    login = await h.http.get("/login")
    await h.http.post("/login", data={"login": "amina", "password": PASSWORD, "csrf": csrf_of(login.text), "next": "/referrals"})
    page = await h.http.get(f"/referrals/{code}")
    assert page.status_code == 200
    return page.text


async def test_full_with_a_time_limit_is_answered_with_its_end_and_the_commands_on_a_typo(dev_env, settings) -> None:
    async with harness(dev_env, settings) as h:
        text = await h.reply("cas-assoc", "FULL legal 3d")
        assert "aide juridique" in text and re.search(r"jusqu'au \d\d/\d\d \d\d:\d\d", text)
        assert "FULL [service] [3d]" in await h.reply("cas-assoc", "FULL until monday")
        assert "ne figure pas parmi vos services" in await h.reply("cas-assoc", "FULL medical")
        assert "FULL [service]" in await h.reply("cas-assoc", "HELP")
    [change] = CapacityStore.from_settings(settings).changes_of(["cas-assoc"])["cas-assoc"]
    assert change.service == "legal" and change.until is not None
    assert timedelta(days=3) - timedelta(minutes=1) < change.until - change.at <= timedelta(days=3)


# --- FULL said while a referral goes down its ladder ---------------------------------------------


async def test_a_partner_full_since_the_match_is_passed_over_when_the_offer_moves_on(dev_env, settings) -> None:
    """Matching again as a service moves on to another partner (capacity-recheck-2026-12): a
    shelter that said FULL after the referral was matched is not offered when the partner before
    it declines; the next one is, and the status names the one passed over. With every partner
    after it full, the service escalates to the coordinator at once."""
    async with harness(dev_env, settings) as h:
        code = await h.start()
        await h.offered(code, "cas-assoc")
        assert (await h.status(code)).services[0].candidates == ["cas-assoc", "nat-shelter-amane", "nat-shelter-amal"]
        assert "hébergement" in await h.reply("nat-shelter-amane", "COMPLET hébergement")
        assert "refus enregistré" in await h.reply("cas-assoc", f"D {code} 1")
        await h.offered(code, "nat-shelter-amal")
        shelter = (await h.status(code)).services[0]
        assert [a.partner_id for a in shelter.attempts] == ["cas-assoc", "nat-shelter-amal"]
        assert shelter.candidates == ["cas-assoc", "nat-shelter-amal"]
        [skipped] = shelter.skipped
        assert (skipped.partner_id, skipped.reason, skipped.offered_instead) == ("nat-shelter-amane", "full", "nat-shelter-amal")
        assert "nat-shelter-amane full, offered to nat-shelter-amal instead" in await ui_details(h, code)
        assert not any(code in body for body in h.sms_to("nat-shelter-amane"))

        # The next referral: amane full from the start, amal says FULL while cas-assoc decides.
        second = await h.start()
        await h.offered(second, "cas-assoc")
        assert "OPEN" in await h.reply("nat-shelter-amal", "FULL shelter")
        assert "refus enregistré" in await h.reply("cas-assoc", f"D {second} 1")

        async def escalated():
            service = (await h.status(second)).services[0]
            return service if service.stage == "escalated" else None

        shelter = await wait_for(escalated)
        assert [a.partner_id for a in shelter.attempts] == ["cas-assoc"]
        assert [(s.partner_id, s.reason) for s in shelter.skipped] == [("nat-shelter-amane", "full"), ("nat-shelter-amal", "full")]
        assert not any(second in body for body in h.sms_to("nat-shelter-amal"))


# --- an emergency at 02:00, Casablanca time ------------------------------------------------------


async def test_an_emergency_at_two_in_the_morning_goes_first_to_an_always_open_partner(dev_env, settings) -> None:
    two_am = datetime(2026, 12, 2, 2, 0, tzinfo=TZ)  # a Wednesday; dak-assoc opens at 08:30
    async with harness(dev_env, settings, clock=lambda: two_am) as h:
        intake = adult_intake(needs=["shelter"], immediate_danger=True, identified_by={"region": "dakhla-oued-ed-dahab"})
        code = (await referrals.start_referral(h.client, intake, h.task_queue)).code
        h.codes.append(code)
        await h.offered(code, "nat-shelter-amane")
        status = await h.status(code)
        shelter = status.services[0]
        assert status.urgency == "emergency"
        assert shelter.candidates == ["nat-shelter-amane", "nat-shelter-amal", "dak-assoc"]
        [closed] = shelter.skipped
        assert (closed.partner_id, closed.reason, closed.offered_instead) == ("dak-assoc", "closed", "nat-shelter-amane")
        assert closed.until == datetime(2026, 12, 2, 8, 30, tzinfo=TZ)
        attempt = shelter.attempts[0]
        assert attempt.opens_at is None and attempt.deadline == attempt.offered_at + timedelta(hours=6)  # an emergency: from the offer
        assert h.sms_to("dak-assoc") == []


# --- an urgent offer to a closed partner: its reply time counts from the opening ---------------------


async def test_an_urgent_offer_to_a_closed_partner_counts_from_its_next_opening(dev_env, settings, tmp_path: Path) -> None:
    # dak-assoc opens one hour, two days from now: closed whenever the test runs.
    opens = (datetime.now(TZ) + timedelta(days=2)).replace(hour=10, minute=0, second=0, microsecond=0)
    day = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[opens.weekday()]
    data = yaml.safe_load(PARTNERS_FILE.read_text(encoding="utf-8"))
    for partner in data["partners"]:
        if partner["id"] == "dak-assoc":
            partner["hours"] = {day: "10:00-11:00"}
    directory = tmp_path / "partners.yaml"
    directory.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    async with harness(dev_env, settings.model_copy(update={"referral_partners_file": directory})) as h:
        intake = adult_intake(needs=["shelter"], urgency="urgent", identified_by={"region": "dakhla-oued-ed-dahab"})
        code = (await referrals.start_referral(h.client, intake, h.task_queue)).code
        h.codes.append(code)
        await wait_for(lambda: h.sms_to("dak-assoc"))
        attempt = (await h.status(code)).services[0].attempts[0]
        assert attempt.partner_id == "dak-assoc" and attempt.opens_at == opens
        assert (attempt.remind_at, attempt.deadline) == (opens + timedelta(hours=3), opens + timedelta(hours=6))


# --- the backup number -------------------------------------------------------------------------------


async def test_replies_from_the_backup_number_are_the_partners(dev_env, settings) -> None:
    gon = DIRECTORY.partner("gon-assoc")
    assert gon is not None and gon.backup_sms
    async with harness(dev_env, settings) as h:
        code = await h.start(region="guelmim-oued-noun")
        await h.offered(code, "gon-assoc")
        text = text_of(await h.sms(gon.backup_sms, f"A {code}"))
        assert f"R-{code}" in text
        attempt = (await h.status(code)).services[0].attempts[0]
        assert (attempt.partner_id, attempt.outcome) == ("gon-assoc", "accepted")


# --- the partner's page: LINK, then FULL and OPEN without logging in ---------------------------------


async def test_link_by_sms_and_capacity_on_the_partners_page(dev_env, settings, smtp: SmtpSink) -> None:
    coordinator = DIRECTORY.coordinator("casablanca-settat").email or ""
    async with harness(dev_env, settings) as h:
        text = await h.reply("cas-assoc", "LIEN")
        [link] = re.findall(r"https://referrals\.example\.org/p/org/\S+", text)
        path = urlsplit(link).path
        page = await h.http.get(path)
        assert page.status_code == 200 and "accompagnement Casablanca" in page.text
        assert page.headers["cache-control"] == "no-store" and "Disponible" in page.text
        csrf = NONCE.findall(page.text)[0]
        changed = await h.http.post(path, data={"csrf": csrf, "service": "shelter", "state": "full", "days": "3", "lang": "fr"})
        assert changed.status_code == 303 and changed.headers["location"].endswith("result=full")
        page = await h.http.get(changed.headers["location"])
        assert "Enregistré : complet." in page.text and re.search(r"Complet depuis le .+, jusqu&#39;au ", page.text)
        await wait_for(lambda: emails(smtp, coordinator, "Partenaire complet"))
        # The referral link from an offer email opens the same page.
        token = sign_partner_link(SECRET, "7K3Q9", "cas-assoc", datetime.now(UTC) + timedelta(hours=1))
        from_offer = await h.http.get(f"/p/{token}/capacity?lang=en")
        assert from_offer.status_code == 200 and "Full since" in from_offer.text
        reopened = await h.http.post(
            f"/p/{token}/capacity", data={"csrf": NONCE.findall(from_offer.text)[0], "service": "", "state": "open", "lang": "en"}
        )
        assert reopened.headers["location"].endswith("result=open")
        # A cross-site post, an altered link: refused.
        refused = await h.http.post(path, data={"csrf": "guess", "state": "full"}, headers={"origin": "https://evil.example"})
        assert refused.status_code == 403
        assert (await h.http.get(path[:-3] + "xyz")).status_code == 403
    changes = CapacityStore.from_settings(settings).changes_of(["cas-assoc"])["cas-assoc"]
    assert [(c.state, c.service, c.channel, c.until is not None) for c in changes] == [("full", "shelter", "web", True), ("open", None, "web", False)]
