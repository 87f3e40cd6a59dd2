"""`referral ledger rebuild` (starter/ledger_rebuild.py) on the dev server: the ledger wiped, the
rebuild writes back every referral's record from Temporal (a closed one exactly as the workflow
wrote it), twice gives the same rows, and never replaces what the workflow writes later; on SQLite
and on PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import delete

from ledger.schema import offers, referral_indicators, services
from ledger.schema import referrals as referral_rows
from starter import ledger_rebuild, referrals
from tests.cases import adult_intake
from tests.conftest import LedgerDB, running_worker, wait_for
from tests.workflows.test_ledger_lifecycle import PATIENT, finished, offered, policy, reply, row
from workflows.ledger_entry import as_of, ledger_record
from workflows.models import CoordinatorAction

REPO = Path(__file__).resolve().parents[2]


def wipe(db: LedgerDB) -> None:
    with db.store().engine.begin() as conn:
        for table in (offers, services, referral_indicators, referral_rows):
            conn.execute(delete(table))


def rebuild_cli(dev_env, db: LedgerDB, *codes: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "LEDGER_DATABASE_URL": db.url,
    }
    return subprocess.run(
        [sys.executable, "-m", "starter.cli", "ledger", "rebuild", *codes], env=env, capture_output=True, text=True, timeout=120, cwd=REPO
    )


async def test_rebuild_after_a_wipe_gives_back_the_rows_and_twice_the_same(dev_env, ledger_db: LedgerDB, tmp_path):
    client = dev_env.client
    intakes = {name: adult_intake(needs=["shelter"]) for name in ("completed", "following", "offered")}
    async with running_worker(client, ledger_db.settings(referral_policy_file=policy(tmp_path, PATIENT))) as tq:
        codes = {name: (await referrals.start_referral(client, intake, tq)).code for name, intake in intakes.items()}
        done, following = codes["completed"], codes["following"]
        for code in (done, following):
            await reply(client, code, await offered(client, code, "shelter"), "accept")
        await offered(client, codes["offered"], "shelter")
        partner = (await referrals.get_status(client, done)).services[0].partner_id
        await reply(client, done, partner, "done")
        closed = await finished(client, done)
        # The check-in answered after the workflow's last write: only the rebuild has it.
        checkin = await row(ledger_db, following, lambda r: r.services[0].checkins_sent == 1)
        await reply(client, following, checkin.services[0].accepted_by, "ok")
        await wait_for(lambda: _answered(client, following))
        written = {code: await row(ledger_db, code) for code in codes.values()}

        wipe(ledger_db)
        assert await asyncio.to_thread(ledger_db.store().get, done) is None
        first = await ledger_rebuild.rebuild(client, ledger_db.store(), list(codes.values()))
        assert (first.read, first.written, first.failed) == (3, 3, {})
        rebuilt = {code: ledger_db.store().get(code) for code in codes.values()}
        again = await ledger_rebuild.rebuild(client, ledger_db.store(), list(codes.values()))
        assert again.read == 3 and again.failed == {}
        assert {code: ledger_db.store().get(code) for code in codes.values()} == rebuilt

        # The closed referral: exactly what the workflow wrote at its closure.
        assert rebuilt[done] == written[done] == ledger_record(intakes["completed"], closed, closed.closed_at)
        # Open ones: the record of the status now, dated as of its last moment.
        for name in ("following", "offered"):
            code = codes[name]
            status = await referrals.get_status(client, code)
            assert rebuilt[code] == ledger_record(intakes[name], status, as_of(status))
        assert rebuilt[codes["offered"]].updated_at <= written[codes["offered"]].updated_at
        assert (written[following].services[0].checkins_answered, rebuilt[following].services[0].checkins_answered) == (0, 1)
        assert rebuilt[following].updated_at > written[following].updated_at

        # A rebuild never replaces what the workflow writes later: the closure.
        await reply(client, following, checkin.services[0].accepted_by, "done")
        status = await finished(client, following)
        assert await row(ledger_db, following) == ledger_record(intakes["following"], status, status.closed_at)
        await referrals.coordinator_action(client, codes["offered"], CoordinatorAction(action="cancel", by="coord-cas"))
        await finished(client, codes["offered"])

    # The command line, over the same referrals: the same rows.
    before = {code: ledger_db.store().get(code) for code in codes.values()}
    wipe(ledger_db)
    out = rebuild_cli(dev_env, ledger_db, *(f"R-{c}" for c in codes.values()))
    assert out.returncode == 0, out.stderr
    assert "3 referral(s) read" in out.stdout and "3 record(s) written" in out.stdout
    assert {code: ledger_db.store().get(code) for code in codes.values()} == before
    for intake in intakes.values():
        assert intake.person.pseudonym not in out.stdout + out.stderr and intake.external_ref not in out.stdout + out.stderr


async def _answered(client, code: str) -> bool:
    return (await referrals.get_status(client, code)).services[0].follow_ups[0].answer == "ok"


async def test_rebuild_names_a_bad_code_and_an_unknown_referral(dev_env, ledger_db: LedgerDB):
    bad = rebuild_cli(dev_env, ledger_db, "not-a-code")
    assert bad.returncode == 2 and "code:" in bad.stderr
    unknown = rebuild_cli(dev_env, ledger_db, "R-33333")
    assert unknown.returncode == 1 and "R-33333 not rebuilt (ReferralNotFound)" in unknown.stderr
    assert "0 referral(s) read" in unknown.stdout
