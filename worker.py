"""Runs the referral worker: `python worker.py` (or `referral worker`)."""

from __future__ import annotations

import asyncio
import signal

import structlog
from pydantic import ValidationError
from temporalio.client import Client
from temporalio.worker import Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from activities.availability import AvailabilityActivities
from activities.erasure import ErasureActivities
from activities.ledger import LedgerActivities
from activities.observability import LogContextInterceptor
from activities.referral_activities import ReferralActivities
from config.settings import Settings, get_settings
from infra.database import engine_for
from infra.logs import configure_logging
from infra.temporal import EncryptionNotConfigured, MetricsUnavailable, connect, metrics_runtime, payload_codec
from ledger.migrate import check_ready
from ledger.store import LedgerNotReady
from workflows.capacity_notice import CapacityNoticeWorkflow
from workflows.erasure import ErasureWorkflow
from workflows.referral import ReferralWorkflow

log = structlog.get_logger("worker")


def build_worker(
    client: Client,
    settings: Settings,
    task_queue: str | None = None,
    activities: ReferralActivities | None = None,
    ledger: LedgerActivities | None = None,
    availability: AvailabilityActivities | None = None,
) -> Worker:
    acts = activities or ReferralActivities(settings)
    ledger_acts = ledger or LedgerActivities(settings)  # the ledger database of LEDGER_DATABASE_URL
    # Matching with partners' capacity and hours, and the coordinators' capacity notices: called by name.
    available = availability or AvailabilityActivities(settings)
    return Worker(
        client,
        task_queue=task_queue or settings.referral_task_queue,
        workflows=[ReferralWorkflow, CapacityNoticeWorkflow, ErasureWorkflow],
        activities=[*acts.all(), *ledger_acts.all(), *available.all(), *ErasureActivities(settings).all()],
        interceptors=[LogContextInterceptor()],
        workflow_runner=workflow_runner(),
        max_cached_workflows=settings.worker_max_cached_referrals,
        max_concurrent_workflow_tasks=settings.worker_max_concurrent_referral_tasks,
    )


def workflow_runner() -> SandboxedWorkflowRunner:
    """The sandbox every worker runs ReferralWorkflow in; the replay tests use the same one."""
    # phonenumbers loads its per-country data lazily (with a threading.Lock); re-importing it
    # inside the sandbox when a workflow input is decoded deadlocks a fresh worker process.
    return SandboxedWorkflowRunner(
        restrictions=SandboxRestrictions.default.with_passthrough_modules("phonenumbers")
    )


async def run_worker(settings: Settings) -> None:
    # The worker's client lives on a runtime that serves Prometheus metrics (METRICS_PORT).
    client = await connect(settings, runtime=metrics_runtime(settings))
    activities = ReferralActivities(settings)
    ledger = LedgerActivities(settings)
    await _check_ledger(ledger)
    worker = build_worker(client, settings, activities=activities, ledger=ledger)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "worker started",
        task_queue=settings.referral_task_queue,
        address=settings.temporal_address,
        encryption=_encryption_note(client),
        metrics=f"http://{settings.metrics_host}:{settings.metrics_port}/metrics" if settings.metrics_port else "off",
    )
    async with worker:
        await stop.wait()
    await activities.aclose()
    log.info("worker stopped")


async def _check_ledger(ledger: LedgerActivities) -> None:
    """Say so at start when the ledger cannot take records yet. Not a reason to refuse work: no
    offer waits for the ledger, and its writes are retried until it can (`referral ledger upgrade`)."""
    settings = ledger.settings
    keys_there = settings.data_keys_url == settings.ledger_url and payload_codec(settings) is not None
    try:
        await asyncio.to_thread(ledger.store().check)
    except LedgerNotReady as err:
        if keys_there:  # the referrals' data keys live there too
            log.error("ledger not ready: referrals cannot encrypt their data, nor the ledger be written, until it is", reason=str(err))
        else:
            log.warning("ledger not ready: its writes are retried until it is", reason=str(err))
    if settings.data_keys_url != settings.ledger_url and payload_codec(settings) is not None:
        try:
            await asyncio.to_thread(check_ready, engine_for(settings.data_keys_url))
        except LedgerNotReady as err:
            log.error("data keys not ready: referrals cannot encrypt their data until they are", reason=str(err))


def _encryption_note(client: Client) -> str:
    codec = client.data_converter.payload_codec
    key_id = getattr(codec, "encrypt_key_id", None)
    return f"on, encrypting with key id {key_id}" if key_id else "OFF (REFERRAL_ALLOW_PLAINTEXT=true)"


def main() -> None:
    try:
        settings = get_settings()
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in err.errors())
        raise SystemExit(f"worker: settings invalid: {problems}") from None
    configure_logging(settings)
    try:
        asyncio.run(run_worker(settings))
    except (EncryptionNotConfigured, MetricsUnavailable) as err:
        log.error("worker refused to start", reason=str(err))
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
