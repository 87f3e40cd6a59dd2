"""The ledger never holds what identifies a person: every intake of examples/, and the tests'
fictional intakes, go through full lifecycles on the dev server (offers declined with a reason
naming the person, accepted, a check-in answered ISSUE quoting the notes, DONE, a service closed
by the coordinator with a reason), then the ledger's every byte (the SQLite file with its WAL,
or pg_dump's SQL of the PostgreSQL database) is searched for the personal data and free text."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import yaml

from starter import referrals
from tests.cases import EXAMPLES, NOTES, PHONE, PSEUDONYM, adult_case
from tests.conftest import LedgerDB, running_worker, wait_for
from tests.replay import record as replay_record
from tests.workflows.test_ledger_lifecycle import PATIENT, policy
from workflows import projection
from workflows.intake import Intake
from workflows.models import CoordinatorAction, PartnerReply
from workflows.referral import ReferralWorkflow


def example_cases() -> list[dict[str, Any]]:
    """Every intake of examples/, plus the tests' own fictional ones (tests/cases.py, the replay
    recorder's), each under an external_ref of its own (the same ref would find the referral
    another test started)."""
    cases = []
    for path in sorted(EXAMPLES.glob("*")):
        if path.suffix in (".json", ".yaml", ".yml"):
            cases.append(yaml.safe_load(path.read_text()) if path.suffix != ".json" else json.loads(path.read_text()))
    cases.append(adult_case(needs=["medical"]))
    cases.append(json.loads(replay_record.fictional_intake("ledger", ["legal"]).model_dump_json()))
    for case in cases:
        case["external_ref"] = f"{case['external_ref']}-{uuid.uuid4().hex[:8]}"
    return cases


def personal_strings(case: dict[str, Any]) -> list[str]:
    """What identifies the person or the case in an intake: pseudonym, phone (as given and as
    digits), notes (whole and in pieces), officer ids, the external_ref."""
    person, notes = case["person"], case.get("notes") or ""
    out = [person["pseudonym"], case["external_ref"], case["identified_by"]["officer_id"]]
    if case["consent"].get("recorded_by"):
        out.append(case["consent"]["recorded_by"])
    if person.get("contact_phone"):
        phone = person["contact_phone"]
        out += [phone, phone.lstrip("+0"), phone[-9:]]
    if notes:
        out += [notes, notes[:20], notes[-20:]]
    return out


# Free text a partner or coordinator writes: it stays in the (encrypted) history, never in the ledger.
DECLINE_REASON = f"no bed for {PSEUDONYM} ({PHONE})"
ISSUE_REASON = f"interpreter missing; {NOTES}"
CLOSE_REASON = f"handed over; call {PHONE}"


async def full_lifecycle(client, code: str) -> None:
    """Play the partners and the coordinator until the referral closes: each service's first offer
    declined (code 1, with a reason) when another candidate is left, then accepted; its first
    check-in answered ISSUE, then DONE; a service with no partner left closed by the coordinator."""
    answered: set[str] = set()
    while True:
        status = await referrals.get_status(client, code)
        if status.closed_at is not None:
            return
        for s in status.services:
            attempt = projection.pending_attempt(s)
            checkin = projection.open_checkin(s)
            try:
                if s.stage == "awaiting_acceptance" and attempt is not None:
                    if len(s.attempts) == 1 and len(s.candidates) > 1:
                        reply = PartnerReply(partner_id=attempt.partner_id, action="decline", decline_code=1, reason=DECLINE_REASON, service=s.service)
                    else:
                        reply = PartnerReply(partner_id=attempt.partner_id, action="accept", service=s.service)
                    await referrals.partner_reply(client, code, reply)
                elif s.stage == "follow_up" and s.partner_id and checkin is not None and s.service not in answered:
                    await referrals.partner_reply(client, code, PartnerReply(partner_id=s.partner_id, action="issue", reason=ISSUE_REASON, service=s.service))
                    answered.add(s.service)
                elif s.stage == "follow_up" and s.partner_id and s.service in answered:
                    await referrals.partner_reply(client, code, PartnerReply(partner_id=s.partner_id, action="done", service=s.service))
                elif s.stage == "escalated":
                    action = CoordinatorAction(action="close", service=s.service, outcome="other", reason=CLOSE_REASON, by="coord-test")
                    await referrals.coordinator_action(client, code, action)
            except referrals.ReferralRejected:
                pass  # the status moved on meanwhile (a reply already applied): look again
        await asyncio.sleep(0.3)


async def test_no_personal_data_or_free_text_reaches_the_ledger(dev_env, ledger_db: LedgerDB, tmp_path):
    client = dev_env.client
    cases = example_cases()
    settings = ledger_db.settings(referral_policy_file=policy(tmp_path, PATIENT))
    async with running_worker(client, settings) as tq:
        codes = [(await referrals.start_referral(client, Intake.model_validate(case), tq)).code for case in cases]
        # One more, closed by a withdrawal of consent with a reason, its offer pending.
        withdrawn = (await referrals.start_referral(client, Intake.model_validate(adult_case(needs=["shelter"])), tq)).code
        await wait_for(lambda: _offered(client, withdrawn), timeout=30)
        await referrals.coordinator_action(client, withdrawn, CoordinatorAction(action="withdraw_consent", reason=CLOSE_REASON, by="coord-test"))
        await asyncio.wait_for(asyncio.gather(*(full_lifecycle(client, code) for code in codes)), timeout=120)
        for code in [*codes, withdrawn]:
            await client.get_workflow_handle_for(ReferralWorkflow.run, referrals.workflow_id(code)).result()

    store = ledger_db.store()
    records = {code: store.get(code) for code in [*codes, withdrawn]}
    assert all(r is not None and r.closed_at is not None for r in records.values())
    assert any(o.decline_code == 1 for r in records.values() for s in r.services for o in s.offers)  # the lifecycles ran
    assert any(s.checkins_answered for r in records.values() for s in r.services)

    contents = ledger_db.contents()
    # The search sees what the ledger holds (so it would see a leak): every code and partner id.
    for record in records.values():
        assert record is not None
        held = [record.code, record.region, record.sector, *(o.partner_id for s in record.services for o in s.offers)]
        assert all(x.encode() in contents for x in held), held
    secrets = [x for case in cases for x in personal_strings(case)]
    secrets += [PSEUDONYM, PHONE, NOTES, replay_record.PSEUDONYM, replay_record.PHONE, replay_record.NOTES]
    secrets += [DECLINE_REASON, ISSUE_REASON, CLOSE_REASON, "interpreter missing", "handed over", "no bed for"]
    found = sorted({x for x in secrets if x.encode() in contents or x.encode("utf-16-le") in contents})
    assert found == [], f"in the {ledger_db.kind} ledger: {found}"


async def _offered(client, code: str) -> bool:
    status = await referrals.get_status(client, code)
    return status.services[0].stage == "awaiting_acceptance"
