"""A referral's status is read from its memo with a describe call (starter/referrals.get_status):
answered with every worker stopped, through the CLI and the JSON API, and right after the start;
what the server stores of it is ciphertext. Dev server, encryption on (tests/conftest.py).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import httpx
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import DescribeWorkflowExecutionRequest
from temporalio.client import Client

from starter import referrals
from tests.cases import NOTES, PHONE, PSEUDONYM, adult_case, adult_intake
from tests.conftest import running_worker, wait_for
from tests.starter.test_cli import cli, cli_env
from web.app import create_app
from workflows import status_memo
from workflows.models import ChannelReport, PartnerReply
from workflows.referral import ReferralWorkflow

TOKEN = "status-test-token-5d1e"
ROOT = Path(__file__).resolve().parents[2]


def api_client(settings, client: Client) -> httpx.AsyncClient:
    app = create_app(settings, client=client)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver", headers={"Authorization": f"Bearer {TOKEN}"}
    )


async def test_status_with_every_worker_stopped_through_the_cli_and_the_api(dev_env, make_settings):
    client = dev_env.client
    settings = make_settings(referral_api_tokens=TOKEN)
    async with running_worker(client, settings) as tq:
        started = await referrals.start_referral(client, adult_intake(needs=["shelter", "medical"]), tq)
        code = started.code
        handle = client.get_workflow_handle_for(ReferralWorkflow.run, started.workflow_id)

        async def both_offered():
            status = await referrals.get_status(client, code)
            return status if all(s.stage == "awaiting_acceptance" for s in status.services) else None

        offered = await wait_for(both_offered)
        partner = offered.services[0].partner_id
        assert partner is not None
        await referrals.partner_reply(client, code, PartnerReply(partner_id=partner, action="accept"))
        await handle.signal(ReferralWorkflow.report_channel_problem, ChannelReport(partner_id=partner, problem="undelivered", message_sid="SM" + "7" * 32))

        async def settled():
            memo, query = await referrals.get_status(client, code), await handle.query(ReferralWorkflow.status)
            return memo if memo == query and memo.channel_problems else None

        before = await wait_for(settled)
        assert before.services[0].stage == "follow_up" and before.stage == "awaiting_acceptance"
    # The worker is stopped: no query could be answered now.

    env = cli_env(dev_env, settings, tq)
    env["PYTHONPATH"] = str(ROOT)  # this checkout's code, whatever the venv's editable install points at
    result = await cli(env, "status", code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == json.loads(before.model_dump_json())

    async with api_client(settings, client) as http:
        took = []
        for _ in range(10):
            t0 = time.perf_counter()
            r = await http.get(f"/api/referrals/R-{code}")
            took.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
            assert r.json() == json.loads(before.model_dump_json())
        assert statistics.median(took) < 0.5, took  # milliseconds, even on a loaded machine
        for secret in (PSEUDONYM, PHONE, NOTES[:20]):
            assert secret not in r.text
        assert (await http.get("/api/referrals/7K3Q9")).status_code == 404
    await handle.terminate("test over")


async def test_status_right_after_the_start_with_no_worker_at_all(dev_env, make_settings):
    """The starter writes the first status in the memo: a describe answers before any worker ran."""
    client = dev_env.client
    settings = make_settings(referral_api_tokens=TOKEN, referral_task_queue="no-worker-here")
    case = adult_case(needs=["shelter", "legal"])
    async with api_client(settings, client) as http:
        r = await http.post("/api/referrals", json=case)
        assert r.status_code == 201, r.text
        code = r.json()["code"]
        r = await http.get(f"/api/referrals/{code}")
        assert r.status_code == 200, r.text
    body = r.json()
    assert body["stage"] == "identification" and body["external_ref"] == case["external_ref"]
    assert [s["service"] for s in body["services"]] == ["shelter", "legal"]
    assert body["escalation_level"] == 0 and body["awaiting_partners"] == [] and body["started_at"]
    await client.get_workflow_handle(referrals.workflow_id(code)).terminate("test over")


async def test_the_memo_in_the_server_is_ciphertext(dev_env, make_settings):
    """Read with a client that has no codec: the status in the memo, at start and as upserted,
    is `binary/encrypted`, and nothing of it reads in plain text."""
    client = dev_env.client
    raw = await Client.connect(client.service_client.config.target_host, namespace=client.namespace)
    async with running_worker(client, make_settings()) as tq:
        started = await referrals.start_referral(client, adult_intake(needs=["shelter"]), tq)
        await wait_for(lambda: _offered(client, started.code))
        described = await raw.workflow_service.describe_workflow_execution(
            DescribeWorkflowExecutionRequest(namespace=raw.namespace, execution=WorkflowExecution(workflow_id=started.workflow_id))
        )
        history = await raw.get_workflow_handle(started.workflow_id).fetch_history()
        await client.get_workflow_handle(started.workflow_id).terminate("test over")
    stored = [described.workflow_execution_info.memo.fields[status_memo.MEMO_KEY]]
    stored += [
        e.workflow_properties_modified_event_attributes.upserted_memo.fields[status_memo.MEMO_KEY]
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_PROPERTIES_MODIFIED
    ]
    stored.append(history.events[0].workflow_execution_started_event_attributes.memo.fields[status_memo.MEMO_KEY])
    assert len(stored) >= 3
    for payload in stored:
        assert payload.metadata["encoding"] == b"binary/encrypted"
        for plain in (b"shelter", b"casablanca", b"awaiting", b"cas-assoc", b'"v"', b"json"):
            assert plain not in payload.data


async def _offered(client: Client, code: str) -> bool:
    return (await referrals.get_status(client, code)).stage == "awaiting_acceptance"
