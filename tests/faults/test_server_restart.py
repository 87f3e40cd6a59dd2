"""The Temporal dev server stopped (SIGTERM, or SIGKILL) and started again on its database file
while referrals run: the worker and the clients reconnect by themselves and every referral
resumes and reaches its expected end."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from starter import referrals
from tests.faults.conftest import (
    DevServer,
    Driver,
    Plan,
    check_ends,
    message_report,
    per_referral_table,
    plan_intakes,
    say,
    stack,
    summarise,
    write_policy,
)
from tests.faults.test_worker_kill import FAST_POLICY

pytestmark = pytest.mark.faults_full


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_dev_server_restarted_mid_run(tmp_path: Path, sig: int):
    server = DevServer(tmp_path / "temporal")
    await server.start()
    policy = write_policy(tmp_path / "policy.yaml", FAST_POLICY)
    loop = asyncio.get_running_loop()
    try:
        async with stack(server, tmp_path, policy) as s:
            t0 = loop.time()
            plans = []
            for kind, needs, intake in plan_intakes(10, seed=int(sig), prefix=f"FAULT-SRV-{sig.name}"):
                started = await referrals.start_referral(s.client, intake, s.task_queue)
                plans.append(Plan(code=started.code, kind=kind, needs=needs, external_ref=intake.external_ref))
            driver = Driver(s, plans)
            drive = asyncio.create_task(driver.run(300))

            await asyncio.sleep(8)  # offers out, some accepted, timers running
            stopped_at = loop.time()
            code = await server.stop(sig)
            say(f"dev server {sig.name}: exited with {code} after {loop.time() - stopped_at:.1f}s; down for 5s")
            await asyncio.sleep(5)
            await server.start()
            say(f"dev server back after {loop.time() - stopped_at:.1f}s on {server.db.name}")
            assert s.worker.running, "the worker survives a server restart"

            await drive
            wrong = check_ends(plans)
            for p in plans:
                await s.result(p.code, timeout=60)
            report = await message_report(s, [p.code for p in plans])
            totals = summarise(report)
            say(per_referral_table(report, plans))
            say(
                f"FIGURES server_{sig.name.lower()} referrals={len(plans)} server_restarts=1 lost_referrals={len(wrong)} "
                f"sends={totals['sends']} duplicated_sms={totals['sms_duplicates']} duplicated_emails={totals['email_duplicates']} "
                f"lost_messages={totals['lost']} assigned_by_hand={sum(len(p.assigned) for p in plans)} "
                f"driver_retries={sum(driver.errors.values())} seconds={loop.time() - t0:.1f}"
            )
            say(f"driver errors: {dict(driver.errors)}; closes confirmed after (s): {({k: round(v, 1) for k, v in driver.close_confirmed.items()})}"
            )
            assert not wrong, "\n".join(wrong)
            assert totals["lost"] == 0 and totals["sms_duplicates"] == 0
    finally:
        await server.stop()
