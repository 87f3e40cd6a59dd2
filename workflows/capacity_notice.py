"""CapacityNoticeWorkflow: the coordinators hear when a partner goes full and when it reopens.

One short workflow per change of a partner's capacity (`capacity-<partner>-<change id>-<time>`, started
by starter/capacity.py once the change is recorded): it emails the coordinators of the regions
the partner covers about the services that flipped; for a FULL with a time limit (`FULL shelter
3d`) it sleeps until then, has the lapse recorded (unless a later FULL or OPEN decided first)
and tells them those services reopened by themselves. Retries and a durable timer come from
Temporal, as for a referral's notices.

Deterministic: the activities (activities/availability.py) are called by name, so nothing of
the database is imported here.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from workflows.models import RECORD_CAPACITY_LAPSE, TELL_CAPACITY_CHANGE, CapacityNotice
    from workflows.projection import when_utc

RETRY = RetryPolicy(initial_interval=timedelta(seconds=2), backoff_coefficient=2.0, maximum_interval=timedelta(minutes=5))
GIVE_UP = timedelta(hours=24)  # an email not sent in a day is stale news


def workflow_id(notice: CapacityNotice) -> str:
    """One per change: the same for a redelivered SMS (the same stored change), another for a
    change of a database started afresh (its ids start again)."""
    return f"capacity-{notice.partner_id}-{notice.change_id}-{notice.at:%Y%m%dT%H%M%S%f}"


@workflow.defn
class CapacityNoticeWorkflow:
    @workflow.run
    async def run(self, notice: CapacityNotice) -> list[str]:
        """The services that lapsed by themselves (none for an OPEN, a FULL without an end, or
        a FULL another change replaced)."""
        if notice.flipped:
            await self._tell(notice)
        if notice.state != "full" or notice.until is None:
            return []
        wait = notice.until - workflow.now()
        if wait > timedelta(0):
            await workflow.sleep(wait, summary=f"{notice.partner_id}: the FULL lapses at {when_utc(notice.until)}")
        lapsed: list[str] = await workflow.execute_activity(
            RECORD_CAPACITY_LAPSE,
            notice,
            result_type=list[str],
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RETRY,
            summary=f"record the end of {notice.partner_id}'s FULL",
        )
        if lapsed:
            reopened = notice.model_copy(update={"state": "open", "channel": "expiry", "flipped": lapsed, "at": notice.until, "until": None})
            await self._tell(reopened)
        return lapsed

    async def _tell(self, notice: CapacityNotice) -> None:
        try:
            await self._send(notice)
        except ActivityError:
            # Given up after a day: the lapse still has to be recorded at its time.
            workflow.logger.warning("capacity notice not sent", extra={"partner": notice.partner_id, "state": notice.state})

    async def _send(self, notice: CapacityNotice) -> None:
        await workflow.execute_activity(
            TELL_CAPACITY_CHANGE,
            notice,
            result_type=int,
            start_to_close_timeout=timedelta(seconds=45),
            schedule_to_close_timeout=GIVE_UP,
            retry_policy=RETRY,
            summary=f"email the coordinators: {notice.partner_id} {notice.state} ({', '.join(notice.flipped)})",
        )
