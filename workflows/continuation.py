"""Continuing as new: how a referral keeps its history short over months.

A mixin of ReferralWorkflow (workflows/referral.py), deterministic like it. Once a run's history
holds `continue_as_new_after_events` events (or Temporal suggests it), the referral continues as
new at its next *safe point*: every service sits in a safe wait (workflows/service_ladder.py)
whose condition does not hold, no update or signal handler runs, no notice is being sent, no
ledger write is due or in flight, the referral is not closing. It hands its whole state to the
next run (models.CarriedState), which resumes each service in the same wait, for the same moment.

A referral started before this code (no `long-lived-referral` marker) asks
`continue-as-new-2026-11-<n>` at each safe point past the bound: false while replaying what it
did before the deploy (where it did not continue), true (and recorded) the first time for real.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, NoReturn

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows.ledger_writes import LedgerWriter
    from workflows.models import Assessment, CarriedState, ChannelProblem, EscalationPolicy, ReferralInput
    from workflows.notices import Notices
    from workflows.service_ladder import ServiceRun
    from workflows.status_memo import MemoPublisher

CONTINUE_AS_NEW_LATE = "continue-as-new-2026-11"
REFLECTION = "reflection-period"  # the reflection watch's name among the referral's tasks


class Continuation:
    if TYPE_CHECKING:  # provided by ReferralWorkflow
        _input: ReferralInput
        _assessment: Assessment
        _services: dict[str, ServiceRun]
        _tasks: dict[str, asyncio.Task[None]]
        _safe_waits: dict[str, Callable[[], bool]]
        _closing: str | None
        _notices: Notices
        _policy: EscalationPolicy | None
        _channel_problems: list[ChannelProblem]
        _started_at: datetime
        _run_number: int
        _long_lived: bool
        _reflection_ends_at: datetime | None
        _reflection_notice_done: bool
        _memo: MemoPublisher
        _ledger: LedgerWriter

        def _log(self, message: str, **fields: object) -> None: ...
        def _count(self, name: str, description: str, **labels: str) -> None: ...
        def _require_policy(self) -> EscalationPolicy: ...
        def _upsert_search_attributes(self) -> None: ...

    async def _until_resumed(self) -> None:
        """A reply or action that comes with a carried run's very first task waits until every
        service is back in the wait it was carried in, so that the service sees it arrive (an
        offer accepted before its service resumed would look like no offer at all)."""
        resumed = lambda: all(r.started for r in self._services.values())  # noqa: E731
        if self._input.carried is not None and not resumed():
            await workflow.wait_condition(resumed)

    async def _run_services_or_continue_as_new(self) -> None:
        """Until every service has ended, continuing as new at a safe point once the history is long."""
        services = [self._tasks[name] for name in self._services]
        ended = lambda: all(t.done() for t in services)  # noqa: E731
        decisions = 0
        while True:
            await workflow.wait_condition(lambda: ended() or self._time_to_continue())
            if ended():
                return
            if self._long_lived or workflow.patched(f"{CONTINUE_AS_NEW_LATE}-{decisions}"):
                self._continue_as_new()
            # Replaying a referral started before continue-as-new: it did not, here; try again later.
            decisions += 1
            await self._until_history_grows(ended)

    async def _until_history_grows(self, ended: Callable[[], bool]) -> None:
        length = workflow.info().get_current_history_length()
        await workflow.wait_condition(lambda: ended() or workflow.info().get_current_history_length() > length)

    def _time_to_continue(self) -> bool:
        return self._history_long() and self._at_safe_point()

    def _history_long(self) -> bool:
        policy = self._policy
        if policy is None:
            return False
        info = workflow.info()
        return info.is_continue_as_new_suggested() or info.get_current_history_length() >= policy.continue_as_new_after_events

    def _holds_for_continue_as_new(self) -> bool:
        """A safe wait whose time came stays where it is once the run is due to continue as new
        (generation 1 on): the next run waits for the same moment, already past, and acts at
        once. Without it, a referral whose alerts come faster than its sends finish (a loaded
        worker, a policy of seconds) would never reach a safe point and grow without bound."""
        return self._input.generation >= 1 and self._long_lived and self._history_long()

    def _at_safe_point(self) -> bool:
        """Every service (and the reflection watch) sits in a safe wait whose condition does not
        hold (nothing to handle), no update or signal handler is running, no notice is being sent
        (the sends in flight are drained first), no ledger write is due or in flight, and the
        referral is not closing."""
        if self._closing or self._notices.in_flight() or self._ledger.busy() or not workflow.all_handlers_finished():
            return False
        for name, task in self._tasks.items():
            if task.done():
                continue
            condition = self._safe_waits.get(name)
            if condition is None or condition():
                return False
        return True

    def _continue_as_new(self) -> NoReturn:
        """The same referral, a fresh history: its whole state goes to the next run, which
        publishes the same search attributes and details and keeps every pending time."""
        carried = CarriedState(
            run=self._run_number + 1,
            started_at=self._started_at,
            assessment=self._assessment,
            policy=self._require_policy(),
            services=[run.carried() for run in self._services.values()],
            channel_problems=self._channel_problems,
            notices_sent=self._notices.sent,
            reflection_ends_at=self._reflection_ends_at,
            reflection_notice_done=self._reflection_notice_done,
        )
        self._upsert_search_attributes()  # any change still waiting for the memo's settled moment
        self._log("referral continues as new", run=carried.run, events=workflow.info().get_current_history_length())
        self._count("referral_runs", "runs a referral continued into (continue-as-new)")
        workflow.continue_as_new(self._input.model_copy(update={"carried": carried}), memo=self._memo.for_next_run())
