"""The `referral` console script, run as a coordinator's script would run it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from starter import referrals
from tests.cases import EXAMPLES, PHONE, PSEUDONYM, adult_case, adult_intake
from tests.conftest import running_worker, wait_for

REFERRAL = str(Path(sys.executable).parent / "referral")
ROOT = Path(__file__).resolve().parents[2]


async def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(
        subprocess.run, [REFERRAL, *args], env=env, capture_output=True, text=True, timeout=60
    )


def cli_env(dev_env, settings, task_queue: str = "referrals") -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        TEMPORAL_ADDRESS=dev_env.client.service_client.config.target_host,
        REFERRAL_TASK_QUEUE=task_queue,
        REFERRAL_DATA_DIR=str(settings.referral_data_dir),
        PYTHONPATH=str(ROOT),  # this checkout's code, whatever the venv's editable install points at
    )
    return env


async def test_start_twice_with_one_external_ref_gives_one_workflow(dev_env, make_settings, tmp_path):
    settings = make_settings()
    async with running_worker(dev_env.client, settings) as tq:
        env = cli_env(dev_env, settings, tq)
        case = tmp_path / "case.json"
        case.write_text(json.dumps(adult_case()))
        first = await cli(env, "start", "--file", str(case), "--json")
        second = await cli(env, "start", "--file", str(case), "--json")
        assert first.returncode == 0, first.stderr
        assert second.returncode == 0, second.stderr
        a, b = json.loads(first.stdout), json.loads(second.stdout)
        assert a["code"] == b["code"] and a["workflow_id"] == b["workflow_id"] == f"referral-{a['code']}"
        assert a["created"] is True and b["created"] is False
        ref = json.loads(case.read_text())["external_ref"]
        rows = await referrals.list_referrals(dev_env.client, f"WorkflowId = '{a['workflow_id']}'")
        assert len(rows) == 1

        status = await cli(env, "status", a["code"])
        assert status.returncode == 0
        body = json.loads(status.stdout)
        assert body["code"] == a["code"] and body["external_ref"] == ref
        assert PSEUDONYM not in status.stdout and PHONE not in status.stdout

        async def offered():
            st = await referrals.get_status(dev_env.client, a["code"])
            return next((s.partner_id for s in st.services if s.stage == "awaiting_acceptance"), None)

        partner = await wait_for(offered)
        service = next(s.service for s in (await referrals.get_status(dev_env.client, a["code"])).services if s.partner_id == partner)
        ok = await cli(env, "respond", f"r-{a['code'].lower()}", "--partner", partner, "accept")
        assert ok.returncode == 0 and "accepted" in ok.stdout, ok.stderr
        again = await cli(env, "respond", a["code"], "--partner", partner, "accept")
        assert again.returncode == 0 and "already" in again.stdout
        stranger = await cli(env, "respond", a["code"], "--partner", "sou-assoc", "accept")
        assert stranger.returncode == 2 and "not_offered" in stranger.stderr

        listed = await cli(env, "list", "--region", "casablanca-settat", "--json")
        assert listed.returncode == 0
        cancelled = await cli(env, "cancel", a["code"], "--reason", "test")
        assert cancelled.returncode == 0 and "closed" in cancelled.stdout, cancelled.stderr
        assert service


async def test_close_takes_an_outcome_and_a_decline_its_code(dev_env, make_settings):
    settings = make_settings()
    async with running_worker(dev_env.client, settings) as tq:
        env = cli_env(dev_env, settings, tq)
        started = await referrals.start_referral(dev_env.client, adult_intake(needs=["shelter", "medical"]), tq)
        code = started.code

        async def offered(service: str):
            st = await referrals.get_status(dev_env.client, code)
            s = next(s for s in st.services if s.service == service)
            return s.partner_id if s.stage == "awaiting_acceptance" else None

        first = await wait_for(lambda: offered("shelter"))
        wrong = await cli(env, "respond", code, "--partner", first, "accept", "--decline-code", "1")
        assert wrong.returncode == 2 and "decline_code: only with decline" in wrong.stderr, wrong.stderr
        unknown = await cli(env, "respond", code, "--partner", first, "decline", "--decline-code", "5")
        assert unknown.returncode == 2 and "--decline-code" in unknown.stderr
        declined = await cli(env, "respond", code, "--partner", first, "decline", "--decline-code", "2", "--reason", "pas ce service")
        assert declined.returncode == 0 and "declined" in declined.stdout, declined.stderr

        # `close` asks how the service ended; `cancel` and `withdraw-consent` do not.
        missing = await cli(env, "close", code, "--service", "medical")
        assert missing.returncode == 2 and "--outcome" in missing.stderr
        bad = await cli(env, "close", code, "--service", "medical", "--outcome", "finished")
        assert bad.returncode == 2 and "--outcome" in bad.stderr
        one = await cli(env, "close", code, "--service", "medical", "--outcome", "transferred")
        assert one.returncode == 0, one.stderr
        whole = await cli(env, "close", code, "--outcome", "not_needed", "--reason", "test")
        assert whole.returncode == 0 and "closed" in whole.stdout, whole.stderr

        status = await referrals.get_status(dev_env.client, code)
        shelter, medical = (next(s for s in status.services if s.service == name) for name in ("shelter", "medical"))
        assert (shelter.attempts[0].outcome, shelter.attempts[0].decline_code) == ("declined", 2)
        assert (medical.outcome, shelter.outcome, status.closed_reason) == ("transferred", "not_needed", "closed")
        shown = json.loads((await cli(env, "status", code)).stdout)
        assert [s["outcome"] for s in shown["services"]] == ["not_needed", "transferred"]
        assert shown["services"][0]["attempts"][0]["decline_code"] == 2


async def test_bad_input_and_unknown_codes_exit_2_with_one_line(dev_env, make_settings, tmp_path):
    settings = make_settings()
    env = cli_env(dev_env, settings)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(adult_case(needs=["shelter", "spa"], person={"contact_phone": "12"})))
    result = await cli(env, "start", "--file", str(bad))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "needs.1" in result.stderr and "person.contact_phone" in result.stderr
    assert PSEUDONYM not in result.stderr

    no_consent = tmp_path / "no-consent.yaml"
    # The example past its comment and external_ref lines, made an adult's: only the consent is missing.
    body = (EXAMPLES / "minor-without-consent.yaml").read_text().split("\n", 3)[3]
    no_consent.write_text("external_ref: X-1\n" + body.replace("age_group: minor", "age_group: adult").replace("external_ref: NGO-TNG-2026-0087\n", ""))
    result = await cli(env, "start", "--file", str(no_consent))
    assert result.returncode == 2 and "consent" in result.stderr

    for args in (("status", "7K3Q9"), ("status", "hello"), ("cancel", "R-7K3Q9"), ("start", "--file", str(tmp_path / "missing.json"))):
        result = await cli(env, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.startswith("referral: ") and result.stderr.count("\n") == 1

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    result = await cli(env, "start", "--file", str(broken))
    assert result.returncode == 2 and "not valid JSON" in result.stderr


async def test_examples_are_valid_intakes():
    from starter.cli import load_intake
    from workflows.intake import assess

    outcomes = {p.name: assess(load_intake(str(p))) for p in sorted(EXAMPLES.glob("*.*"))}
    assert outcomes["adult-three-needs.json"].needs == ["shelter", "medical", "legal"]
    minor = outcomes["minor-without-consent.yaml"]
    assert minor.needs == ["child_protection"] and minor.urgency == "urgent"
    assert outcomes["emergency.json"].urgency == "emergency"
