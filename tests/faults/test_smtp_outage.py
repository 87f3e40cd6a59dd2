"""SMTP down while offers go out, then back: every email is delivered once after recovery (the
send activity retries with DELIVERY_RETRY's backoff: 2, 4, 8, 16 s ...)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from activities.directory import load_directory
from tests.cases import adult_intake, uniform_policy
from tests.conftest import wait_for
from tests.faults.conftest import DevServer, message_report, say, stack, summarise, write_policy
from tests.fixtures import PARTNERS_FILE

DIRECTORY = load_directory(PARTNERS_FILE)
# Nothing times out while the test runs: only the offers are sent.
QUIET_POLICY = uniform_policy("6h", "3h", "6h", "6h", "6h")
OUTAGE_SECONDS = 12.0


async def test_smtp_down_then_back_every_email_delivered_once(fault_server: DevServer, tmp_path: Path):
    policy = write_policy(tmp_path / "policy.yaml", QUIET_POLICY)
    async with stack(fault_server, tmp_path, policy) as s:
        loop = asyncio.get_running_loop()
        s.sink.stop()
        needs = [["shelter"], ["medical"], ["shelter", "legal"]]
        codes = [await s.start(adult_intake(needs=n)) for n in needs]
        expected = {(c, "cas-assoc" if svc in ("shelter", "legal") else "cas-clinic", svc) for c, n in zip(codes, needs, strict=True) for svc in n}

        # While SMTP is down the SMS go out and the emails wait.
        async def offers_pending() -> bool:
            statuses = [await s.status(c) for c in codes]
            return all(svc.attempts for st in statuses for svc in st.services)

        await wait_for(offers_pending, timeout=30)
        await asyncio.sleep(OUTAGE_SECONDS)
        assert s.sink.messages == []
        s.sink.start()
        back = loop.time()

        def delivered() -> bool:
            subjects = [(str(m["To"]), str(m["Subject"])) for m in s.sink.messages]
            return all(
                any(DIRECTORY.partner(pid).email in to and code in subj for to, subj in subjects)
                for code, pid, _ in expected
            )

        await wait_for(delivered, timeout=60, interval=0.2)
        waited = loop.time() - back
        await asyncio.sleep(3)  # anything doubled would arrive now
        report = await message_report(s, codes)
        totals = summarise(report)
        offers = [r for r in report if r.template == "offer" and r.channel == "email"]
        say(
            f"FIGURES smtp_outage referrals={len(codes)} outage_s={OUTAGE_SECONDS:.0f} emails_after_recovery={len(s.sink.messages)} "
            f"delivered_within_s={waited:.1f} duplicated_emails={totals['email_duplicates']} lost={totals['lost']}"
        )
        assert sum(r.completed for r in offers) == len(expected)  # one offer per service
        assert all(r.unique == r.completed == r.received for r in offers), offers
        assert totals["lost"] == 0 and totals["duplicates"] == 0
        await s.terminate_open(codes)
