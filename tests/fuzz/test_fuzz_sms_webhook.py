"""Fuzzing `POST /sms/inbound` with hypothesis: random bodies and forms, signed like Twilio signs
them (or deliberately not). Never a 5xx; a signed, well-formed request gets TwiML; anything
unsigned, forged or not a form gets a 403 (a form without MessageSid a 400); and the referral
offered to mar-assoc does not change unless mar-assoc sends it a valid command.

One referral (Marrakech-Safi, shelter: offered to mar-assoc) on the dev server with a worker and
deadlines far beyond the test; the partners and numbers are the fictional directory's.
"""

from __future__ import annotations

import secrets
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from twilio.request_validator import RequestValidator

from activities.directory import load_directory
from config.settings import Settings
from starter import referrals
from starter.sms_commands import parse_sms
from tests.cases import uniform_policy
from tests.conftest import running_worker, wait_for, with_ledger
from tests.fixtures import PARTNERS_FILE
from web.app import create_app
from workflows.intake import Intake
from workflows.models import CoordinatorAction, ReferralStatus
from workflows.referral import ReferralWorkflow

TOKEN = "fuzz-webhook-token-5d21"
PUBLIC = "https://referrals.example.org"
PATH = "/sms/inbound"
PARTNER = "mar-assoc"
DIRECTORY = load_directory(PARTNERS_FILE)
PARTNER_NUMBER = DIRECTORY.partner(PARTNER).sms
MAX_EXAMPLES = 100
FUZZ = settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
    database=None,
)
POLICY = uniform_policy("6h", "3h", "6h", "6h", "6h")
# Actions that change a referral when its partner sends them (STOP/START: the opt-out record).
COMMANDS = {"accept", "decline", "ok", "done", "issue", "stop", "start"}


@dataclass
class Hook:
    http: httpx.AsyncClient
    client: Client
    code: str
    baseline: ReferralStatus
    statuses: dict[int, int] = field(default_factory=dict)

    async def send(
        self,
        params: dict[str, str],
        *,
        signature: str | bytes | None = "sign",
        content: bytes | None = None,
        content_type: str | None = None,
    ) -> httpx.Response:
        headers: dict[str, str | bytes] = {}
        if signature == "sign":
            signature = RequestValidator(TOKEN).compute_signature(PUBLIC + PATH, params)
        if signature is not None:
            headers["X-Twilio-Signature"] = signature
        if content is not None:
            if content_type is not None:
                headers["Content-Type"] = content_type
            r = await self.http.post(PATH, content=content, headers=headers)
        else:
            r = await self.http.post(PATH, data=params, headers=headers)
        self.statuses[r.status_code] = self.statuses.get(r.status_code, 0) + 1
        assert r.status_code < 500, (r.status_code, r.text[:300])
        if r.status_code == 200:
            assert r.headers["content-type"].startswith("application/xml"), r.headers
            assert ET.fromstring(r.text).tag == "Response", r.text
        return r

    async def unchanged(self) -> None:
        assert await referrals.get_status(self.client, self.code) == self.baseline

    async def untouched(self) -> None:
        """No update was ever accepted and no signal received: nothing reached the referral."""
        history = await self.client.get_workflow_handle(referrals.workflow_id(self.code)).fetch_history()
        touched = {EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED, EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED}
        assert not [e for e in history.events if e.event_type in touched], "the fuzzing changed the referral"


def new_sid() -> str:
    return "SM" + secrets.token_hex(16)


def form(sender: str | None, body: str | None, sid: str | None = None, **extra: str) -> dict[str, str]:
    sid = sid or new_sid()
    params = {
        "AccountSid": "AC" + "0" * 32,
        "ApiVersion": "2010-04-01",
        "MessageSid": sid,
        "NumMedia": "0",
        "SmsMessageSid": sid,
        "SmsSid": sid,
        "SmsStatus": "received",
        "To": "+15005550006",
        **extra,
    }
    if sender is not None:
        params["From"] = sender
    if body is not None:
        params["Body"] = body
    return params


