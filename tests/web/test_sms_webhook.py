"""The SMS webhooks, end to end: signed like Twilio signs them, on the real FastAPI app, against
the Temporal dev server with a real worker (outbox SMS backend, local SMTP).

Partners used, so that replies without a code see only this file's referrals: cas-assoc,
tth-assoc (Casablanca; tth-assoc is never offered), ori-assoc (Oriental, writes Arabic),
fme-assoc (Fès, the opt-out), dra-assoc (Drâa-Tafilalet, exactly one open referral), lay-assoc
(Laâyoune, Arabic, two open referrals), bmk-assoc (Béni Mellal, none).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import secrets
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvicorn
from temporalio.api.enums.v1 import EventType
from twilio.request_validator import RequestValidator

from activities import sms_store
from activities.directory import load_directory
from activities.sms import read_outbox
from config.settings import Settings
from starter import referrals, sms_reply
from tests.cases import NOTES, PHONE, PSEUDONYM, adult_intake, uniform_policy
from tests.conftest import free_port, running_worker, wait_for
from tests.fixtures import PARTNERS_FILE
from web.app import create_app
from web.routes import sms_webhook
from workflows.models import CoordinatorAction, ReferralStatus
from workflows.referral import ReferralWorkflow

TOKEN = "test-auth-token-for-webhooks"
PUBLIC = "https://referrals.example.org"
TWILIO_NUMBER = "+15005550006"
DIRECTORY = load_directory(PARTNERS_FILE)
ARABIC = re.compile(r"[\u0600-\u06FF]")
SECRETS = (PSEUDONYM, PHONE, PHONE[4:], NOTES[:20])

# Deadlines far beyond any test: nothing times out while a test runs.
POLICY = uniform_policy("6h", "3h", "6h", "6h", "6h")


def number(partner_id: str) -> str:
    partner = DIRECTORY.partner(partner_id)
    assert partner is not None and partner.sms
    return partner.sms


def new_sid() -> str:
    return "SM" + secrets.token_hex(16)


def texts_of(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/xml")
    return [(m.text or "") for m in ET.fromstring(response.text).iter("Message")]


def text_of(response: httpx.Response) -> str:
    texts = texts_of(response)
    assert len(texts) == 1, response.text
    return texts[0]


@dataclass
class Harness:
    env: object
    settings: Settings
    task_queue: str
    http: httpx.AsyncClient
    codes: list[str] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)

    @property
    def client(self):
        return self.env.client  # type: ignore[attr-defined]

    async def start(self, region: str = "casablanca-settat", needs: tuple[str, ...] = ("shelter",)) -> str:
        intake = adult_intake(needs=list(needs), identified_by={"region": region})
        started = await referrals.start_referral(self.client, intake, self.task_queue)
        self.codes.append(started.code)
        return started.code

    async def status(self, code: str) -> ReferralStatus:
        return await referrals.get_status(self.client, code)

    def sms_to(self, partner_id: str) -> list[str]:
        return [m["body"] for m in read_outbox(self.settings.outbox_dir) if m["to"] == number(partner_id)]

    async def offered(self, code: str, partner_id: str) -> None:
        """The offer SMS went out, and visibility lists the referral for the partner."""
        await wait_for(lambda: any(code in body for body in self.sms_to(partner_id)))
        await self.listed(partner_id, {code})

    async def listed(self, partner_id: str, codes: set[str]) -> None:
        query = f"ReferralPartners = '{partner_id}' AND ExecutionStatus = 'Running'"

        async def shown() -> bool:
            return codes <= {r.code for r in await referrals.list_referrals(self.client, query)}

        await wait_for(shown)

    def params(self, sender: str, body: str, sid: str | None = None, **extra: str) -> dict[str, str]:
        sid = sid or new_sid()
        return {**sms_reply.inbound_form("AC" + "0" * 32, sender, TWILIO_NUMBER, body, sid), **extra}

    async def post(
        self,
        path: str,
        params: dict[str, str],
        *,
        signed_url: str | None = None,
        token: str = TOKEN,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        url = signed_url or PUBLIC + path
        signature = RequestValidator(token).compute_signature(url, params)
        return await self.http.post(path, data=params, headers={"X-Twilio-Signature": signature, **(headers or {})})

    async def sms(self, sender: str, body: str, sid: str | None = None, **extra: str) -> httpx.Response:
        """`sender`: a partner id, or a phone number."""
        sender = sender if sender.startswith("+") else number(sender)
        response = await self.post("/sms/inbound", self.params(sender, body, sid, **extra))
        self.replies.extend(texts_of(response))
        return response

    async def reply(self, sender: str, body: str, sid: str | None = None, **extra: str) -> str:
        return text_of(await self.sms(sender, body, sid, **extra))

    async def callback(self, code: str, partner_id: str, status: str, sid: str) -> httpx.Response:
        path = f"/sms/status?code={code}&partner={partner_id}"
        params = {
            "AccountSid": "AC" + "0" * 32,
            "ApiVersion": "2010-04-01",
            "From": TWILIO_NUMBER,
            "MessageSid": sid,
            "MessageStatus": status,
            "SmsSid": sid,
            "SmsStatus": status,
            "To": number(partner_id),
        }
        return await self.post(path, params)


@pytest.fixture
def settings(make_settings, tmp_path: Path) -> Settings:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    return make_settings(
        twilio_auth_token=TOKEN,
        public_base_url=PUBLIC,
        twilio_from_number=TWILIO_NUMBER,
        referral_policy_file=policy,
    )


@asynccontextmanager
async def harness(dev_env, settings: Settings) -> AsyncIterator[Harness]:
    app = create_app(settings, client=dev_env.client)
    transport = httpx.ASGITransport(app=app)
    async with running_worker(dev_env.client, settings) as tq, httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        h = Harness(dev_env, settings, tq, http)
        try:
            yield h
        finally:
            await _close_all(h)
    for text in h.replies:
        for secret in SECRETS:
            assert secret not in text, text


async def _close_all(h: Harness) -> None:
    """Cancel what is still open and wait for its last messages, so no work outlives the worker."""
    for code in h.codes:
        try:
            await referrals.coordinator_action(h.client, code, CoordinatorAction(action="cancel"))
        except referrals.ReferralRejected:
            pass
        await h.client.get_workflow_handle_for(ReferralWorkflow.run, referrals.workflow_id(code)).result()


async def update_count(h: Harness, code: str) -> int:
    history = await h.client.get_workflow_handle(referrals.workflow_id(code)).fetch_history()
    return sum(1 for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED)


# --- accept and decline, in the partner's language -----------------------------------------


async def test_accept_answers_in_french_for_a_french_partner(dev_env, settings):
    async with harness(dev_env, settings) as h:
        code = await h.start()
        await h.offered(code, "cas-assoc")
        text = await h.reply("cas-assoc", f"oui r-{code.lower()} !")
        assert f"R-{code}" in text and "acceptation enregistrée" in text and "hébergement" in text
        attempt = (await h.status(code)).services[0].attempts[0]
        assert attempt.partner_id == "cas-assoc" and attempt.outcome == "accepted"


async def test_accept_answers_in_arabic_for_an_arabic_partner(dev_env, settings):
    async with harness(dev_env, settings) as h:
        code = await h.start(region="oriental")
        await h.offered(code, "ori-assoc")
        text = await h.reply("ori-assoc", f"نعم {code}")
        assert f"R-{code}" in text and ARABIC.search(text) and "تم تسجيل قبولكم" in text
        assert (await h.status(code)).services[0].attempts[0].outcome == "accepted"
        # Then its follow-up replies: DONE completes the service and closes the referral.
        text = await h.reply("ori-assoc", f"DONE R-{code}")
        assert f"R-{code}" in text and "تم تسجيل انتهاء الخدمة" in text


async def test_decline_with_a_reason_moves_to_the_next_partner(dev_env, settings):
    async with harness(dev_env, settings) as h:
        code = await h.start()
        await h.offered(code, "cas-assoc")
        text = await h.reply("cas-assoc", f"D {code} pas de place ce soir")
        assert f"R-{code}" in text and "refus enregistré" in text
        assert "pas de place" not in text  # the partner's free text is never echoed
        # The next offer follows once the ladder is matched again (capacity-recheck-2026-12).
        await h.offered(code, "nat-shelter-amane")
        shelter = (await h.status(code)).services[0]
        assert shelter.attempts[0].outcome == "declined"
        assert shelter.attempts[0].reason == "pas de place ce soir"
        assert shelter.attempts[1].partner_id == "nat-shelter-amane"
        # A second decline of the same referral is answered, and changes nothing.
        text = await h.reply("cas-assoc", f"NON {code}")
        assert f"R-{code}" in text and "réattribué" in text
        assert len((await h.status(code)).services[0].attempts) == 2


async def test_a_decline_code_is_recorded_and_its_meaning_confirmed(dev_env, settings):
    async with harness(dev_env, settings) as h:
        french = await h.start()
        arabic = await h.start(region="oriental")
        await h.offered(french, "cas-assoc")
        await h.offered(arabic, "ori-assoc")
        text = await h.reply("cas-assoc", f"D {french} 1 pas de place ce soir")
        assert f"R-{french}" in text and "refus enregistré" in text and "motif 1 pas de capacité" in text
        assert "ce soir" not in text  # the partner's free text is never echoed
        text = await h.reply("ori-assoc", f"لا {arabic} ٣")
        assert f"R-{arabic}" in text and "السبب 3 خارج منطقتنا" in text
        for code, decline_code, reason in ((french, 1, "pas de place ce soir"), (arabic, 3, None)):
            first = (await h.status(code)).services[0].attempts[0]
            assert (first.outcome, first.decline_code, first.reason) == ("declined", decline_code, reason)


async def test_a_number_that_is_no_decline_code_lists_the_codes_and_records_nothing(dev_env, settings):
    async with harness(dev_env, settings) as h:
        code = await h.start()
        await h.offered(code, "cas-assoc")
        text = await h.reply("cas-assoc", f"D {code} 5 complet")
        assert "non enregistrée" in text and f"D {code} 1" in text
        assert all(f"{n} {word}" in text for n, word in ((1, "pas de capacité"), (2, "service que nous n'offrons pas"), (9, "autre")))
        assert "complet" not in text
        assert (await h.status(code)).services[0].attempts[0].outcome is None
        assert await update_count(h, code) == 0
        # The same decline without a number is a decline without a code.
        assert "refus enregistré" in await h.reply("cas-assoc", f"D {code} complet")
        first = (await h.status(code)).services[0].attempts[0]
        assert (first.outcome, first.decline_code) == ("declined", None)


async def test_help_lists_the_decline_codes_in_the_partners_language(dev_env, settings):
    async with harness(dev_env, settings) as h:
        english = await h.reply("nat-interp-solidaires", "HELP")
        assert "D CODE [n]" in english and "1 no capacity" in english and "4 cannot take this person" in english and "9 other" in english
        french = await h.reply("bmk-assoc", "AIDE")
        assert "3 hors de notre zone" in french and "2 service que nous n'offrons pas" in french
        arabic = await h.reply("lay-assoc", "مساعدة")
        assert "1 لا توجد طاقة استيعابية" in arabic and "9 سبب آخر" in arabic


async def test_follow_up_commands_and_their_refusals(dev_env, settings):
    async with harness(dev_env, settings) as h:
        code = await h.start()
        await h.offered(code, "cas-assoc")
        assert "acceptez d'abord" in await h.reply("cas-assoc", f"DONE {code}")
        await h.reply("cas-assoc", f"A {code}")
        assert "déjà enregistrée" in await h.reply("cas-assoc", f"ACCEPT {code}")
        assert "déjà accepté" in await h.reply("cas-assoc", f"D {code}")
        assert "aucun point de suivi" in await h.reply("cas-assoc", f"OK {code}")
        text = await h.reply("cas-assoc", f"ISSUE {code} interprète absent")
        assert f"R-{code}" in text and "coordination" in text and "interprète" not in text
        assert (await h.status(code)).services[0].issues_reported == 1
        assert "Message non compris" in await h.reply("cas-assoc", "bonjour, merci")


# --- without a code ------------------------------------------------------------------------


async def test_without_a_code_applies_to_the_only_open_referral(dev_env, settings):
    async with harness(dev_env, settings) as h:
        code = await h.start(region="draa-tafilalet")
        await h.offered(code, "dra-assoc")
        text = await h.reply("dra-assoc", "A")
        assert f"R-{code}" in text and "acceptation enregistrée" in text
        attempt = (await h.status(code)).services[0].attempts[0]
        assert attempt.partner_id == "dra-assoc" and attempt.outcome == "accepted"


async def test_without_a_code_and_two_open_referrals_lists_the_codes(dev_env, settings):
    async with harness(dev_env, settings) as h:
        first = await h.start(region="laayoune-sakia-el-hamra")
        second = await h.start(region="laayoune-sakia-el-hamra")
        await h.offered(first, "lay-assoc")
        await h.offered(second, "lay-assoc")
        text = await h.reply("lay-assoc", "نعم")
        assert ARABIC.search(text)
        assert f"R-{first}" in text and f"R-{second}" in text
        for code in (first, second):
            assert (await h.status(code)).services[0].attempts[0].outcome is None
        # A decline's reason code is kept in the example to send again.
        text = await h.reply("lay-assoc", "لا ٣")
        assert f"D {first} 3" in text or f"D {second} 3" in text
        # HELP (in Arabic) lists the commands and the same codes.
        text = await h.reply("lay-assoc", "مساعدة")
        assert "STOP" in text and f"R-{first}" in text and f"R-{second}" in text


async def test_without_a_code_and_nothing_open(dev_env, settings):
    async with harness(dev_env, settings) as h:
        assert "Aucun dossier n'attend" in await h.reply("bmk-assoc", "OUI")
        assert "Vos dossiers : aucun" in await h.reply("bmk-assoc", "AIDE")


async def test_help_lists_the_senders_open_codes(dev_env, settings):
    async with harness(dev_env, settings) as h:
        code = await h.start()
        await h.offered(code, "cas-assoc")
        text = await h.reply("cas-assoc", "help")
        assert "A CODE" in text and "D CODE" in text and f"R-{code}" in text


# --- replies that change nothing -----------------------------------------------------------


async def test_late_reply_after_the_coordinator_assigned_someone_else(dev_env, settings):
    async with harness(dev_env, settings) as h:
        code = await h.start()
        await h.offered(code, "cas-assoc")
        await referrals.coordinator_action(
            h.client, code, CoordinatorAction(action="assign", service="shelter", partner_id="nat-shelter-amal")
        )
        text = await h.reply("cas-assoc", f"A {code}")
        assert f"R-{code}" in text and "réattribué" in text
        shelter = (await h.status(code)).services[0]
        assert shelter.partner_id == "nat-shelter-amal"
        assert shelter.attempts[0].outcome == "reassigned"


async def test_unknown_code_and_a_referral_that_is_not_yours(dev_env, settings):
    async with harness(dev_env, settings) as h:
        code = await h.start()
        await h.offered(code, "cas-assoc")
        text = await h.reply("tth-assoc", f"A {code}")
        assert f"R-{code}" in text and "ne vous est pas attribué" in text
        text = await h.reply("tth-assoc", "A R-33333")
        assert "R-33333" in text and "Aucun dossier" in text
        assert (await h.status(code)).services[0].attempts[0].outcome is None


async def test_an_unknown_number_gets_a_neutral_answer(dev_env, settings):
    async with harness(dev_env, settings) as h:
        code = await h.start()
        await h.offered(code, "cas-assoc")
        answers = {await h.reply(sender, body) for sender, body in [
            (PHONE, f"A {code}"),  # the person's own number is not a partner's
            ("+212650999999", "AIDE"),
            ("+212650999999", "hello"),
        ]}
        assert len(answers) == 1, answers  # the same words, whatever was sent
        text = answers.pop()
        assert code not in text and "R-" not in text
        assert "n'est pas enregistré" in text and ARABIC.search(text) and "not registered" in text
        assert (await h.status(code)).services[0].attempts[0].outcome is None


# --- signatures ----------------------------------------------------------------------------


async def test_forged_or_missing_signatures_are_refused_and_change_nothing(dev_env, settings, make_settings):
    async with harness(dev_env, settings) as h:
        code = await h.start()
        await h.offered(code, "cas-assoc")
        sid = new_sid()
        params = h.params(number("cas-assoc"), f"A {code}", sid)
        forged = await h.post("/sms/inbound", params, token="not-the-auth-token")
        assert forged.status_code == 403
        unsigned = await h.http.post("/sms/inbound", data=params)
        assert unsigned.status_code == 403
        tampered = RequestValidator(TOKEN).compute_signature(PUBLIC + "/sms/inbound", {**params, "Body": f"D {code}"})
        assert (await h.http.post("/sms/inbound", data=params, headers={"X-Twilio-Signature": tampered})).status_code == 403
        wrong_token = await h.post("/sms/status?code=" + code + "&partner=cas-assoc", {"MessageSid": sid, "MessageStatus": "failed"}, token="nope")
        assert wrong_token.status_code == 403
        status = await h.status(code)
        assert status.services[0].attempts[0].outcome is None and status.channel_problems == []
        assert await update_count(h, code) == 0
        # Nothing was kept for that MessageSid either: the genuine delivery applies normally.
        assert "acceptation enregistrée" in text_of(await h.post("/sms/inbound", params))

    # Without TWILIO_AUTH_TOKEN nothing is accepted at all.
    app = create_app(make_settings(twilio_auth_token=None, public_base_url=PUBLIC), client=dev_env.client)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        params = h.params(number("cas-assoc"), "HELP")
        signature = RequestValidator(TOKEN).compute_signature(PUBLIC + "/sms/inbound", params)
        response = await http.post("/sms/inbound", data=params, headers={"X-Twilio-Signature": signature})
        assert response.status_code == 403


async def test_a_signature_over_another_url_is_refused(dev_env, settings):
    async with harness(dev_env, settings) as h:
        code = await h.start()
        await h.offered(code, "cas-assoc")
        params = h.params(number("cas-assoc"), f"A {code}")
        # Signed for the host the request claims to be for: not our public URL.
        spoofed = await h.post("/sms/inbound", params, signed_url="https://evil.example/sms/inbound", headers={"Host": "evil.example"})
        assert spoofed.status_code == 403
        as_seen = await h.post("/sms/inbound", params, signed_url="http://testserver/sms/inbound")
        assert as_seen.status_code == 403
        other_path = await h.post("/sms/inbound", params, signed_url=PUBLIC + "/sms/status")
        assert other_path.status_code == 403
        assert (await h.status(code)).services[0].attempts[0].outcome is None
        # The same request signed for PUBLIC_BASE_URL is accepted, whatever the Host header says.
        ok = await h.post("/sms/inbound", params, headers={"Host": "evil.example"})
        assert "acceptation enregistrée" in text_of(ok)


# --- one MessageSid, one effect ------------------------------------------------------------


async def test_a_replayed_message_sid_is_answered_the_same_and_applied_once(dev_env, settings):
    async with harness(dev_env, settings) as h:
        code = await h.start()
        await h.offered(code, "cas-assoc")
        sid = new_sid()
        first = await h.sms("cas-assoc", f"A {code}", sid)
        second = await h.sms("cas-assoc", f"A {code}", sid)
        assert first.text == second.text and "acceptation enregistrée" in text_of(first)
        # Even with the webhook's record lost, Temporal's update id makes the redelivery a no-op
        # with the same answer (a fresh message would be told "already recorded").
        sms_store.store_path(settings).unlink()
        third = await h.sms("cas-assoc", f"A {code}", sid)
        assert third.text == first.text
        shelter = (await h.status(code)).services[0]
        assert [a.outcome for a in shelter.attempts] == ["accepted"]
        assert await update_count(h, code) == 1


async def test_concurrent_deliveries_of_one_message_sid(dev_env, settings):
    async with harness(dev_env, settings) as h:
        code = await h.start()
        await h.offered(code, "cas-assoc")
        sid = new_sid()
        answers = await asyncio.gather(*(h.sms("cas-assoc", f"D {code} complet", sid) for _ in range(4)))
        assert len({a.text for a in answers}) == 1 and "refus enregistré" in text_of(answers[0])
        assert await update_count(h, code) == 1


async def test_a_slow_update_is_answered_received_then_confirmed(dev_env, settings, monkeypatch):
    monkeypatch.setattr(sms_webhook, "TEMPORAL_TIMEOUT_SECONDS", 0.0)
    async with harness(dev_env, settings) as h:
        code = await h.start()
        await h.offered(code, "cas-assoc")
        sid = new_sid()
        text = await h.reply("cas-assoc", f"A {code}", sid)
        assert f"R-{code}" in text and "message reçu" in text
        # The update went on; its outcome reaches the partner by SMS and becomes the answer.
        await wait_for(lambda: any("acceptation enregistrée" in b for b in h.sms_to("cas-assoc")))
        assert "acceptation enregistrée" in await h.reply("cas-assoc", f"A {code}", sid)
        assert [a.outcome for a in (await h.status(code)).services[0].attempts] == ["accepted"]
        assert await update_count(h, code) == 1


# --- STOP and START ------------------------------------------------------------------------


async def test_stop_records_the_opt_out_then_start_clears_it(dev_env, settings, smtp):
    coordinator = DIRECTORY.coordinator("fes-meknes")
    partner = DIRECTORY.partner("fme-assoc")
    assert partner is not None
    async with harness(dev_env, settings) as h:
        first = await h.start(region="fes-meknes")
        await h.offered(first, "fme-assoc")
        stop_sid = new_sid()
        response = await h.sms("fme-assoc", "STOP", stop_sid, OptOutType="STOP")
        assert texts_of(response) == []  # Twilio answers STOP itself
        assert sms_store.is_opted_out(settings, partner.sms)

        async def opted_out_recorded(code: str):
            problems = (await h.status(code)).channel_problems
            return [p for p in problems if p.partner_id == "fme-assoc" and p.channel == "sms" and p.problem == "OptedOut"]

        assert len(await wait_for(lambda: opted_out_recorded(first))) == 1
        await wait_for(lambda: any(first in m["Subject"] and "fme-assoc" in m["Subject"] for m in smtp.to(coordinator.email)))
        # A redelivered STOP changes nothing more.
        assert texts_of(await h.sms("fme-assoc", "STOP", stop_sid, OptOutType="STOP")) == []
        assert len(await opted_out_recorded(first)) == 1

        # The next offer to that number goes by email only, and shows as a channel problem.
        second = await h.start(region="fes-meknes")
        assert len(await wait_for(lambda: opted_out_recorded(second))) == 1
        await wait_for(lambda: any(second in m["Subject"] for m in smtp.to(partner.email)))
        assert not any(second in body for body in h.sms_to("fme-assoc"))
        assert (await h.status(second)).services[0].attempts[0].partner_id == "fme-assoc"

        text = await h.reply("fme-assoc", "START", OptOutType="START")
        assert "SMS réactivés" in text
        assert not sms_store.is_opted_out(settings, partner.sms)
        third = await h.start(region="fes-meknes")
        await wait_for(lambda: any(third in body for body in h.sms_to("fme-assoc")))
        assert await opted_out_recorded(third) == []


async def test_a_bare_yes_is_an_accept_unless_the_number_opted_out(dev_env, settings):
    async with harness(dev_env, settings) as h:
        code = await h.start(region="draa-tafilalet")
        await h.offered(code, "dra-assoc")
        await h.sms("dra-assoc", "STOP")
        assert "SMS réactivés" in await h.reply("dra-assoc", "YES", OptOutType="START")
        assert (await h.status(code)).services[0].attempts[0].outcome is None
        text = await h.reply("dra-assoc", "Yes!", OptOutType="START")
        assert f"R-{code}" in text and "acceptation enregistrée" in text


# --- delivery status callbacks -------------------------------------------------------------


async def test_an_undelivered_status_records_a_channel_problem_once(dev_env, settings, smtp):
    coordinator = DIRECTORY.coordinator("casablanca-settat")
    async with harness(dev_env, settings) as h:
        code = await h.start()
        await h.offered(code, "cas-assoc")
        sid = new_sid()
        for _ in range(2):
            response = await h.callback(code, "cas-assoc", "undelivered", sid)
            assert response.status_code == 204 and response.content == b""

        async def problems():
            return (await h.status(code)).channel_problems

        recorded = await wait_for(problems)
        assert [(p.partner_id, p.channel, p.problem, p.message_sid) for p in recorded] == [("cas-assoc", "sms", "undelivered", sid)]
        await wait_for(lambda: any(code in m["Subject"] and "cas-assoc" in m["Subject"] for m in smtp.to(coordinator.email)))

        # Other statuses, unknown codes, closed referrals: 204 and nothing recorded.
        assert (await h.callback(code, "cas-assoc", "delivered", new_sid())).status_code == 204
        assert (await h.callback("33333", "cas-assoc", "failed", new_sid())).status_code == 204
        assert (await h.callback("not-a-code", "cas-assoc", "failed", new_sid())).status_code == 204
        # The query is signed too: another referral's code cannot be slipped in.
        params = {"MessageSid": new_sid(), "MessageStatus": "failed"}
        signed_for = f"{PUBLIC}/sms/status?code={code}&partner=cas-assoc"
        moved = await h.post(f"/sms/status?code={code}&partner=tth-assoc", params, signed_url=signed_for)
        assert moved.status_code == 403
        assert len(await problems()) == 1


# --- the dev loop: `referral reply` --------------------------------------------------------


@asynccontextmanager
async def serving(app, port: int) -> AsyncIterator[None]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: server.started)
    try:
        yield
    finally:
        server.should_exit = True
        await task


async def test_reply_command_plays_the_partner(dev_env, make_settings, tmp_path, capsys):
    port = free_port()
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    settings = make_settings(twilio_auth_token=TOKEN, public_base_url=f"http://127.0.0.1:{port}", referral_policy_file=policy)
    async with harness(dev_env, settings) as h, serving(create_app(settings, client=dev_env.client), port):
        code = await h.start()
        await h.offered(code, "cas-assoc")
        args = argparse.Namespace(sender="0650123441", body=f"A {code}")  # cas-assoc, written as a national number
        assert await sms_reply.reply_command(settings, args) == 0
        out = capsys.readouterr().out
        assert f"R-{code}" in out and "acceptation enregistrée" in out
        assert (await h.status(code)).services[0].attempts[0].outcome == "accepted"
        args = argparse.Namespace(sender=number("cas-assoc"), body="AIDE", xml=True)
        assert await sms_reply.reply_command(settings, args) == 0
        out = capsys.readouterr().out
        assert "Commandes" in out and "<Response><Message>" in out

    unreachable = make_settings(twilio_auth_token=TOKEN, public_base_url=f"http://127.0.0.1:{free_port()}")
    assert await sms_reply.reply_command(unreachable, argparse.Namespace(sender=number("cas-assoc"), body="AIDE")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot reach the web app" in err

    no_token = make_settings(twilio_auth_token=None)
    assert await sms_reply.reply_command(no_token, argparse.Namespace(sender=number("cas-assoc"), body="AIDE")) == 2
    assert "TWILIO_AUTH_TOKEN" in capsys.readouterr().err
