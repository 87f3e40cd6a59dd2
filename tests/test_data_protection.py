"""What the Temporal server, the UI, the logs and the data dir hold about the person referred:
nothing readable. Runs whole lifecycles on the dev server with encryption on (tests/conftest.py).

- the history fetched with the Temporal CLI (`temporal workflow show --output json`) holds no
  pseudonym, phone or notes, even after base64-decoding every base64-looking string;
- the memo, static summary, current details and search attributes neither;
- the UI metadata is there: static summary, current details, activity and timer summaries;
- key rotation: a history written under key A goes on under `B,A`; a key id nobody has fails
  clearly;
- the logs of a whole lifecycle carry the referral code and ids and no personal data;
- nothing under the data dir (outbox, attempt records, sqlite) holds personal data.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.api.sdk.v1 import WorkflowMetadata
from temporalio.client import Client

from infra.codec import KEY_ID, PayloadDecryptionError, new_key_entry
from infra.logs import configure_logging, reset_logging
from infra.temporal import connect
from starter import referrals
from tests.cases import adult_intake
from tests.conftest import running_worker, wait_for
from worker import build_worker
from workflows.models import PartnerReply, ReferralInput
from workflows.referral import ReferralWorkflow

TEMPORAL = str(Path(sys.executable).parent / "temporal")

# A person no fixture or partner shares, so any hit is a leak.
PSEUDONYM = "Khadija Testpseudonym"
PHONE = "+212661987654"
NOTES = "Distinctive note: found near Tiznit, documents confiscated by the foreman."
PERSONAL = (
    PSEUDONYM,
    "Testpseudonym",
    PHONE,
    PHONE.lstrip("+"),
    "0661987654",
    "661987654",
    NOTES,
    "Tiznit",
    "confiscated by the foreman",
)

POLICY = """
urgencies:
  normal: {reply_within: 120s, remind_after: 60s, checkin_answer_within: 120s, escalated_alert_every: 120s}
  urgent: {reply_within: 120s, remind_after: 60s, checkin_answer_within: 120s, escalated_alert_every: 120s}
  emergency: {reply_within: 120s, remind_after: 60s, checkin_answer_within: 120s, escalated_alert_every: 120s}
