"""Replay the committed ErasureWorkflow history against today's ErasureWorkflow: a change that
would break a running erasure (a step added, removed or reordered) fails here, in plain
`make test`, as test_replay.py does for the referral.

History: tests/replay/histories/erasure/erasure.json, recorded on a dev server by
`make record-histories` (tests/replay/record_erasure.py). In a directory of its own: test_replay.py
replays every `histories/*.json` against ReferralWorkflow. See the README, "Changing the workflow".
"""

from __future__ import annotations

from temporalio import workflow

# The altered workflows below are defined in this module, so the sandbox re-imports it for each
# replay of them: everything it imports is taken from outside, as altered.py does.
with workflow.unsafe.imports_passed_through():
    import json
    import re
    from datetime import timedelta
    from pathlib import Path

    import pytest
    from temporalio.api.enums.v1 import EventType
    from temporalio.client import WorkflowHistory
    from temporalio.worker import Replayer

    from activities.erasure import ErasureActivities
    from config.settings import Settings
    from tests.cases import NOTES as EXAMPLE_NOTES
    from tests.cases import PHONE as EXAMPLE_PHONE
    from tests.cases import PSEUDONYM as EXAMPLE_PSEUDONYM
    from tests.replay import payload_texts, replay_data_converter
    from tests.replay.record import NOTES, PHONE, PSEUDONYM
    from tests.replay.record_erasure import BY, ERASURE_HISTORIES, MAX_BYTES, REASON
    from worker import workflow_runner
    from workflows.erasure import (
        CLOSE_REFERRAL,
        DELETE_RUNS,
        DESTROY_DATA_KEY,
        MARK_LEDGER,
        RECORD_DONE,
        RECORD_REQUEST,
        ErasureDone,
        ErasureRequest,
        ErasureStep,
        ErasureWorkflow,
    )

ERASURE = ERASURE_HISTORIES / "erasure.json"
STEPS = [RECORD_REQUEST, CLOSE_REFERRAL, DESTROY_DATA_KEY, DELETE_RUNS, MARK_LEDGER, RECORD_DONE]


def files() -> list[Path]:
    return sorted(ERASURE_HISTORIES.glob("*.json"))


def load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(f"replay-{path.stem}", json.loads(path.read_text(encoding="utf-8")))


def replayer(*workflows: type) -> Replayer:
    # As test_replay.py's: the worker's sandbox, the converter without the encryption codec.
    return Replayer(
        workflows=list(workflows or [ErasureWorkflow]),
        data_converter=replay_data_converter(),
        workflow_runner=workflow_runner(),
    )


def scheduled(history: WorkflowHistory) -> list[str]:
    return [
        e.activity_task_scheduled_event_attributes.activity_type.name for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]


def test_the_erasure_has_a_committed_history():
    assert ERASURE.exists(), "run `python -m tests.replay.record_erasure` (or `make record-histories`) and commit the file"
    assert ERASURE in files()


def test_the_recording_is_the_whole_erasure():
    """Every step, each once, in order, then completed: an erasure that closed an open referral."""
    history = load(ERASURE)
    started = history.events[0].workflow_execution_started_event_attributes
    assert started.workflow_type.name == "ErasureWorkflow"
    assert scheduled(history) == STEPS
    # ... which are every activity the worker registers for it.
    assert sorted(STEPS) == sorted(a.__temporal_activity_definition.name for a in ErasureActivities(Settings(_env_file=None)).all())  # type: ignore[call-arg]
    assert history.events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED
    result = history.events[-1].workflow_execution_completed_event_attributes.result.payloads[0].data
    done = ErasureDone.model_validate_json(result)
    assert done.was_open and done.runs_deleted >= 1 and done.ledger_marked


@pytest.mark.parametrize("path", files(), ids=lambda p: p.stem)
async def test_erasure_history_replays_without_nondeterminism(path: Path):
    result = await replayer().replay_workflow(load(path))
    assert result.replay_failure is None


@pytest.mark.parametrize("path", files(), ids=lambda p: p.stem)
def test_erasure_history_is_small_and_holds_no_personal_data(path: Path):
    raw = path.read_bytes()
    assert len(raw) < MAX_BYTES, f"{path.name}: {len(raw)} bytes"
    joined = "\n".join(payload_texts(json.loads(raw)))
    # The request's code, the fictional coordinator and reason, times: never the intake.
    assert BY in joined and REASON in joined
    for secret in (PSEUDONYM, PHONE, PHONE[4:], NOTES[:20], EXAMPLE_PSEUDONYM, EXAMPLE_PHONE, EXAMPLE_PHONE[4:], EXAMPLE_NOTES[:20], "REPLAY-"):
        assert secret not in joined, secret
    assert re.findall(r"\+\d{8,15}", joined) == []  # no phone number at all


# --- the replay test can fail -------------------------------------------------------------------
# Deliberately altered copies of ErasureWorkflow, each registered under its name so the Replayer
# runs it against the recording. Never registered with a worker.


@workflow.defn(name="ErasureWorkflow")
class DestroyBeforeClose(ErasureWorkflow):
    """Steps 2 and 3 swapped: the data key destroyed before the referral is closed."""

    @workflow.run
    async def run(self, request: ErasureRequest) -> ErasureDone:
        step = ErasureStep(request=request, at=workflow.now())
        ref = f"R-{request.code}"
        await self._do(RECORD_REQUEST, step, bool, f"{ref}: record the erasure request")
        await self._do(DESTROY_DATA_KEY, step, bool, f"{ref}: destroy its data key")
        was_open = await self._do(CLOSE_REFERRAL, step, bool, f"{ref}: close it (consent withdrawn)", timedelta(minutes=10), heartbeat=True)
        runs = await self._do(DELETE_RUNS, step, int, f"{ref}: delete its runs from Temporal", timedelta(minutes=5), heartbeat=True)
        marked = await self._do(MARK_LEDGER, step, bool, f"{ref}: mark the ledger row erased")
        done = ErasureDone(code=request.code, erased_at=workflow.now(), was_open=was_open, runs_deleted=runs, ledger_marked=marked)
        await self._do(RECORD_DONE, done, bool, f"{ref}: record the erasure as done")
        return done


@workflow.defn(name="ErasureWorkflow")
class PauseFirst(ErasureWorkflow):
    """A pause before the first step: a timer where the history has an activity."""

    @workflow.run
    async def run(self, request: ErasureRequest) -> ErasureDone:
        await workflow.sleep(timedelta(seconds=1))
        return await super().run(request)


@pytest.mark.parametrize("variant", [DestroyBeforeClose, PauseFirst], ids=lambda c: c.__name__)
async def test_a_breaking_change_to_the_erasure_fails_replay(variant: type):
    history = load(ERASURE)
    # The unaltered workflow replays it ...
    assert (await replayer(ErasureWorkflow).replay_workflow(history)).replay_failure is None
    # ... the altered one is caught.
    with pytest.raises(workflow.NondeterminismError, match="Nondeterminism error"):
        await replayer(variant).replay_workflow(history)
