"""A referral's status in its workflow's memo: read with a describe call, with no worker and no replay.

The workflow publishes `compact(status)` under the memo key `status` whenever it changed (one
memo upsert, so one history event, per workflow task that changed it); the starter writes the
first one at start (`initial`), so a describe right after the start answers; readers turn it
back into the `status` query's model with `expand`. The memo is a payload like any other, so the
codec encrypts it, and it holds what the status holds, nothing about the person, except the
`external_ref`: like workflow ids and search attributes, the memo never shows the referring
agency's case number, even decoded (by the Temporal UI's codec server); the reader takes it from
the run's input, as the query does (starter/referrals.py).

Compact, for Temporal's memo limits (a server warning past 2 KB, a refusal at 2 MB) and for the
history (every upsert stores the whole memo): left out are what the reader derives (the code
and workflow id from the workflow id; the stage, escalation level, awaited partners and earliest
reply deadline by projection.py's rules; the start time from describe's, when it is the run's)
and every field at its default; field names are shortened (`_SHORT`; a field not listed keeps
its name, so a field added to the status is published without a change here); times are whole
microseconds since the epoch (lossless). Deterministic: the workflow sandbox loads it, and
`MemoPublisher` runs inside the workflow.
"""

from __future__ import annotations

import asyncio
import types
import typing
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel
from temporalio import workflow

from workflows import generations, projection
from workflows.intake import Assessment, Intake
from workflows.models import ReferralStatus, ServiceStatus

MEMO_KEY = "status"
# The change that brought the memo upserts (referrals started before replay without).
PATCH = generations.STATUS_MEMO
FORMAT = 1
# A status this large (the longest referral the tests build is about half of it) is taken out of the
# memo rather than refused by the server (at 2 MB), which would fail every workflow task after:
# its readers then ask the `status` query.
MEMO_BUDGET = 1024 * 1024
SETTLED_PASSES = 3

# Derived by the reader (expand), never stored.
DERIVED = ("code", "workflow_id", "stage", "escalation_level", "awaiting_partners", "reply_due_by")
APART = ("external_ref",)  # read from the run's input

_SHORT = {
    # ReferralStatus
    "external_ref": "ref", "urgency": "u", "region": "r", "started_at": "t0", "assessment": "as",
    "age_group": "ag", "languages": "l", "services": "S", "channel_problems": "cp",
    "closed_at": "ca", "closed_reason": "cr", "reflection_ends_at": "rf",
    # Assessment
    "needs": "n", "withheld_needs": "wn", "minor": "mi", "interpreter_needed": "in",
    # ServiceStatus
    "service": "s", "candidates": "c", "partner_id": "p", "accepted_at": "ac",
    "assigned_by_coordinator": "bc", "attempts": "A", "escalated_alerts": "al", "follow_ups": "F",
    "issues_reported": "is", "completed_at": "co", "last_alert_at": "la", "last_alerted": "lw", "next_alert_at": "na",
    "first_escalated_at": "fe", "last_escalated_at": "le", "coordinator_acted_at": "xa",
    # Attempt
    "offered_at": "o", "remind_at": "rm", "deadline": "d", "reminded": "re", "outcome": "x",
    "replied_at": "ra", "reason": "why", "decline_code": "dc",
    # FollowUp
    "number": "k", "due_at": "du", "sent_at": "se", "answer_by": "ab", "answer": "an", "answered_at": "aa",
    # ChannelProblem
    "at": "at", "channel": "ch", "problem": "pb", "message_sid": "sid",
    # Shared by several models, one short name each
    "stage": "st", "escalation_level": "lv",
}  # fmt: skip
_LONG = {short: name for name, short in _SHORT.items()}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def compact(status: ReferralStatus, run_started_at: datetime) -> dict[str, Any]:
    """What the memo holds for this status (plain JSON: dicts, lists, strings, numbers)."""
    out: dict[str, Any] = {"v": FORMAT}
    out.update(_pack(status, exclude=DERIVED + APART + (("started_at",) if status.started_at == run_started_at else ())))
    return out


def expand(memo: dict[str, Any], workflow_id: str, run_started_at: datetime, external_ref: str) -> ReferralStatus:
    """The `status` query's model from the memo, the workflow id, the run's start time and the
    external_ref (from the run's input)."""
    if memo.get("v") != FORMAT:
        raise ValueError(f"status memo: format {memo.get('v')!r} is not {FORMAT}")
    fields = _unpack(memo, ReferralStatus)
    services: list[ServiceStatus] = fields.get("services", [])
    closed = fields.get("closed_at") is not None
    awaiting, due = projection.awaited(services)
    fields.setdefault("started_at", run_started_at)
    return ReferralStatus(
        code=workflow_id.removeprefix("referral-"),
        workflow_id=workflow_id,
        stage=projection.referral_stage(services, closed=closed),
        escalation_level=projection.escalation_level(services),
        awaiting_partners=awaiting,
        reply_due_by=due,
        external_ref=external_ref,
        **fields,
    )


def initial(workflow_id: str, intake: Intake, assessment: Assessment) -> dict[str, Any]:
    """The memo at start: what the workflow's own first status is, before any partner is matched."""
    placeholder = _EPOCH  # the run's start time, unknown before the start and left out anyway
    status = ReferralStatus(
        code=workflow_id.removeprefix("referral-"),
        workflow_id=workflow_id,
        external_ref=intake.external_ref,
        stage="identification",
        urgency=assessment.urgency,
        region=intake.region,
        started_at=placeholder,
        assessment=assessment,
        age_group=intake.person.age_group,
        languages=intake.person.languages,
        services=[ServiceStatus(service=s) for s in assessment.needs],
        escalation_level=0,
        awaiting_partners=[],
        reply_due_by=None,
    )
    return compact(status, placeholder)