@pytest.fixture(scope="module")
async def hook(dev_env, smtp, tmp_path_factory) -> AsyncIterator[Hook]:
    work: Path = tmp_path_factory.mktemp("fuzz-sms")
    policy = work / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    settings_ = with_ledger(Settings(  # type: ignore[call-arg]
        _env_file=None,
        referral_data_dir=work / "data",
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        referral_policy_file=policy,
        referral_partners_file=PARTNERS_FILE,
        sms_backend="outbox",
        twilio_auth_token=TOKEN,
        public_base_url=PUBLIC,
        twilio_from_number="+15005550006",
        referral_allow_plaintext=True,
        metrics_port=0,
    ))  # the worker writes each referral's ledger record: a migrated SQLite ledger in the data dir
    client = dev_env.client
    async with running_worker(client, settings_) as tq:
        intake = Intake.model_validate(
            {
                "external_ref": f"FUZZ-SMS-{uuid.uuid4().hex[:12]}",
                "identified_by": {"agency": "ngo", "officer_id": "FUZZ-01", "region": "marrakech-safi"},
                "identified_at": "2026-01-05T09:30:00+01:00",
                "sector": "other",
                "person": {"pseudonym": "Test Person", "age_group": "adult", "languages": ["fr"], "contact_phone": "+212650123459"},
                "needs": ["shelter"],
                "consent": {"given": True, "recorded_by": "FUZZ-01", "recorded_at": "2026-01-05T09:40:00+01:00"},
            }
        )
        code = (await referrals.start_referral(client, intake, tq)).code

        async def offered() -> ReferralStatus | None:
            status = await referrals.get_status(client, code)
            ok = status.stage == "awaiting_acceptance" and status.awaiting_partners == [PARTNER]
            described = await client.get_workflow_handle(referrals.workflow_id(code)).describe()
            return status if ok and not described.raw_description.pending_activities else None

        baseline = await wait_for(offered)
        app = create_app(settings_, client=client)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
            h = Hook(http, client, code, baseline)
            yield h
        await h.untouched()
        await referrals.coordinator_action(client, code, CoordinatorAction(action="cancel"))
        await client.get_workflow_handle_for(ReferralWorkflow.run, referrals.workflow_id(code)).result()
    print(f"\nSMS webhook fuzz: {sum(h.statuses.values())} requests, statuses {dict(sorted(h.statuses.items()))}")


# --- strategies --------------------------------------------------------------------------------

# Any SMS text: every unicode category but surrogates (not encodable), control characters
# included, up to and past a concatenated SMS's 1,600 characters.
sms_texts = st.one_of(
    st.text(max_size=60),
    st.text(min_size=1600, max_size=2400),
    st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp"]), max_size=50),
    st.sampled_from(["", " ", "\x00", "HELP", "AIDE", "مساعدة", "A", "merci", "R-", "A R-", "\u200fنعم", "DONE\x00"]),
)
keywords = st.sampled_from(["A", "ACCEPT", "OUI", "نعم", "D", "NON", "لا", "OK", "DONE", "FIN", "ISSUE", "YES", "STOP", "START"])
# What a partner might send that names a command: keyword, code (any), free text.
# The code is this referral's ("{code}", filled in by the test), none, or not a code at all;
# unknown well-formed codes from the partner: test_a_command_for_an_unknown_code_from_the_partner.
command_like = st.builds(
    lambda k, c, t: f"{k} {c} {t}".strip(),
    keywords,
    st.sampled_from(["{code}", "R-{code}", "", "R-", "R-0O1I5", "{code}{code}"]),
    st.text(alphabet=st.characters(exclude_characters="{}"), max_size=30),
)
bodies = st.one_of(sms_texts, command_like)

other_numbers = [p.sms for p in DIRECTORY.partners if p.sms and p.id != PARTNER]
senders = st.one_of(
    st.just(PARTNER_NUMBER),
    st.just("0" + PARTNER_NUMBER[4:]),  # the same number, Moroccan national format
    st.sampled_from(other_numbers),
    st.sampled_from([DIRECTORY.national_focal_point.sms, "+212650123459", "+15005550006", "+33612345678"]),
    st.text(max_size=20),
    st.none(),
)


def _is_partner(sender: str | None) -> bool:
    return sender in (PARTNER_NUMBER, "0" + PARTNER_NUMBER[4:])


# --- the tests ---------------------------------------------------------------------------------


@FUZZ
@given(sender=senders, body=st.one_of(bodies, st.none()), opt_out=st.sampled_from([None, None, "STOP", "START", "HELP", "x"]))
async def test_signed_random_messages_get_twiml_and_change_nothing(hook, sender, body, opt_out):
    body = body.replace("{code}", hook.code) if body else body
    command = parse_sms(body or "")
    action = opt_out.lower() if opt_out in ("STOP", "START", "HELP") else command.action
    # A valid command from the referral's own partner, for this referral or without a code (it
    # has exactly one pending item), may change it: that is the product, not the fuzz's concern.
    # STOP and START apply to every open referral of the number, whatever code follows.
    assume(not (_is_partner(sender) and action in COMMANDS and (command.code in (None, hook.code) or action in ("stop", "start"))))
    extra = {"OptOutType": opt_out} if opt_out else {}
    r = await hook.send(form(sender, body, **extra))
    assert r.status_code == 200, r.text
    await hook.unchanged()


