"""The worker's Prometheus endpoint: the SDK's `temporal_*` metrics and the project's own."""

from __future__ import annotations

import re
import uuid

import httpx

from infra.temporal import connect, metrics_runtime
from starter import referrals
from tests.cases import uniform_policy
from tests.conftest import free_port, wait_for
from tests.test_data_protection import PERSONAL, intake, offered
from worker import build_worker
from workflows.models import ChannelReport, PartnerReply
from workflows.referral import ReferralWorkflow

POLICY = uniform_policy("2s", "1s", "60s", "60s", "1h")


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample of `name` whose labels include `labels`."""
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            return float(match.group(2))
    return None


async def test_prometheus_endpoint_serves_sdk_and_project_metrics(dev_env, make_settings, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    port = free_port()
    settings = make_settings(
        temporal_address=dev_env.client.service_client.config.target_host,
        referral_policy_file=policy,
        metrics_port=port,
        metrics_host="127.0.0.1",
    )
    client = await connect(settings, runtime=metrics_runtime(settings))
    task_queue = f"referrals-metrics-{uuid.uuid4()}"
    async with build_worker(client, settings, task_queue=task_queue):
        started = await referrals.start_referral(client, intake(), task_queue)
        code = started.code
        first = await offered(client, code)

        async def second_offer():
            status = await referrals.get_status(client, code)
            attempts = status.services[0].attempts
            return attempts[-1].partner_id if len(attempts) > 1 and status.services[0].stage == "awaiting_acceptance" else None

        second = await wait_for(second_offer, timeout=30)  # the first partner's 2 s passed: escalation 1
        assert second != first
        await referrals.partner_reply(client, code, PartnerReply(partner_id=second, action="accept"))
        handle = client.get_workflow_handle_for(ReferralWorkflow.run, referrals.workflow_id(code))
        await handle.signal(ReferralWorkflow.report_channel_problem, ChannelReport(partner_id=second, problem="undelivered"))
        await referrals.partner_reply(client, code, PartnerReply(partner_id=second, action="done"))
        await handle.result()

        async with httpx.AsyncClient(timeout=5) as http:

            async def scraped():
                text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
                return text if sample(text, "sms_failures", problem="undelivered") else None

            text = await wait_for(scraped, timeout=15)

    assert re.search(r"^temporal_\w+", text, re.M), "the SDK's own metrics"
    assert sample(text, "temporal_workflow_completed", workflow_type="ReferralWorkflow")
    assert sample(text, "referrals_started", urgency="normal", region="casablanca-settat") >= 1
    assert sample(text, "offers_sent", service="shelter") >= 2
    assert sample(text, "escalations", level="1") >= 1
    assert sample(text, "time_to_acceptance_seconds_count", urgency="normal") >= 1
    assert sample(text, "time_to_acceptance_seconds_bucket", urgency="normal", le="+Inf") >= 1
    assert sample(text, "sms_failures", problem="undelivered") >= 1
    for secret in PERSONAL:
        assert secret not in text
    assert code not in text, "no referral code in a label either (cardinality)"
