"""The worker SIGKILLed at random moments while referrals run, then restarted: every referral
reaches its expected end, none is started twice, and every message the history says was sent
is in the outbox or the mail sink (duplicates, the same activity key twice, are counted; so is
a notice sent again under another number).

`test_worker_sigkill_mid_lifecycle` (5 referrals, a policy in seconds) and
`test_worker_sigkill_across_continue_as_new` (5 referrals continuing as new every 40 events)
run with `make test`; `test_worker_sigkill_50_referrals` (50 referrals, the demo policy, 5+
kills) and `test_worker_sigkill_across_continue_as_new_30_referrals` with `make test-faults`.
"""

from __future__ import annotations

import asyncio
import random
import signal
from pathlib import Path

import pytest

from starter import referrals
from tests.conftest import wait_for
from tests.faults.conftest import (
    DevServer,
    Driver,
    Plan,
    Stack,
    check_ends,
    message_report,
    per_referral_table,
    plan_intakes,
    say,
    stack,
    summarise,
    write_policy,
)
from tests.fixtures import DEMO_POLICY_FILE
from tests.histories import referral_runs

FAST_POLICY = """
urgencies:
  emergency: {reply_within: 6s, remind_after: 3s, checkin_answer_within: 10s, escalated_alert_every: 4s}
  urgent: {reply_within: 6s, remind_after: 3s, checkin_answer_within: 10s, escalated_alert_every: 4s}
  normal: {reply_within: 6s, remind_after: 3s, checkin_answer_within: 10s, escalated_alert_every: 4s}
follow_ups: [3s, 6s, 9s]
"""


# Continuing as new past 40 events (a referral's lifecycle writes 100 to 200), with alerts that
# back off and climb and follow-up through a 30-second reflection period. Replies have 20 s: with
# 6 or 10 s, kills every few seconds (and the driver's status queries waiting out the restarts)
# now and then let every offer of a referral time out before the driver's decline gets through.
CONTINUING_POLICY = """
urgencies:
  emergency: &ladder
    {reply_within: 20s, remind_after: 10s, checkin_answer_within: 10s,
     escalated_alert_every: 2s, escalated_alert_backoff: 1.5, escalated_alert_max: 8s, focal_point_after_alerts: 2}
  urgent: *ladder
  normal: *ladder
follow_ups: [3s, 6s, 9s]
follow_up_every: 5s
reflection_period: {adults: 30s, minors: 30s}
reflection_end_notice: 5s
continue_as_new_after_events: 40
"""


async def kill_worker_repeatedly(s: Stack, rnd: random.Random, stop: asyncio.Event, every: tuple[float, float], log: list[str], max_kills: int) -> int:
    """SIGKILL the worker a random `every` seconds after it came up (seeded), restart it after a
    short pause; at most `max_kills` times."""
    kills = 0
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    while not stop.is_set() and kills < max_kills:
        await s.worker.wait_log("worker started")
        try:
            await asyncio.wait_for(stop.wait(), rnd.uniform(*every))
            break
        except TimeoutError:
            pass
        await s.worker.kill(signal.SIGKILL)
        kills += 1
        pause = rnd.uniform(0.2, 2.0)
        log.append(f"t={loop.time() - t0:6.1f}s kill #{kills}, restart after {pause:.1f}s")
        await asyncio.sleep(pause)
        s.worker.start()
    return kills


