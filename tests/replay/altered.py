"""Deliberately altered copies of ReferralWorkflow, for test_replay.py's proof that replay
catches a breaking change. Each is registered under the name ReferralWorkflow, so the Replayer
runs it against ReferralWorkflow's histories; each would strand every running referral if it
were deployed without `workflow.patched`. Never registered with a worker.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.referral_activities import ReferralActivities
    from workflows.models import Notice, ReferralInput, ReferralSummary
    from workflows.notices import Notices
    from workflows.referral import ReferralWorkflow


@workflow.defn(name="ReferralWorkflow")
class TimerFirst(ReferralWorkflow):
    """A pause added before the first activity: a timer where history has an activity."""

    @workflow.run
    async def run(self, input: ReferralInput) -> ReferralSummary:
        await workflow.sleep(timedelta(seconds=1))
        return await super().run(input)


@workflow.defn(name="ReferralWorkflow")
class ExtraActivity(ReferralWorkflow):
    """The policy loaded twice: an activity history does not have."""

    @workflow.run
    async def run(self, input: ReferralInput) -> ReferralSummary:
        await workflow.execute_activity_method(
            ReferralActivities.load_policy, "normal", start_to_close_timeout=timedelta(seconds=30)
        )
        return await super().run(input)


class _EmailFirstNotices(Notices):
    async def _deliver_any(self, notice: Notice, channels: list[str]) -> bool:
        return await super()._deliver_any(notice, list(reversed(channels)))


@workflow.defn(name="ReferralWorkflow")
class EmailBeforeSms(ReferralWorkflow):
    """An innocent-looking refactor: each notice sent by email first, then SMS."""

    @workflow.init
    def __init__(self, input: ReferralInput) -> None:
        super().__init__(input)
        self._notices.__class__ = _EmailFirstNotices  # the same notices, sending in the other order

    @workflow.run
    async def run(self, input: ReferralInput) -> ReferralSummary:
        return await super().run(input)