follow_ups: [1s, 1h]
"""


def intake():
    return adult_intake(
        needs=["shelter"],
        person={"pseudonym": PSEUDONYM, "contact_phone": PHONE},
        notes=NOTES,
    )


def leaks(text: str, depth: int = 0) -> list[str]:
    """Personal values found in `text` as it is, or inside any base64-looking token of it
    (decoded, and the decoded text searched again, twice over)."""
    found = [p for p in PERSONAL if p in text]
    if depth >= 2:
        return found
    for token in set(re.findall(r"[A-Za-z0-9+/_-]{8,}={0,2}", text)):
        for decode in (base64.b64decode, base64.urlsafe_b64decode):
            try:
                raw = decode(token + "=" * (-len(token) % 4))
            except (binascii.Error, ValueError):
                continue
            inner = raw.decode("utf-8", "replace")
            found += [f"{p} (in base64 {token[:16]}...)" for p in leaks(inner, depth + 1)]
    return found


async def offered(client: Client, code: str) -> str:
    async def current():
        status = await referrals.get_status(client, code)
        svc = status.services[0]
        return svc.partner_id if svc.stage == "awaiting_acceptance" else None

    return await wait_for(current)


async def checkin_sent(client: Client, code: str) -> bool:
    status = await referrals.get_status(client, code)
    return any(f.sent_at is not None and f.answer is None for f in status.services[0].follow_ups)


async def lifecycle(client: Client, task_queue: str, observe=None) -> str:
    """Start, accept, check-in OK, DONE -> closed. `observe(code)` runs during follow-up."""
    started = await referrals.start_referral(client, intake(), task_queue)
    code = started.code
    partner = await offered(client, code)
    await referrals.partner_reply(client, code, PartnerReply(partner_id=partner, action="accept"))
    await wait_for(lambda: checkin_sent(client, code))
    if observe is not None:
        await observe(code)
    await referrals.partner_reply(client, code, PartnerReply(partner_id=partner, action="ok"))
    await referrals.partner_reply(client, code, PartnerReply(partner_id=partner, action="done"))
    result = await client.get_workflow_handle_for(ReferralWorkflow.run, referrals.workflow_id(code)).result()
    assert result.closed_reason == "completed"
    return code


@pytest.fixture
def policy_settings(make_settings, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    return make_settings(referral_policy_file=policy)


def files_under(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()] if directory.exists() else []


async def test_history_from_the_cli_holds_no_personal_data(dev_env, policy_settings, smtp):
    client = dev_env.client
    async with running_worker(client, policy_settings) as tq:
        code = await lifecycle(client, tq)
        wid = referrals.workflow_id(code)
        # Answered by a worker, also once closed: what the UI shows as current details.
        handle = client.get_workflow_handle(wid)
        metadata = await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)
    assert metadata.current_details and "Closed: completed" in metadata.current_details
    assert leaks(metadata.current_details) == []

    shown = await asyncio.to_thread(
        subprocess.run,
        [TEMPORAL, "workflow", "show", "--workflow-id", wid, "--address", client.service_client.config.target_host,
         "--namespace", client.namespace, "--output", "json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    history = json.loads(shown.stdout)
    events = history["events"] if isinstance(history, dict) else history
    kinds = {e.get("eventType") for e in events}
    assert {"EVENT_TYPE_WORKFLOW_EXECUTION_STARTED", "EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED"} <= kinds or {
        "WorkflowExecutionStarted", "WorkflowExecutionCompleted"} <= kinds, kinds  # fmt: skip
    assert leaks(shown.stdout) == []
    # It is ciphertext, not merely absent: the start input is under the referral's own data key.
    started = json.dumps(events[0])
    assert base64.b64encode(b"binary/encrypted").decode() in started
    key_id = events[0]["workflowExecutionStartedEventAttributes"]["input"]["payloads"][0]["metadata"]["encryption-key-id"]
    assert base64.b64decode(key_id).startswith(b"dk:")

    described = await handle.describe()
    memo = await described.memo()
    assert memo["status"]["S"], "the status the memo holds, checked with the rest below"
    summary = await described.static_summary()
    attributes = {k.name: v for k, v in described.typed_search_attributes}  # type: ignore[attr-defined]
    assert summary and f"R-{code}" in summary
    for text in (json.dumps(memo), summary, str(attributes), str(described.raw_description)):
        assert leaks(text) == [], text

    # Outside Temporal: nothing in the data dir or the emails sent holds personal data.
    for path in files_under(policy_settings.referral_data_dir):
        assert leaks(path.read_bytes().decode("utf-8", "replace")) == [], path
    mails = [m for m in smtp.messages if f"R-{code}" in str(m["Subject"])]
    assert mails
    for msg in mails:
        assert leaks(msg.as_string()) == []


async def test_ui_metadata_on_a_dev_server_run(dev_env, policy_settings):
    client = dev_env.client
    seen: dict[str, object] = {}

    async def observe(code: str) -> None:
        handle = client.get_workflow_handle(referrals.workflow_id(code))
        seen["summary"] = await (await handle.describe()).static_summary()
        seen["details"] = (await handle.query("__temporal_workflow_metadata", result_type=WorkflowMetadata)).current_details

    async with running_worker(client, policy_settings) as tq:
        code = await lifecycle(client, tq, observe)

    summary = seen["summary"]
    assert summary == f"R-{code} · normal · casablanca-settat · shelter"
    details = str(seen["details"])
    assert f"**R-{code}** · stage `follow_up`" in details
    assert "| service | stage | partner | deadline | level | last event |" in details
    assert re.search(r"\| shelter \| follow_up \| [a-z0-9-]+ \| \d{4}-\d\d-\d\d \d\d:\d\d UTC \| 0 \| check-in 1 sent", details), details

    handle = client.get_workflow_handle(referrals.workflow_id(code))
    history = await handle.fetch_history()
    activity_summaries, timer_summaries = [], []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            target = activity_summaries
        elif event.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            target = timer_summaries
        else:
            continue
        payload = event.user_metadata.summary
        assert payload.metadata["encoding"] == b"binary/encrypted", "user metadata is encrypted too"
        (text,) = await client.data_converter.decode([payload], [str])
        target.append(text)
    assert activity_summaries and timer_summaries
    for text in activity_summaries + timer_summaries:
        assert isinstance(text, str) and text and leaks(text) == []
    assert "load the escalation policy for normal" in activity_summaries
    assert "rank partners for shelter in casablanca-settat" in activity_summaries
    assert any(re.fullmatch(r"SMS offer to partner [a-z0-9-]+ \(shelter\)", t) for t in activity_summaries), activity_summaries
    assert any(re.fullmatch(r"email offer to partner [a-z0-9-]+ \(shelter\)", t) for t in activity_summaries)
    deadline = r"\d{4}-\d\d-\d\d \d\d:\d\d UTC"
    # (The deadline timer that escalates starts after the reminder; this partner answered first.)
    assert any(re.fullmatch(rf"remind [a-z0-9-]+ \(shelter\) if no reply by {deadline}", t) for t in timer_summaries), timer_summaries
    assert any(re.fullmatch(rf"escalate if [a-z0-9-]+ has not answered check-in 1 by {deadline}", t) for t in timer_summaries)
    assert any(re.fullmatch(rf"check-in 1 with [a-z0-9-]+ \(shelter\) at {deadline}", t) for t in timer_summaries)


async def test_key_rotation_old_histories_still_decode_and_continue(dev_env, make_settings):
    """A referral's payloads are under its own data key, wrapped by the master key: after a
    rotation the referral goes on under the same data key, and once `referral keys rewrap` has
    run, a process without the old master key reads it all."""
    address = dev_env.client.service_client.config.target_host
    key_a, key_b = new_key_entry("rot-a"), new_key_entry("rot-b")
    own = {"temporal_address": address, "data_keys_database_url": make_settings().ledger_url}  # the test's own key table
    settings_a = make_settings(referral_encryption_keys=key_a, **own)
    settings_ba = make_settings(referral_encryption_keys=f"{key_b},{key_a}", **own)
    task_queue = f"referrals-rotation-{uuid.uuid4()}"

    client_a = await connect(settings_a)
    async with build_worker(client_a, settings_a, task_queue=task_queue):
        started = await referrals.start_referral(client_a, intake(), task_queue)
        code = started.code
        partner = await offered(client_a, code)
    # The worker under key A is gone; the new one replays the history written under A.
    client_ba = await connect(settings_ba)
    async with build_worker(client_ba, settings_ba, task_queue=task_queue):
        assert (await referrals.get_status(client_ba, code)).services[0].partner_id == partner
        await referrals.partner_reply(client_ba, code, PartnerReply(partner_id=partner, action="accept"))
        await referrals.partner_reply(client_ba, code, PartnerReply(partner_id=partner, action="done"))
        handle = client_ba.get_workflow_handle_for(ReferralWorkflow.run, referrals.workflow_id(code))
        result = await handle.result()
    assert result.closed_reason == "completed"

    history = await handle.fetch_history()
    first = history.events[0].workflow_execution_started_event_attributes.input.payloads[0]
    last = next(e for e in reversed(history.events) if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED)
    data_key = first.metadata[KEY_ID]
    assert data_key.startswith(b"dk:")
    assert last.workflow_execution_completed_event_attributes.result.payloads[0].metadata[KEY_ID] == data_key
    (decoded,) = await client_ba.data_converter.decode([first], [ReferralInput])
    assert decoded.intake.person.pseudonym == PSEUDONYM

    # A process that lost key A cannot unwrap the data key, and says which master key it lacks.
    settings_b = make_settings(referral_encryption_keys=key_b, **own)
    client_b = await connect(settings_b)
    with pytest.raises(PayloadDecryptionError) as err:
        await client_b.data_converter.decode([first])
    assert "'rot-a'" in str(err.value) and data_key.decode() in str(err.value)
    assert leaks(str(err.value)) == [] and key_a.split(":")[1] not in str(err.value)
    with pytest.raises(PayloadDecryptionError, match="rot-a"):
        await (await client_b.get_workflow_handle(referrals.workflow_id(code)).describe()).memo()

    # `referral keys rewrap` under the new key: then key A can be retired.
    env = {
        **os.environ,
        "TEMPORAL_ADDRESS": address,
        "REFERRAL_DATA_DIR": str(settings_ba.referral_data_dir),
        "REFERRAL_ENCRYPTION_KEYS": f"{key_b},{key_a}",
        "DATA_KEYS_DATABASE_URL": own["data_keys_database_url"],
    }
    rewrap = await asyncio.to_thread(
        subprocess.run, [str(Path(sys.executable).parent / "referral"), "keys", "rewrap"], env=env, capture_output=True, text=True, timeout=60
    )
    assert rewrap.returncode == 0, rewrap.stderr
    assert "1 rewrapped under master key id rot-b" in rewrap.stdout
    (again,) = await client_b.data_converter.decode([first], [ReferralInput])
    assert again.intake.person.pseudonym == PSEUDONYM


async def test_logs_of_a_lifecycle_carry_ids_and_no_personal_data(dev_env, policy_settings):
    client = dev_env.client
    out = io.StringIO()
    configure_logging(policy_settings.model_copy(update={"log_format": "json", "log_level": "INFO"}), stream=out)
    try:
        async with running_worker(client, policy_settings) as tq:
            code = await lifecycle(client, tq)
    finally:
        reset_logging()
    text = out.getvalue()
    assert leaks(text) == []
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    mine = [line for line in lines if line.get("referral") == code]
    assert mine, text[-2000:]

    wid = referrals.workflow_id(code)
    activity_lines = [line for line in mine if line.get("activity") == "send_sms"]
    assert activity_lines, "the SMS activity logs with its context"
    for line in activity_lines:
        assert line["workflow_id"] == wid and line["run_id"] and line["level"] and line["timestamp"]
    workflow_events = {line["event"] for line in mine if line.get("logger") == "temporalio.workflow"}
    assert {"referral started", "offer", "offer accepted", "referral closed"} <= workflow_events, workflow_events
    for line in mine:
        if line.get("logger") == "temporalio.workflow":
            assert line["workflow_id"] == wid and line["run_id"]
    assert any(line.get("event") == "sms sent" and line.get("code") == code for line in mine)