class MemoPublisher:
    """Inside the workflow: keeps the memo's status equal to what `status()` (the `status` query)
    returns, whatever changed it. A task of the workflow waits for the status to change, lets the
    workflow task's other coroutines run (SETTLED_PASSES, a heuristic: a longer chain of silent
    steps costs a second upsert in that task, never a wrong status), then upserts it if it
    changed: as a rule one upsert, one history event, per workflow task that changed the status.
    Referrals started before the memo held the status replay without it (`workflow.patched`)."""

    def __init__(
        self,
        status: Callable[[], ReferralStatus],
        generation: int,
        alongside: tuple[Callable[[], bool], Callable[[], None]] | None = None,
    ) -> None:
        self._status = status
        # Another upsert made with this one, at the same settled moment (the referral's search
        # attributes, generation 1 on): whether it is due, and how to make it.
        self._alongside = alongside
        self._published: str | None = None  # the status last published, as JSON (a snapshot)
        self._task: asyncio.Task[None] | None = None
        self._too_large = False
        if generations.runs(generation, PATCH):
            # The starter's first status, or the one the run before handed over. Compared in the
            # memo's own form: expanding it in the sandbox would meet the sandbox's datetime class.
            memo = workflow.memo_value(MEMO_KEY, None)
            live = self._status()
            if memo is not None and memo == compact(live, workflow.info().workflow_start_time):
                self._published = live.model_dump_json()
            self._task = asyncio.create_task(self._run())

    def _now(self) -> str:
        return self._status().model_dump_json()

    async def _run(self) -> None:
        while not self._too_large:
            await workflow.wait_condition(lambda: self._now() != self._published or self._alongside_due())
            # A change often wakes other coroutines of the workflow, over several passes of its
            # event loop (an accepted offer: the offer's wait ends, its next wait is satisfied at
            # once, then follow-up starts): let them run first, until the status has stayed the
            # same for SETTLED_PASSES passes.
            seen, settled = self._now(), 0
            while settled < SETTLED_PASSES:
                await workflow.wait_condition(lambda: True)  # the next pass
                now = self._now()
                settled, seen = (settled + 1, seen) if now == seen else (0, now)
            self.flush()

    def for_next_run(self) -> dict[str, Any] | None:
        """The memo the next run starts with when the referral continues as new. Temporal would
        give it the memo the referral was started with (the starter's first status), not the one
        published since, so a describe between the two runs, or while no worker runs, would read a
        referral back at identification. So the current status goes along, with its start time
        always written out (the next run's own start is not the referral's). None for a referral
        started before the memo held the status (Temporal's default then).
        A memo given to continue-as-new replaces the whole memo, so every other key the run has
        goes along too: the starter's intake digest, which recognises the same intake sent
        again, must outlive the first run."""
        if self._task is None:
            return None
        others = {key: value for key, value in workflow.memo().items() if key != MEMO_KEY}
        if self._too_large:
            return {**others, MEMO_KEY: None}  # kept out, as in this run: readers ask the query
        memo = compact(self._status(), _EPOCH)  # no run starts at the epoch: t0 is kept
        if workflow.payload_converter().to_payload(memo).ByteSize() > MEMO_BUDGET:
            return {**others, MEMO_KEY: None}
        return {**others, MEMO_KEY: memo}

    def carries_alongside(self) -> bool:
        """Whether the upsert made alongside may wait for this publisher (it runs, and goes on running)."""
        return self._alongside is not None and self._task is not None and not self._too_large

    def _alongside_due(self) -> bool:
        return self._alongside is not None and self._alongside[0]()

    def flush(self) -> None:
        """Upsert the status now if it changed (the workflow's last step: nothing waits after it),
        and what goes alongside it."""
        if self._alongside is not None:
            self._alongside[1]()
        if self._task is None or self._too_large:
            return
        status = self._status()
        now = status.model_dump_json()
        if now == self._published:
            return
        memo: dict[str, Any] | None = compact(status, workflow.info().workflow_start_time)
        if workflow.payload_converter().to_payload(memo).ByteSize() > MEMO_BUDGET:
            memo, self._too_large = None, True  # None removes the key; a status only grows
        workflow.upsert_memo({MEMO_KEY: memo})
        self._published = now


# --- the encoding ----------------------------------------------------------------------------


_NO_DEFAULT = object()
_layouts: dict[type[BaseModel], list[tuple[str, str, Any]]] = {}


def _layout(model: type[BaseModel]) -> list[tuple[str, str, Any]]:
    """Each field's name, short name and default (built once per model: the workflow packs its
    status at every step, and on every replay)."""
    layout = _layouts.get(model)
    if layout is None:
        layout = _layouts[model] = [
            (name, _SHORT.get(name, name), info.get_default(call_default_factory=True) if not info.is_required() else _NO_DEFAULT)
            for name, info in model.model_fields.items()
        ]
    return layout


def _pack(model: BaseModel, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, short, default in _layout(type(model)):
        value = getattr(model, name)
        if value is default or value == default or name in exclude:
            continue
        out[short] = _encode(value)
    return out


def _encode(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return _pack(value)
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, datetime):
        return (value - _EPOCH) // _MICROSECOND
    return value


def _unpack(data: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    fields = model.model_fields
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = _LONG.get(key, key)
        if name in fields:
            out[name] = _decode(value, fields[name].annotation)
    return out


def _decode(value: Any, annotation: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _decode(value, options[0]) if len(options) == 1 else value
    if origin is list:
        (item,) = typing.get_args(annotation)
        return [_decode(v, item) for v in value]
    if annotation is datetime:
        return _EPOCH + value * _MICROSECOND
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation(**_unpack(value, annotation))
    return value
