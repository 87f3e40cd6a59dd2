"""Log context and metrics on the activity side.

- `LogContextInterceptor` (installed by worker.build_worker) binds, for the whole of each
  activity, structlog contextvars `referral` (the code), `workflow_id`, `run_id`, `activity` and
  `attempt`, so every line an activity (or the SMS/email code it calls) writes carries them.
- `count_sms_failure(problem)`: the `sms_failures` counter, through the activity's metric meter
  (exported by the worker's Prometheus endpoint). Labels never hold personal data.

The workflow's own metrics (referrals_started, offers_sent, time_to_acceptance_seconds,
escalations) are recorded in workflows/referral.py through `workflow.metric_meter()`, which is
replay-safe.
"""

from __future__ import annotations

from typing import Any

import structlog
from temporalio import activity
from temporalio.worker import ActivityInboundInterceptor, ExecuteActivityInput, Interceptor

from infra.logs import referral_code


class _ActivityLogContext(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        info = activity.info()
        context = {
            "referral": referral_code(info.workflow_id),
            "workflow_id": info.workflow_id,
            "run_id": info.workflow_run_id,
            "activity": info.activity_type,
            "attempt": info.attempt,
        }
        with structlog.contextvars.bound_contextvars(**{k: v for k, v in context.items() if v is not None}):
            return await super().execute_activity(input)


class LogContextInterceptor(Interceptor):
    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityLogContext(next)


def count_sms_failure(problem: str) -> None:
    """One SMS that could not be handed to the SMS backend, by kind (InvalidPhoneNumber,
    OptedOut, NoSmsNumber, or the retryable error's class name)."""
    activity.metric_meter().create_counter(
        "sms_failures", "SMS sends that failed, by problem"
    ).add(1, {"problem": problem})
