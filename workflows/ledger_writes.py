"""Inside the workflow: keeping the referral's ledger record (workflows/ledger_entry.py) in the
ledger database, by the `record_referral` activity (activities/ledger.py), in the background.

When: with the referral's notices. A notice goes out at every step that matters (the first offers
after identification, an escalation, an assignment, a check-in, the closing summary); when one
does and the record's milestones (`ledger_entry.milestones`: a service accepted, escalated or
closed, the referral closed) changed since the last write, or this run has not written yet, the
record goes too. So: at the start, at closure, at every escalation with no partner left and every
assignment, an acceptance with the next notice (at the latest the first check-in), and once per
run. Nothing waits for a write but the referral's end and its continue-as-new: a slow or
unreachable database delays no offer.

What the workflow does next never depends on how a write went, only on the notices and the
milestones (so a replay that sees a write's completion at another point of a workflow task does
the same): writes do not wait for each other, and each is dated after the one before
(`updated_at`), so the ledger keeps the newest whatever order they land in. A write that fails
for good (the database down for a day, a record it refuses) is logged; the next milestone's write,
or `referral ledger rebuild`, restores the record from Temporal.

Referrals started before this code (no `ledger-2026-12` marker in a run) write nothing in that
run: their next run does, and the rebuild covers them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from datetime import datetime, timedelta
from typing import Any

from pydantic import ValidationError
from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

from workflows import generations

with workflow.unsafe.imports_passed_through():
    from ledger.record import LedgerRecord

PATCH = generations.LEDGER  # the change that brought the writes
# The activity, by name: the workflow imports nothing of the ledger but its record (activities/ledger.py).
RECORD_REFERRAL = "record_referral"
# A record the database refuses (too long, not a code): retrying cannot fix it.
NON_RETRYABLE = ["InvalidLedgerRecord"]
LEDGER_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=5),
    non_retryable_error_types=NON_RETRYABLE,
)
WRITE_TIMEOUT = timedelta(seconds=30)
# An unreachable or unmigrated database is retried this long; then the write is given up (the
# next milestone, or a rebuild, writes the record). Bounds how long a write can hold back the
# referral's continue-as-new or its end.
LEDGER_GIVE_UP = timedelta(hours=24)
# Passes of the workflow's event loop let by before the record is built, so that what else the
# workflow task changes (the other services' offers, the closure) is in it.
SETTLE_PASSES = 3


def compact(record: LedgerRecord) -> dict[str, Any]:
    """The record as the activity gets it: its JSON without the fields at their defaults (half the
    size, in every write's history event); `LedgerRecord.model_validate` gives it back whole."""
    return record.model_dump(mode="json", exclude_defaults=True)


class LedgerWriter:
    """Writes the record alongside the referral's notices when its milestones changed. `busy()`
    while a write is due or in flight: not a safe point to continue as new; `drain()` before the
    referral ends."""

    def __init__(
        self,
        record: Callable[[datetime], LedgerRecord],
        milestones: Callable[[], Hashable],
        notices_sent: Callable[[], int],
        code: str,
        generation: int,
    ) -> None:
        self._record = record  # the record as of the given time
        self._milestones = milestones
        self._notices_sent = notices_sent
        self._code = code
        self._seen = notices_sent()  # the notices looked at so far
        self._looking = False  # a notice went out: the workflow task settles before the record is built
        self._scheduled: object = None  # the milestones of this run's last write (none yet)
        self._last_dated: datetime | None = None
        self._writes: list[asyncio.Task[None]] = []
        self._enabled = generations.runs(generation, PATCH)
        self._task = asyncio.create_task(self._run()) if self._enabled else None

    def busy(self) -> bool:
        """A write is due (a notice not looked at yet) or in flight."""
        if not self._enabled:
            return False
        return self._looking or self._notices_sent() != self._seen or any(not w.done() for w in self._writes)

    async def drain(self) -> None:
        """Until every write due is done (or given up)."""
        await workflow.wait_condition(lambda: not self.busy())

    async def _run(self) -> None:
        while True:
            await workflow.wait_condition(lambda: self._notices_sent() != self._seen)
            self._looking = True
            for _ in range(SETTLE_PASSES):
                await workflow.wait_condition(lambda: True)  # the next pass
            self._seen = self._notices_sent()
            self._looking = False
            milestones = self._milestones()
            if milestones != self._scheduled:
                self._scheduled = milestones
                self._write()

    def _write(self) -> None:
        """Schedule the write now (the command goes in this workflow task) and watch it in the background."""
        now = workflow.now()
        dated = now if self._last_dated is None or now > self._last_dated else self._last_dated + timedelta(microseconds=1)
        try:
            record = self._record(dated)
        except ValidationError as err:
            # A bug to fix (a value that is not a code); never a referral stuck on it.
            fields = sorted({".".join(map(str, e["loc"])) for e in err.errors(include_input=False)})
            workflow.logger.error("ledger record not built", extra={"referral": self._code, "fields": fields})
            return
        self._last_dated = dated
        handle = workflow.start_activity(
            RECORD_REFERRAL,
            compact(record),
            start_to_close_timeout=WRITE_TIMEOUT,
            schedule_to_close_timeout=LEDGER_GIVE_UP,
            retry_policy=LEDGER_RETRY,
            summary=f"ledger: record R-{self._code}" + (f" ({record.closure_reason})" if record.closure_reason else ""),
        )
        self._writes = [w for w in self._writes if not w.done()] + [asyncio.create_task(self._watch(handle))]

    async def _watch(self, handle: workflow.ActivityHandle) -> None:
        try:
            await handle
        except ActivityError as err:
            cause = err.cause
            kind = cause.type if isinstance(cause, ApplicationError) and cause.type else type(cause).__name__
            workflow.logger.warning("ledger record not written", extra={"referral": self._code, "problem": kind})
            workflow.metric_meter().create_counter("ledger_writes_failed", "ledger writes given up, by problem").add(1, {"problem": kind})