async def run_with_kills(s: Stack, n: int, seed: int, every: tuple[float, float], timeout: float, prefix: str, max_kills: int = 1000) -> dict:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    planned = plan_intakes(n, seed, prefix)
    plans: list[Plan] = []
    for kind, needs, intake in planned:
        started = await referrals.start_referral(s.client, intake, s.task_queue)
        assert started.created
        plans.append(Plan(code=started.code, kind=kind, needs=needs, external_ref=intake.external_ref))
    assert len({p.code for p in plans}) == n

    stop = asyncio.Event()
    kill_log: list[str] = []
    killer = asyncio.create_task(kill_worker_repeatedly(s, random.Random(seed), stop, every, kill_log, max_kills))
    driver = Driver(s, plans)
    drive = asyncio.create_task(driver.run(timeout))

    # The same intakes again, while the worker may be down: the same referrals, none new.
    await asyncio.sleep(every[0] + 1)
    for (_kind, _needs, intake), plan in zip(planned, plans, strict=True):
        again = await referrals.start_referral(s.client, intake, s.task_queue)
        assert (again.code, again.created) == (plan.code, False)

    try:
        await drive
    finally:
        stop.set()
        kills = await killer
        if not s.worker.running:
            s.worker.start()
    elapsed = loop.time() - t0

    for line in kill_log:
        say(line)
    query = f"{referrals.LATEST_RUNS} AND TaskQueue = '{s.task_queue}'"

    async def all_listed():
        rows = await referrals.list_referrals(s.client, query)
        return rows if len(rows) >= n else None

    rows = await wait_for(all_listed, timeout=30)
    workflows = len(rows)
    assert sorted(r.code for r in rows) == sorted(p.code for p in plans), "one workflow per external_ref"

    wrong = check_ends(plans)
    for p in plans:
        await s.result(p.code, timeout=60)  # closed, and its last messages sent

    report = await message_report(s, [p.code for p in plans])
    totals = summarise(report)
    runs, largest = await run_counts(s, [p.code for p in plans])
    say(per_referral_table(report, plans))
    figures = {
        "referrals": n,
        "workflows": workflows,
        "worker_kills": kills,
        "lost_referrals": len(wrong),
        "sends": totals["sends"],
        "messages": totals["messages"],
        "duplicated_sms": totals["sms_duplicates"],
        "duplicated_emails": totals["email_duplicates"],
        "lost_messages": totals["lost"],
        "sms_repeated": totals["sms_repeated"],
        "runs": runs,
        "largest_run_events": largest,
        "replies_applied": sum(p.replies for p in plans),
        "replies_rejected": sum(sum(p.rejections.values()) for p in plans),
        "assigned_by_hand": sum(len(p.assigned) for p in plans),
        "driver_retries": sum(driver.errors.values()),
        "seconds": round(elapsed, 1),
    }
    say("FIGURES " + " ".join(f"{k}={v}" for k, v in figures.items()))
    kinds = ", ".join(f"{k}={sum(1 for p in plans if p.kind == k)}" for k in sorted({p.kind for p in plans}))
    rejections = sum((p.rejections for p in plans), start=__import__("collections").Counter())
    closes_confirmed = {k: round(v, 1) for k, v in driver.close_confirmed.items()}
    say(f"kinds: {kinds}; rejections: {rejections}; driver errors: {dict(driver.errors)}; closes confirmed after (s): {closes_confirmed}")
    assert not wrong, "\n".join(wrong)
    assert totals["lost"] == 0, "messages the history says were sent never arrived"
    # The outbox dedupes by the notice's key, so a retried send never writes a second line; and
    # no notice is scheduled again under another number, in the same run or the next.
    assert totals["sms_duplicates"] == 0
    assert totals["sms_repeated"] == 0 and totals["email_repeated"] == 0
    return figures


async def run_counts(s: Stack, codes: list[str]) -> tuple[int, int]:
    """(runs of all the referrals, events of the largest run)."""
    runs = [r for code in codes for r in await referral_runs(s.client, referrals.workflow_id(code))]
    return len(runs), max(len(r.events) for r in runs)


async def test_worker_sigkill_mid_lifecycle(fault_server: DevServer, tmp_path: Path):
    policy = write_policy(tmp_path / "policy.yaml", FAST_POLICY)
    async with stack(fault_server, tmp_path, policy) as s:
        figures = await run_with_kills(s, n=5, seed=7, every=(2.0, 5.0), timeout=150, prefix="FAULT-QUICK", max_kills=2)
    assert figures["worker_kills"] >= 2


@pytest.mark.faults_full
async def test_worker_sigkill_50_referrals(tmp_path: Path):
    """On its own dev server and db file, with the demo policy `make run` uses."""
    server = DevServer(tmp_path / "temporal")
    await server.start()
    try:
        async with stack(server, tmp_path, DEMO_POLICY_FILE) as s:
            figures = await run_with_kills(s, n=50, seed=2026, every=(3.0, 8.0), timeout=900, prefix="FAULT-KILL")
        assert figures["worker_kills"] >= 5
    finally:
        await server.stop()


async def test_worker_sigkill_across_continue_as_new(fault_server: DevServer, tmp_path: Path):
    policy = write_policy(tmp_path / "policy.yaml", CONTINUING_POLICY)
    async with stack(fault_server, tmp_path, policy) as s:
        figures = await run_with_kills(s, n=5, seed=11, every=(2.0, 5.0), timeout=180, prefix="FAULT-CAN", max_kills=3)
    assert figures["worker_kills"] >= 2
    assert figures["runs"] >= 5 + 5, "the referrals did not continue as new"


@pytest.mark.faults_full
async def test_worker_sigkill_across_continue_as_new_30_referrals(tmp_path: Path):
    server = DevServer(tmp_path / "temporal")
    await server.start()
    try:
        policy = write_policy(tmp_path / "policy.yaml", CONTINUING_POLICY)
        async with stack(server, tmp_path, policy) as s:
            figures = await run_with_kills(s, n=30, seed=2027, every=(2.0, 6.0), timeout=900, prefix="FAULT-CAN-FULL")
        assert figures["worker_kills"] >= 5
        assert figures["runs"] >= 30 * 2
    finally:
        await server.stop()