@FUZZ
@given(
    sender=senders,
    body=bodies,
    kind=st.sampled_from(["none", "random", "wrong-token", "wrong-url", "tampered", "wrong-content-type", "bytes", "no-sid"]),
    junk=st.text(max_size=40),
)
async def test_unsigned_forged_or_malformed_requests_are_refused(hook, sender, body, kind, junk):
    """Even a valid command from the right partner (`A <code>`) changes nothing unless signed."""
    body = f"A {hook.code}" if junk.startswith("a") else body.replace("{code}", hook.code)
    params = form(sender, body)
    if kind == "none":
        r = await hook.send(params, signature=None)
    elif kind == "random":
        r = await hook.send(params, signature=junk.encode("utf-8"))  # any bytes, as an attacker sends them
    elif kind == "wrong-token":
        r = await hook.send(params, signature=RequestValidator(TOKEN + "x").compute_signature(PUBLIC + PATH, params))
    elif kind == "wrong-url":
        r = await hook.send(params, signature=RequestValidator(TOKEN).compute_signature("http://testserver" + PATH, params))
    elif kind == "tampered":
        signature = RequestValidator(TOKEN).compute_signature(PUBLIC + PATH, params)
        params["Body"] = f"A {hook.code}" if params.get("Body") != f"A {hook.code}" else "D " + hook.code
        r = await hook.send(params, signature=signature)
    elif kind == "wrong-content-type":
        content = urllib.parse.urlencode(params).encode()
        r = await hook.send(params, content=content, content_type=junk.encode("ascii", "ignore").decode() or None)
        assume(not (junk.encode("ascii", "ignore").decode().lower().startswith("application/x-www-form-urlencoded")))
    elif kind == "bytes":
        r = await hook.send(params, content=junk.encode("utf-8") + b"\xff\xfe=%ZZ&&==", content_type="application/x-www-form-urlencoded")
    else:
        params.pop("MessageSid")
        params.pop("SmsSid")
        r = await hook.send(params)
        assert r.status_code == 400, r.text
        await hook.unchanged()
        return
    assert r.status_code == 403, (kind, r.text)
    await hook.unchanged()


@settings(FUZZ, max_examples=MAX_EXAMPLES // 2)
@given(
    keyword=keywords,
    sender=st.sampled_from(other_numbers),
    sid=st.one_of(st.just(""), st.text(max_size=70)),
    pad=st.integers(0, 80_000),
)
async def test_other_partners_odd_sids_and_huge_forms(hook, keyword, sender, sid, pad):
    """Another partner's command for this referral, an odd MessageSid, a form padded past the
    64 KiB limit: answered or refused, never applied."""
    params = form(sender, f"{keyword} R-{hook.code} " + "x" * pad, sid=sid or None)
    r = await hook.send(params)
    if len(urllib.parse.urlencode(params)) > 64 * 1024:  # the whole form, as sent
        assert r.status_code == 403
    elif sid and (not sid.isascii() or not sid.isalnum() or not 2 <= len(sid) <= 64):
        assert r.status_code == 400
    else:
        assert r.status_code == 200
    await hook.unchanged()


async def test_a_command_for_an_unknown_code_from_the_partner(hook):
    """Answered (unknown code), applied nowhere."""
    other = "3" * 5 if hook.code != "3" * 5 else "4" * 5
    r = await hook.send(form(PARTNER_NUMBER, f"A R-{other}"))
    assert r.status_code == 200 and f"R-{other}" in r.text
    await hook.unchanged()


async def test_the_referral_is_as_it_was(hook):
    """Whatever ran before, and after requests of its own that must not apply (the partner's
    accept unsigned, signed with another token, tampered, another partner's accept, an accept
    for another code), the referral is as it was, still offered to mar-assoc, and its history
    holds no update."""
    accept = form(PARTNER_NUMBER, f"A {hook.code}")
    assert (await hook.send(accept, signature=None)).status_code == 403
    wrong = form(PARTNER_NUMBER, f"A {hook.code}")
    assert (await hook.send(wrong, signature=RequestValidator(TOKEN + "x").compute_signature(PUBLIC + PATH, wrong))).status_code == 403
    tampered = form(PARTNER_NUMBER, f"HELP {hook.code}")
    signature = RequestValidator(TOKEN).compute_signature(PUBLIC + PATH, tampered)
    tampered["Body"] = f"A {hook.code}"
    assert (await hook.send(tampered, signature=signature)).status_code == 403
    assert (await hook.send(form(other_numbers[0], f"A R-{hook.code}"))).status_code == 200
    assert (await hook.send(form(PARTNER_NUMBER, "A R-" + ("3" * 5 if hook.code != "3" * 5 else "4" * 5)))).status_code == 200
    await hook.unchanged()
    await hook.untouched()
    r = await hook.send(form(PARTNER_NUMBER, "HELP"))
    assert hook.code in r.text  # still open, still offered to mar-assoc
