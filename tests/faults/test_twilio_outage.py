"""Twilio (the Twilio stand-in of standins/twilio.py) answering 429 then 500 for a while: every SMS goes
out after, once per message key. A bad number (error 21211): the email fallback, a channel
problem in the status, and the coordinator told by email."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from activities.directory import load_directory
from standins.twilio import FakeTwilio, error, status
from tests.cases import adult_intake
from tests.conftest import wait_for
from tests.faults.conftest import DevServer, message_report, say, stack, summarise, write_policy
from tests.faults.test_smtp_outage import QUIET_POLICY
from tests.fixtures import PARTNERS_FILE

DIRECTORY = load_directory(PARTNERS_FILE)


@pytest.fixture
def fake():
    with FakeTwilio() as fake:
        yield fake


def twilio_overrides(fake: FakeTwilio) -> dict:
    # PUBLIC_BASE_URL is only used for the status callback URL, which nothing calls here.
    return dict(sms_backend="twilio", twilio_send_timeout_seconds=5.0, public_base_url="http://127.0.0.1:9", **fake.settings_overrides())


async def test_twilio_429_then_500_every_sms_sent_once(fault_server: DevServer, tmp_path: Path, fake: FakeTwilio):
    policy = write_policy(tmp_path / "policy.yaml", QUIET_POLICY)
    throttled, failing = 6, 3
    fake.script(*[status(429, code=20429)] * throttled, *[status(500, code=20500)] * failing)
    async with stack(fault_server, tmp_path, policy, **twilio_overrides(fake)) as s:
        needs = [["shelter"], ["medical"], ["legal"]]
        codes = [await s.start(adult_intake(needs=n)) for n in needs]

        def all_sent() -> bool:
            return all(any(code in m["body"] for m in fake.messages) for code in codes)

        await wait_for(all_sent, timeout=90, interval=0.3)
        assert fake.pending() == []
        report = await message_report(s, codes)
        sms_offers = [r for r in report if r.channel == "sms" and r.template == "offer"]
        assert sum(r.completed for r in sms_offers) == len(codes)
        by_message = Counter((m["to"], m["body"]) for m in fake.messages)
        kinds = Counter(r.behaviour.kind + (f" {r.behaviour.http_status}" if r.behaviour.http_status else "") for r in fake.posts)
        say(
            f"FIGURES twilio_outage referrals={len(codes)} posts={len(fake.posts)} ({dict(kinds)}) look-ups={len(fake.lists)} "
            f"sms_created={len(fake.messages)} duplicated={sum(n - 1 for n in by_message.values())}"
        )
        assert len(fake.messages) == len(codes), fake.messages
        assert all(n == 1 for n in by_message.values())
        # A 500 leaves the outcome unknown: the next attempt first looks for the message.
        assert len(fake.lists) >= 1
        await s.terminate_open(codes)


@pytest.mark.faults_full
async def test_twilio_bad_number_falls_back_to_email(fault_server: DevServer, tmp_path: Path, fake: FakeTwilio):
    policy = write_policy(tmp_path / "policy.yaml", QUIET_POLICY)
    fake.script(error(400, code=21211))
    partner = DIRECTORY.partner("cas-assoc")
    coordinator = DIRECTORY.coordinator("casablanca-settat")
    async with stack(fault_server, tmp_path, policy, **twilio_overrides(fake)) as s:
        code = await s.start(adult_intake(needs=["shelter"]))

        async def problem():
            st = await s.status(code)
            return st.channel_problems or None

        [reported] = await wait_for(problem, timeout=30)
        assert (reported.partner_id, reported.channel, reported.problem) == ("cas-assoc", "sms", "InvalidPhoneNumber")
        await wait_for(lambda: any(code in str(m["Subject"]) for m in s.sink.to(partner.email)), timeout=30)

        def coordinator_told() -> bool:
            return any(code in m.get_content() and "sms" in m.get_content().lower() for m in s.sink.to(coordinator.email))

        await wait_for(coordinator_told, timeout=30)
        st = await s.status(code)
        assert st.stage == "awaiting_acceptance" and st.awaiting_partners == ["cas-assoc"]
        report = await message_report(s, [code])
        rows = {(r.template, r.channel, r.recipient): r for r in report}
        assert rows[("offer", "email", "cas-assoc")].unique == 1
        assert rows[("channel_problem", "email", "casablanca-settat")].unique >= 1
        assert fake.messages == []
        problem_emails = rows[("channel_problem", "email", "casablanca-settat")].unique
        say(
            f"FIGURES bad_number code=R-{code} problem={reported.problem} partner_email=1 "
            f"coordinator_channel_problem_email={problem_emails} totals={summarise(report)}"
        )
        await s.terminate_open([code])
