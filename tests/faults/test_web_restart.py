"""The web app (a uvicorn process) killed while Twilio's signed webhooks arrive, then restarted:
Twilio's retry of a webhook whose connection was cut (same MessageSid, same body) gets the right
answer, and the reply is applied once (one accepted update for that MessageSid)."""

from __future__ import annotations

import asyncio
import secrets
import signal
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest
from temporalio.api.enums.v1 import EventType
from twilio.request_validator import RequestValidator

from activities.directory import load_directory
from starter import referrals
from tests.cases import adult_intake
from tests.conftest import free_port, wait_for
from tests.faults.conftest import DevServer, Stack, say, stack, write_policy
from tests.faults.test_smtp_outage import QUIET_POLICY
from tests.fixtures import PARTNERS_FILE
from web.routes.sms_webhook import reply_text

DIRECTORY = load_directory(PARTNERS_FILE)
TOKEN = "fault-test-twilio-token"
TWILIO_NUMBER = "+15005550006"


def inbound(sender: str, body: str, sid: str) -> dict[str, str]:
    return {
        "AccountSid": "AC" + "0" * 32, "ApiVersion": "2010-04-01", "Body": body, "From": sender,
        "MessageSid": sid, "NumMedia": "0", "NumSegments": "1", "SmsMessageSid": sid, "SmsSid": sid,
        "SmsStatus": "received", "To": TWILIO_NUMBER,
    }  # fmt: skip


async def post(s: Stack, base: str, params: dict[str, str], timeout: float = 30) -> httpx.Response:
    """As Twilio posts: form-encoded, signed for PUBLIC_BASE_URL + path."""
    url = s.settings.public_base_url + "/sms/inbound"
    headers = {
        "X-Twilio-Signature": RequestValidator(TOKEN).compute_signature(url, params),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    async with httpx.AsyncClient(timeout=timeout) as http:
        return await http.post(base + "/sms/inbound", content=urlencode(params), headers=headers)


def answer(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return "".join((m.text or "") for m in ET.fromstring(response.text).iter("Message"))


async def wait_http(base: str) -> None:
    async def up() -> bool:
        try:
            async with httpx.AsyncClient(timeout=2) as http:
                return (await http.get(base + "/healthz")).status_code == 200
        except httpx.HTTPError:
            return False

    await wait_for(up, timeout=60, interval=0.3)


async def updates_for(s: Stack, code: str, update_id: str) -> int:
    history = await s.client.get_workflow_handle(referrals.workflow_id(code)).fetch_history()
    return sum(
        1
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
        and e.workflow_execution_update_accepted_event_attributes.accepted_request.meta.update_id == update_id
    )


async def offered(s: Stack, code: str) -> None:
    async def awaiting():
        st = await s.status(code)
        return st.stage == "awaiting_acceptance"

    await wait_for(awaiting, timeout=30)


@pytest.mark.faults_full
async def test_web_app_killed_mid_request_twilio_retry_applied_once(fault_server: DevServer, tmp_path: Path):
    policy = write_policy(tmp_path / "policy.yaml", QUIET_POLICY)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with stack(
        fault_server, tmp_path, policy,
        twilio_auth_token=TOKEN, public_base_url=base, twilio_from_number=TWILIO_NUMBER,
    ) as s:  # fmt: skip
        web = s.web_proc(port)
        web.start()
        await wait_http(base)
        partner = DIRECTORY.partner("cas-assoc")
        first, second = [await s.start(adult_intake(needs=["shelter"])) for _ in range(2)]
        await offered(s, first)
        await offered(s, second)
        expected = reply_text(s.settings, partner.language, "accepted", code=first, services=["shelter"])

        # 1. Cut mid-request: with the worker down the update waits, and the web app is killed
        #    while the request is open. Twilio sees a broken connection and retries later.
        sid = "SM" + secrets.token_hex(16)
        params = inbound(partner.sms, f"A {first}", sid)
        await s.worker.kill(signal.SIGKILL)
        request = asyncio.create_task(post(s, base, params))
        await asyncio.sleep(2.0)
        assert not request.done(), "the webhook should be waiting for the update"
        await web.kill(signal.SIGKILL)
        with pytest.raises(httpx.HTTPError) as cut:
            await request
        say(f"webhook {sid}: connection cut by SIGKILL ({type(cut.value).__name__})")

        await s.start_worker(wait=False)
        await s.worker.wait_log("worker started")
        web.start()
        await wait_http(base)
        retried = answer(await post(s, base, params))
        again = answer(await post(s, base, params))  # and Twilio may deliver it once more
        assert retried == expected, retried
        assert again == expected
        assert await updates_for(s, first, f"sms-{sid}") == 1
        st = await s.status(first)
        assert [a.outcome for a in st.services[0].attempts] == ["accepted"]

        # 2. Arriving while the web app is down: refused; Twilio's retry after the restart applies it.
        sid2 = "SM" + secrets.token_hex(16)
        params2 = inbound(partner.sms, f"A {second}", sid2)
        await web.kill(signal.SIGKILL)
        with pytest.raises(httpx.ConnectError):
            await post(s, base, params2, timeout=5)
        web.start()
        await wait_http(base)
        expected2 = reply_text(s.settings, partner.language, "accepted", code=second, services=["shelter"])
        assert answer(await post(s, base, params2)) == expected2
        assert answer(await post(s, base, params2)) == expected2
        assert await updates_for(s, second, f"sms-{sid2}") == 1

        say(f"FIGURES web_restart webhooks_cut=1 webhooks_refused=1 web_kills={web.kills} answered_right=2 updates_per_sid=1")
        await s.terminate_open([first, second])
