"""The bench's status-read phase (`--status-reads N`, issue 13): a referral's status read with
every worker stopped, for a referral with a long history.

One referral (two services) in a region whose partners never answer, under
bench/policy.escalate.yaml: its offers time out within seconds and it stays escalated, alerting
its coordinator every half second, until its history holds `--status-history` events (a worker
with the sticky cache on writes it quickly; the policy lets one run grow to 1,500 events, the
largest bound a policy may set); on the way, its history is fetched when it holds as many events
as the production policy lets a run hold (`continue_as_new_after_events` of config/policy.yaml),
and both are replayed cold, as a worker with the cache off does at every workflow task (the
worker's own sandbox, the codec); then the coordinator assigns a partner to each
service, and the referral waits for its first check-in, an hour away. With a worker as deployed
(cache off), the `status` query that readers used before (each a replay of the whole history);
then, with every worker stopped, N reads through `starter.referrals.get_status` (the describe
behind `referral status`, the API, the referral page and the partner page) and N
`GET /api/referrals/{code}` through the web app, each of which must give the query's status.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

STATUS_REGION = "marrakech-safi"
POLICY = "policy.escalate.yaml"
QUERIES = 10
REPLAYS = 5


async def cold_replay_seconds(client, history) -> float:
    """The median time to replay `history` from nothing (no cache): what a worker with the cache
    off spends on each workflow task of a run that long."""
    import statistics

    from temporalio.worker import Replayer

    from worker import workflow_runner
    from workflows.referral import ReferralWorkflow

    replayer = Replayer(workflows=[ReferralWorkflow], data_converter=client.data_converter, workflow_runner=workflow_runner())
    times = []
    for _ in range(REPLAYS):
        t0 = time.perf_counter()
        result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        times.append(time.perf_counter() - t0)
        if result.replay_failure is not None:
            raise RuntimeError(f"bench: the status referral's history did not replay: {result.replay_failure}")
    return statistics.median(times)


@dataclass
class StatusReads:
    events: int  # history length when the reads were timed
    describe: list[float]  # seconds per get_status, worker stopped
    api: list[float]  # seconds per GET /api/referrals/{code}, worker stopped
    query: list[float]  # seconds per `status` query, worker up (cache off)
    as_queried: int  # reads that gave the query's status
    replays: list[tuple[int, float]]  # (events, seconds: median of REPLAYS cold replays) per fetched history


async def status_reads(stack, client, n: int, history: int) -> StatusReads:
    import asyncio

    import httpx

    from activities.directory import load_policy
    from bench.run import say, start_many, start_worker, wait_idle
    from config.settings import CONFIG_DIR
    from starter import referrals
    from workflows.models import CoordinatorAction
    from workflows.referral import ReferralWorkflow

    start_worker(stack, "worker-status-history", POLICY, WORKER_MAX_CACHED_REFERRALS="10")
    [code], _ = await start_many(client, STATUS_REGION, "status", 1)
    handle = client.get_workflow_handle_for(ReferralWorkflow.run, referrals.workflow_id(code))

    async def length() -> int:
        return (await handle.describe()).raw_description.workflow_execution_info.history_length

    production_bound = load_policy(CONFIG_DIR / "policy.yaml", "normal").continue_as_new_after_events
    fetched = []
    deadline = time.monotonic() + 600
    while (events := await length()) < history:
        if time.monotonic() > deadline:
            say(f"bench: the status referral's history reached {events} events of {history} in 600 s")
            break
        if not fetched and events >= production_bound:
            fetched.append(await handle.fetch_history())
        await asyncio.sleep(1.0)
    fetched.append(await handle.fetch_history())
    for service in (await referrals.get_status(client, code)).services:
        action = CoordinatorAction(action="assign", service=service.service, partner_id=service.candidates[0], by="bench")
        await referrals.coordinator_action(client, code, action)
    stack.stop("worker-status-history")

    deployed = start_worker(stack, "worker-status-query", POLICY)  # cache off, as deployed
    await wait_idle(deployed, limit=120)
    query: list[float] = []
    for _ in range(QUERIES):
        t0 = time.perf_counter()
        expected = await handle.query(ReferralWorkflow.status)
        query.append(time.perf_counter() - t0)
    stack.stop("worker-status-query")
    events = await length()

    describe: list[float] = []
    api: list[float] = []
    same = 0
    token = stack.env["REFERRAL_API_TOKENS"].split(",")[0].strip()
    async with httpx.AsyncClient(base_url=stack.public_base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30.0) as http:
        for _ in range(n):
            t0 = time.perf_counter()
            status = await referrals.get_status(client, code)
            describe.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            response = await http.get(f"/api/referrals/{code}")
            api.append(time.perf_counter() - t0)
            same += status == expected and response.status_code == 200 and response.json() == expected.model_dump(mode="json")
    await handle.terminate("bench over")
    replays = [(len(h.events), await cold_replay_seconds(client, h)) for h in fetched]
    return StatusReads(events, describe, api, query, same, replays)


def rows(sr: StatusReads) -> list[tuple[str, str, str, str]]:
    from bench.run import percentiles, verdict

    def ms(values: list[float]) -> tuple[float, float]:
        p50, _, p99 = (x * 1000 for x in percentiles(values))
        return p50, p99

    d50, d99 = ms(sr.describe)
    a50, a99 = ms(sr.api)
    q50, q99 = ms(sr.query)
    return [
        (
            f"status read by describe, workers stopped, p50/p99 ({len(sr.describe)})",
            f"{d50:.1f} / {d99:.1f} ms (history of {sr.events} events; {sr.as_queried}/{len(sr.describe)} as queried)",
            "p50 <= 20 ms",
            verdict(d50 <= 20 and sr.as_queried == len(sr.describe)),
        ),
        (f"GET /api/referrals/{{code}}, workers stopped, p50/p99 ({len(sr.api)})", f"{a50:.1f} / {a99:.1f} ms", "", ""),
        (f"the `status` query, worker up (cache off), p50/p99 ({len(sr.query)})", f"{q50:.1f} / {q99:.1f} ms (replays the history)", "", ""),
        *(
            (f"cold replay of a run of {events} events (median of {REPLAYS})", f"{seconds:.2f} s", "<= 1 s", verdict(seconds <= 1.0))
            for events, seconds in sr.replays
        ),
    ]
