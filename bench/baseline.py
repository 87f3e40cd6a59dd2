"""The bare baseline: a minimal workflow with the referral's shape and none of its substance.

Per run: one activity (the policy), two in parallel (partner matching), then for each of two
services side by side: two background activities (the offer by SMS and email), a wait for the
"offer went out" with a timeout, the reminder and deadline waits cut short by the acceptance
update, then two check-ins (a timer, two background activities, a wait cut short by the
answer update); finally one activity (the summary email). The activities do nothing, there are
no search attributes, no pydantic models, no encryption and the default data converter and
sandbox: what Temporal itself costs for this many activities, timers and updates.

`python -m bench.baseline ADDRESS TASK_QUEUE` runs its worker until SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import activity, workflow

TIMEOUT = timedelta(seconds=30)


@dataclass
class BaselineInput:
    services: int = 2
    reply_within_s: float = 3600.0
    remind_after_s: float = 1800.0
    follow_ups_s: list[float] = field(default_factory=lambda: [1.0, 2.0])
    answer_within_s: float = 1800.0


@dataclass
class BaselineReply:
    service: int
    step: int  # 0: accept, 1..: the answer to check-in <step>


@activity.defn
async def noop(what: str) -> str:
    return what


@workflow.defn
class BaselineWorkflow:
    def __init__(self) -> None:
        self._sent: dict[int, int] = {}  # service -> last step whose SMS went out
        self._answered: dict[int, int] = {}  # service -> last step answered
        self._background: list[asyncio.Task] = []

    @workflow.run
    async def run(self, input: BaselineInput) -> int:
        await workflow.execute_activity(noop, "policy", start_to_close_timeout=TIMEOUT)
        await asyncio.gather(
            *(workflow.execute_activity(noop, f"match {s}", start_to_close_timeout=TIMEOUT) for s in range(input.services))
        )
        await asyncio.gather(*(self._service(s, input) for s in range(input.services)))
        self._send(-1, -1, ["email"])
        while self._background:
            pending, self._background = self._background, []
            await asyncio.gather(*pending)
        return sum(self._answered.values())

    def _send(self, service: int, step: int, channels: list[str]) -> list[asyncio.Task]:
        async def one(channel: str) -> None:
            await workflow.execute_activity(noop, f"{channel} {service}/{step}", start_to_close_timeout=TIMEOUT)
            if channel == "sms":
                self._sent[service] = max(self._sent.get(service, -1), step)

        tasks = [asyncio.create_task(one(c)) for c in channels]
        self._background.extend(tasks)
        return tasks

    async def _wait(self, condition, seconds: float) -> bool:
        if seconds <= 0:
            return condition()
        try:
            await workflow.wait_condition(condition, timeout=seconds)
            return True
        except TimeoutError:
            return condition()

    async def _service(self, s: int, input: BaselineInput) -> None:
        start = workflow.now()
        accepted = lambda: self._answered.get(s, -1) >= 0  # noqa: E731
        offer = self._send(s, 0, ["sms", "email"])
        await self._wait(lambda: accepted() or any(t.done() for t in offer), input.reply_within_s)
        await self._wait(accepted, input.remind_after_s - (workflow.now() - start).total_seconds())
        await self._wait(accepted, input.reply_within_s - (workflow.now() - start).total_seconds())
        accepted_at = workflow.now()
        for step, offset in enumerate(input.follow_ups_s, start=1):
            due = offset - (workflow.now() - accepted_at).total_seconds()
            await self._wait(lambda: False, due)
            self._send(s, step, ["sms", "email"])
            await self._wait(lambda step=step: self._answered.get(s, -1) >= step, input.answer_within_s)

    @workflow.update
    async def reply(self, reply: BaselineReply) -> int:
        # The partner answers the message it received: wait until that SMS went out.
        await workflow.wait_condition(lambda: self._sent.get(reply.service, -1) >= reply.step)
        self._answered[reply.service] = reply.step
        return reply.step


async def _main(address: str, task_queue: str) -> None:
    from temporalio.client import Client
    from temporalio.worker import Worker

    client = await Client.connect(address)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Worker(client, task_queue=task_queue, workflows=[BaselineWorkflow], activities=[noop]):
        print("baseline worker started", flush=True)
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(_main(sys.argv[1], sys.argv[2]))
