"""Replay every committed history against today's ReferralWorkflow: a change that would break a
running referral (a command added, removed or reordered) fails here, in plain `make test`.

Histories: tests/replay/histories/*.json, one per lifecycle path, recorded by
`make record-histories` (tests/replay/record.py). See the README, "Changing the workflow".
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from tests.cases import NOTES as EXAMPLE_NOTES
from tests.cases import PHONE as EXAMPLE_PHONE
from tests.cases import PSEUDONYM as EXAMPLE_PSEUDONYM
from tests.replay import HISTORIES, altered, payload_texts, replay_data_converter
from tests.replay.record import MAX_BYTES, PATHS, PHONE, PSEUDONYM, path_of_file
from worker import workflow_runner
from workflows import generations, ledger_writes, status_memo
from workflows.referral import CAPACITY, LONG_LIVED, ReferralWorkflow
from workflows.service_ladder import RECHECK

FILES = sorted(HISTORIES.glob("*.json"))


def load(path: Path) -> WorkflowHistory:
    data = json.loads(path.read_text(encoding="utf-8"))
    return WorkflowHistory.from_json(f"replay-{path.stem}", data)


def replayer(*workflows: type) -> Replayer:
    # Exactly what the worker runs: the same sandbox (phonenumbers passed through), the same
    # payload converter (without the encryption codec: the files are committed decoded).
    return Replayer(
        workflows=list(workflows or [ReferralWorkflow]),
        data_converter=replay_data_converter(),
        workflow_runner=workflow_runner(),
    )


def test_every_lifecycle_path_has_a_committed_history():
    assert {path_of_file(p.stem) for p in FILES} == {p.name for p in PATHS}, "run `make record-histories` and commit the files"


def test_a_referral_that_continued_as_new_has_every_run_committed():
    """Its first run ends by continuing as new, the runs after start from the state it carried;
    so for every recorded version (`x.json`, `x.run-2.json`, ...; `x.v2.json`, `x.v2.run-2.json`, ...)."""
    versions: dict[str, list[Path]] = {}
    for path in FILES:
        if path_of_file(path.stem) == "escalated-continued-as-new":
            version = re.sub(r"\.run-\d+$", "", path.stem)
            versions.setdefault(version, []).append(path)
    assert "escalated-continued-as-new" in versions, "today's recording"
    for runs in versions.values():
        runs.sort(key=lambda p: int(m.group(1)) if (m := re.search(r"\.run-(\d+)$", p.stem)) else 1)
        assert len(runs) >= 3
        for path in runs:
            history = load(path)
            started = history.events[0].workflow_execution_started_event_attributes
            assert bool(started.continued_execution_run_id) == (path is not runs[0]), path.name
            if path is not runs[-1]:
                assert history.events[-1].HasField("workflow_execution_continued_as_new_event_attributes"), path.name


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
async def test_history_replays_without_nondeterminism(path: Path):
    result = await replayer().replay_workflow(load(path))
    assert result.replay_failure is None


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_history_is_small_and_holds_only_fictional_data(path: Path):
    raw = path.read_bytes()
    assert len(raw) < MAX_BYTES, f"{path.name}: {len(raw)} bytes"
    texts = payload_texts(json.loads(raw))
    joined = "\n".join(texts)
    assert PSEUDONYM in joined  # the fictional intake of record.py, and nothing else
    for secret in (EXAMPLE_PSEUDONYM, EXAMPLE_PHONE, EXAMPLE_PHONE[4:], EXAMPLE_NOTES[:20]):
        assert secret not in joined
    # Every phone number in a payload is in the fictional +21265012345x range.
    for number in re.findall(r"\+\d{8,15}", joined):
        assert number.startswith("+21265012345"), number
    assert PHONE in joined


# --- the replay test can fail -------------------------------------------------------------------
# tests/replay/altered.py holds deliberately altered copies of the workflow, each registered under
# the name ReferralWorkflow (a module of their own: the sandbox re-imports a workflow's module, and
# this one reads files at import).


@pytest.mark.parametrize("variant", [altered.TimerFirst, altered.ExtraActivity, altered.EmailBeforeSms], ids=lambda c: c.__name__)
async def test_a_breaking_change_fails_replay(variant: type):
    history = load(HISTORIES / "decline-then-accept.json")
    # The unaltered workflow replays it ...
    assert (await replayer(ReferralWorkflow).replay_workflow(history)).replay_failure is None
    # ... the altered one is caught.
    with pytest.raises(workflow.NondeterminismError):
        await replayer(variant).replay_workflow(history)


MOVES_ON = {"deadline-escalation", "decline-then-accept", "escalated-continued-as-new", "ladder-exhausted-assign", "two-services", "unreachable-partner"}


def _patches_of(history: WorkflowHistory) -> set[str]:
    return {
        json.loads(e.marker_recorded_event_attributes.details["patch-data"].payloads[0].data)["id"]
        for e in history.events
        if e.marker_recorded_event_attributes.marker_name == "core_patch"
    }


def test_todays_recordings_are_of_the_current_generation():
    """`<path>.json` is recorded by today's code (older recordings keep a `.v<n>` suffix and go on
    replaying): a referral of the current generation (workflows/generations.py), which runs every
    change of it from its start without asking, so no patch marker; the `.v6` recordings, of
    generation 0, asked each change as it came."""
    included = set().union(*generations.INCLUDED.values())
    for name in {p.name for p in PATHS}:
        history = load(HISTORIES / f"{name}.json")
        started = history.events[0].workflow_execution_started_event_attributes
        assert json.loads(started.input.payloads[0].data)["generation"] == generations.CURRENT, name
        assert _patches_of(history) & included == set(), name
        before = _patches_of(load(HISTORIES / f"{name}.v6.json"))
        assert {LONG_LIVED, status_memo.PATCH, ledger_writes.PATCH, CAPACITY} <= before, (name, before)
        # Asked only when a service moves on to another partner, which these paths do.
        assert (RECHECK in before) == (name in MOVES_ON), (name, before)
