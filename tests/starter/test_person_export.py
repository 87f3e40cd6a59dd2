"""A person's right of access (starter/person_export.py, `referral export-person`): on the dev
server, a referral offered to partners, declined by one with a reason; the export holds the
person's intake, every message with its text (no signed link, no partner contact details) and the
replies received; after an erasure it says so. The CLI writes an owner-only file, never over one."""

from __future__ import annotations

import asyncio
import json
import stat
import uuid
from pathlib import Path

import pytest

from activities.directory import load_directory
from infra.temporal import payload_codec
from starter import erasure, referrals
from starter.person_export import FORMAT, export_person
from tests.cases import NOTES, PHONE, PSEUDONYM, adult_intake
from tests.conftest import running_worker, wait_for
from tests.starter.test_cli import cli, cli_env
from tests.workflows.test_ledger_lifecycle import offered, reply

LINK_SECRET = "export-test-partner-link-secret-0123456789"


def contact_details(settings) -> list[str]:
    """Every phone number and email address of the partner directory."""
    directory = load_directory(settings.referral_partners_file)
    contacts = [directory.national_focal_point, *directory.coordinators.values(), *directory.partners]
    found = [getattr(c, f, None) for c in contacts for f in ("sms", "email", "backup_sms", "backup_email")]
    return [value for value in found if value]


async def exported_when_sent(client, settings, code: str, partners: tuple[str, ...]) -> dict:
    """The export, once the shelter offers to `partners`, and every other send, have finished."""

    async def done():
        body = await export_person(client, settings, code)
        shelter = {m["recipient"]["id"] for m in body["messages"] if m["template"] == "offer" and m["service"] == "shelter"}
        finished = all(m["delivery"] != "pending" for m in body["messages"])
        return body if finished and shelter == set(partners) else None

    return await wait_for(done, timeout=30)


async def test_export_holds_the_intake_messages_and_replies_without_partner_secrets(dev_env, make_settings, smtp):
    settings = make_settings(partner_link_secret=LINK_SECRET)
    client = dev_env.client
    async with running_worker(client, settings) as tq:
        started = await referrals.start_referral(client, adult_intake(external_ref=f"EXPORT-{uuid.uuid4().hex[:8]}"), tq)
        code = started.code
        first = await offered(client, code, "shelter")
        await reply(client, code, first, "decline", reason="plus de place ce mois-ci", decline_code=1, service="shelter")
        second = await offered(client, code, "shelter", nth=2)
        # The real offer emails carried a signed link; the export must not.
        assert any("http" in m.get_content() for m in smtp.messages if code in str(m["Subject"]))

        body = await exported_when_sent(client, settings, code, (first, second))
        text = json.dumps(body, ensure_ascii=False, default=str)

        assert (body["format"], body["referral"], body["workflow_id"]) == (FORMAT, f"R-{code}", f"referral-{code}")
        assert body["exported_at"] and not body["erased"] and body["erasure"] is None
        # The person's own data is theirs to see.
        person = body["intake"]["person"]
        assert (person["pseudonym"], person["contact_phone"], body["intake"]["notes"]) == (PSEUDONYM, PHONE, NOTES)
        assert body["assessment"]["urgency"] and body["status"]["code"] == code
        assert [r["run_id"] for r in body["runs"]] and body["runs"][0]["started_at"]

        offers = [m for m in body["messages"] if m["template"] == "offer" and m["service"] == "shelter"]
        assert {(m["recipient"]["id"], m["channel"]) for m in offers} == {(p, c) for p in (first, second) for c in ("sms", "email")}
        for m in offers:
            assert m["recipient"]["kind"] == "partner" and m["service"] == "shelter"
            assert m["delivery"] == "sent" and m["scheduled_at"] and m["language"] in ("fr", "ar", "en")
            assert f"R-{code}" in m["text"]
        assert all(m["channel"] == "sms" or m["subject"] for m in body["messages"])
        # No partner secret: no signed link, no phone number or address of a partner or coordinator.
        assert "http" not in text and LINK_SECRET not in text
        for value in contact_details(settings):
            assert value not in text, "a contact detail of the directory is in the export"

        [declined] = body["updates"]
        assert (declined["update"], declined["partner_id"], declined["action"], declined["service"]) == ("partner_reply", first, "decline", "shelter")
        assert (declined["reason"], declined["decline_code"], declined["channel"]) == ("plus de place ce mois-ci", 1, "cli")
        assert declined["received_at"] and declined["result"]["outcome"] == "declined"

        # Erased: the export says so, and holds only the de-identified row and the erasure record.
        await erasure.erase(client, settings, code, by="coord-1", reason="the person asked (DPO ticket 7)", task_queue=tq)
        after = await export_person(client, settings, code)
        assert after["erased"] and after["erasure"]["state"] == "erased" and after["erasure"]["requested_by"] == "coord-1"
        assert after["intake"] is None and after["messages"] == [] and after["updates"] == []
        assert after["ledger"] is not None and after["ledger"]["erased"]
        assert PSEUDONYM not in json.dumps(after, default=str)


async def test_unknown_code_is_not_found(dev_env, make_settings):
    with pytest.raises(referrals.ReferralNotFound):
        await export_person(dev_env.client, make_settings(), "7K3Q9")


async def test_cli_writes_an_owner_only_file_and_never_over_one(dev_env, make_settings, tmp_path: Path):
    settings = make_settings()
    async with running_worker(dev_env.client, settings) as tq:
        env = cli_env(dev_env, settings, tq)
        started = await referrals.start_referral(dev_env.client, adult_intake(external_ref=f"EXPORT-CLI-{uuid.uuid4().hex[:8]}"), tq)
        await offered(dev_env.client, started.code, "shelter")
        target = tmp_path / "export.json"
        result = await cli(env, "export-person", f"R-{started.code}", "--output", str(target))
        assert result.returncode == 0, result.stderr
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        assert PSEUDONYM not in result.stdout + result.stderr  # the data goes to the file only
        body = json.loads(target.read_text(encoding="utf-8"))
        assert body["referral"] == f"R-{started.code}" and body["intake"]["person"]["pseudonym"] == PSEUDONYM

        target.write_text("kept")
        again = await cli(env, "export-person", started.code, "--output", str(target))
        assert again.returncode == 2 and "exists" in again.stderr
        assert target.read_text() == "kept"

        printed = await cli(env, "export-person", started.code)
        assert printed.returncode == 0 and json.loads(printed.stdout)["referral"] == f"R-{started.code}"

    unknown = await cli(env, "export-person", "7K3Q9")
    assert unknown.returncode == 2 and unknown.stderr.startswith("referral: ") and "R-7K3Q9" in unknown.stderr

    # Its data key destroyed before its runs are deleted (an erasure half done): said, not failed.
    codec = payload_codec(settings)
    assert codec is not None and codec.data_keys is not None
    await asyncio.to_thread(codec.data_keys.destroy, started.code)
    body = await export_person(dev_env.client, settings, started.code)
    assert body["note"] and "destroyed" in body["note"] and body["intake"] is None and body["messages"] == []
