"""worker.py: how the worker is built."""

from __future__ import annotations

import uuid

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client
from temporalio.worker import Worker

from config.settings import Settings
from tests.clock_workflow import ReadsTheClock
from tests.conftest import wait_for
from worker import build_worker, workflow_runner


async def test_worker_keeps_no_referral_cached_by_default(time_env, make_settings):
    """The sticky cache stays off unless configured: a cached referral advanced by a query
    during a crash can record a history no worker replays (tests/replay/test_known_issues.py)."""
    assert Settings.model_fields["worker_max_cached_referrals"].default == 0
    client: Client = time_env.client
    worker = build_worker(client, make_settings(), task_queue="cache-default")
    assert worker.config()["max_cached_workflows"] == 0
    worker = build_worker(client, make_settings(worker_max_cached_referrals=500), task_queue="cache-set")
    assert worker.config()["max_cached_workflows"] == 500


async def test_worker_takes_a_few_workflow_tasks_at_once(time_env, make_settings):
    """Each task replays a history on one Python thread: a small number of slots keeps every task
    well inside its 10 s timeout (100, the SDK default, let a burst time tasks out in the bench)."""
    worker = build_worker(time_env.client, make_settings(), task_queue="slots-default")
    assert worker.config()["max_concurrent_workflow_tasks"] == 8
    worker = build_worker(time_env.client, make_settings(worker_max_concurrent_referral_tasks=3), task_queue="slots-set")
    assert worker.config()["max_concurrent_workflow_tasks"] == 3


async def test_the_sandbox_still_refuses_a_clock_read(dev_env):
    """The worker's sandbox refuses a non-deterministic call in workflow code: the workflow task
    fails instead of recording a wall-clock value. (Passing all modules through the sandbox,
    ~55 ms faster per new instance, lets this clock read through, so it is not done.) On the dev
    server: a workflow task failing in a loop on the shared time-skipping server stalls the
    time-skipping tests that follow."""
    client: Client = dev_env.client
    task_queue = f"sandbox-{uuid.uuid4()}"
    async with Worker(client, task_queue=task_queue, workflows=[ReadsTheClock], workflow_runner=workflow_runner()):
        handle = await client.start_workflow(ReadsTheClock.run, id=f"clock-{uuid.uuid4()}", task_queue=task_queue)
        try:

            async def first_task_failure():
                history = await handle.fetch_history()
                failed = (e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED)
                return next(failed, None)

            failed = await wait_for(first_task_failure, timeout=30)
            # The failure's text (message and stack) names the sandbox's refusal.
            assert "RestrictedWorkflowAccessError" in str(failed.workflow_task_failed_event_attributes.failure)
        finally:
            await handle.terminate("test done")
