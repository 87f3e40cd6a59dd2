"""Runs the referral worker: `python worker.py` (or `referral worker`)."""

from __future__ import annotations

import asyncio
import signal

import structlog
from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.referral_activities import ReferralActivities
from config.logs import configure_logging
from config.settings import Settings, get_settings
from config.temporal import connect
from workflows.referral import ReferralWorkflow

log = structlog.get_logger("worker")


def build_worker(client: Client, settings: Settings, task_queue: str | None = None, activities: ReferralActivities | None = None) -> Worker:
    acts = activities or ReferralActivities(settings)
    return Worker(
        client,
        task_queue=task_queue or settings.referral_task_queue,
        workflows=[ReferralWorkflow],
        activities=acts.all(),
        # phonenumbers loads its per-country data lazily (with a threading.Lock); re-importing it
        # inside the sandbox when a workflow input is decoded deadlocks a fresh worker process.
        workflow_runner=SandboxedWorkflowRunner(
            restrictions=SandboxRestrictions.default.with_passthrough_modules("phonenumbers")
        ),
    )


async def run_worker(settings: Settings) -> None:
    client = await connect(settings)
    activities = ReferralActivities(settings)
    worker = build_worker(client, settings, activities=activities)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker started", task_queue=settings.referral_task_queue, address=settings.temporal_address)
    async with worker:
        await stop.wait()
    await activities.aclose()
    log.info("worker stopped")


def main() -> None:
    settings = get_settings()
    configure_logging(settings)
    asyncio.run(run_worker(settings))


if __name__ == "__main__":
    main()
