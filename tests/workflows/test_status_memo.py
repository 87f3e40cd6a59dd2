"""The status in the workflow's memo (workflows/status_memo.py) and the assessment passed in the
input: the memo's status is the `status` query's at every step, written at most once per
workflow task, small, lossless, and the assessment the starter computed is kept whatever
`assess` says today.

Time-skipping server, the tests' production policy (tests/fixtures/policy.yaml) and partners.
"""

from __future__ import annotations

import itertools
import json
import uuid
from datetime import UTC, datetime, timedelta

import yaml
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.common import WorkflowIDReusePolicy
from temporalio.worker import Replayer, UnsandboxedWorkflowRunner, Worker

from activities.availability import AvailabilityActivities
from activities.directory import load_directory
from activities.ledger import LedgerActivities
from activities.referral_activities import ReferralActivities
from activities.sms import read_outbox
from starter import referrals
from tests.cases import adult_intake
from tests.conftest import encrypted_converter, running_worker, wait_for
from tests.fixtures import PARTNERS_FILE, POLICY_FILE
from tests.histories import referral_runs
from worker import workflow_runner
from workflows import status_memo
from workflows.intake import REGIONS, SERVICES, Assessment, assess
from workflows.models import (
    Attempt,
    ChannelProblem,
    ChannelReport,
    CoordinatorAction,
    FollowUp,
    MatchRequest,
    PartnerReply,
    ReferralInput,
    ReferralStatus,
    ServiceStatus,
    SkippedPartner,
)
from workflows.referral import ReferralWorkflow

DIRECTORY = load_directory(PARTNERS_FILE)
T0 = datetime(2026, 11, 29, 9, 30, 12, 345678, tzinfo=UTC)
# Temporal's default memo limits (per upsert): a warning in the server's log, then a refusal.
MEMO_WARN_BYTES = 2 * 1024
MEMO_LIMIT_BYTES = 2 * 1024 * 1024


def at(**delta: float) -> datetime:
    return T0 + timedelta(**delta)


async def encoded_bytes(memo: dict) -> int:
    """Bytes of the memo field as the server receives it: converted, then encrypted by the codec."""
    [payload] = await encrypted_converter().encode([memo])
    assert payload.metadata["encoding"] == b"binary/encrypted"
    return payload.ByteSize()


# --- the format, without a server --------------------------------------------------------------


def every_field_set() -> ReferralStatus:
    """A status with every field of every model away from its default (the round trip below
    then covers them all; `test_the_example_sets_every_field` keeps it so)."""
    attempt = Attempt(
        partner_id="cas-assoc", offered_at=at(), remind_at=at(hours=12), deadline=at(hours=24), reminded=True,
        outcome="declined", replied_at=at(hours=13, microseconds=7), reason="no beds tonight", decline_code=1, opens_at=at(hours=-1),
    )  # fmt: skip
    skipped = SkippedPartner(partner_id="dak-assoc", reason="closed", until=at(hours=8, minutes=30), offered_instead="cas-assoc")
    checkin = FollowUp(
        number=1, partner_id="nat-shelter-amal", due_at=at(days=2), sent_at=at(days=2, microseconds=1),
        answer_by=at(days=3), answer="ok", answered_at=at(days=2, hours=2),
    )  # fmt: skip
    shelter = ServiceStatus(
        service="shelter", stage="follow_up", candidates=["cas-assoc", "nat-shelter-amal"], partner_id="nat-shelter-amal",
        accepted_at=at(days=1), assigned_by_coordinator=True, attempts=[attempt], escalation_level=2, escalated_alerts=3,
        follow_ups=[checkin], issues_reported=1, completed_at=at(days=9), last_alert_at=at(hours=30),
        last_alerted=["coordinator", "national_focal_point"], next_alert_at=at(hours=54), outcome="delivered", skipped=[skipped],
        first_escalated_at=at(hours=24), last_escalated_at=at(hours=30, microseconds=3), coordinator_acted_at=at(days=1),
    )  # fmt: skip
    problem = ChannelProblem(at=at(hours=1), partner_id="cas-assoc", channel="email", problem="undelivered", message_sid="SM" + "a" * 32)
    return ReferralStatus(
        code="7K3Q9", workflow_id="referral-7K3Q9", external_ref="INSP-CAS-2026-0412", stage="closed", urgency="urgent",
        region="oriental", started_at=at(seconds=-3),
        assessment=Assessment(urgency="urgent", needs=["shelter"], withheld_needs=["legal"], minor=True, interpreter_needed=True),
        age_group="minor", languages=["ar", "es"], services=[shelter], escalation_level=2, awaiting_partners=[],
        reply_due_by=None, channel_problems=[problem], closed_at=at(days=10), closed_reason="closed",
        reflection_ends_at=at(days=30),
    )  # fmt: skip


def test_the_example_sets_every_field():
    def walk(model) -> None:
        for name, info in type(model).model_fields.items():
            value = getattr(model, name)
            if name in ("awaiting_partners", "reply_due_by"):  # derived: nothing awaited once closed
                continue
            if not info.is_required():
                assert value != info.get_default(call_default_factory=True), f"{type(model).__name__}.{name} is at its default"
            for item in value if isinstance(value, list) else [value]:
                if hasattr(type(item), "model_fields"):
                    walk(item)

    walk(every_field_set())


def test_compact_round_trips_losslessly_through_json():
    status = every_field_set()
    memo = json.loads(json.dumps(status_memo.compact(status, run_started_at=T0)))
    assert status_memo.expand(memo, status.workflow_id, T0, status.external_ref) == status
    # The run's own start time is left out, and put back from describe's.
    same_start = status.model_copy(update={"started_at": T0})
    memo = json.loads(json.dumps(status_memo.compact(same_start, run_started_at=T0)))
    assert "t0" not in memo and "started_at" not in memo
    assert status_memo.expand(memo, status.workflow_id, T0, status.external_ref) == same_start


def test_compact_leaves_out_what_the_reader_derives_and_the_external_ref():
    status = every_field_set()
    text = json.dumps(status_memo.compact(status, run_started_at=T0))
    assert status.external_ref not in text and "7K3Q9" not in text
    assert "closed_reason" not in text and "offered_at" not in text  # short names
    assert '"v": 1' in text


def test_a_memo_of_another_format_is_refused_by_name():
    memo = status_memo.compact(every_field_set(), run_started_at=T0) | {"v": 99}
    try:
        status_memo.expand(memo, "referral-7K3Q9", T0, "X")
    except ValueError as err:
        assert "status memo" in str(err) and "99" in str(err)
    else:
        raise AssertionError("a memo of another format was read")


def test_the_initial_memo_is_the_workflows_first_status():
    intake = adult_intake(needs=["shelter", "legal"])
    assessment = assess(intake)
    memo = status_memo.initial("referral-7K3Q9", intake, assessment)
    status = status_memo.expand(memo, "referral-7K3Q9", T0, intake.external_ref)
    assert status.stage == "identification" and status.escalation_level == 0 and status.awaiting_partners == []
    assert [s.service for s in status.services] == assessment.needs
    assert status.assessment == assessment and status.languages == intake.person.languages
    assert status.started_at == T0 and status.code == "7K3Q9" and status.external_ref == intake.external_ref


def longest_referral() -> ReferralStatus:
    """The largest status the models allow in practice: every service; a ladder twice as long as
    the longest the production directory gives, with 32-character partner ids, every offer
    reminded and declined with the longest reason an SMS carries (1,600 characters); then ten
    partners assigned by hand one after the other, each followed by twelve check-ins; 2,000
    channel problems (an SMS failure or opt-out each, every one with its SID); counts in the
    hundred thousands."""
    production = load_directory(PARTNERS_FILE)  # the tests' copy of the production directory
    longest = max(
        len(production.match(MatchRequest(service=s, region=r, minor=m))) for s in SERVICES for r in REGIONS for m in (False, True)
    )
    ladder = [f"partner-{i:02d}-" + "x" * 21 for i in range(2 * longest)]
    services = []
    for service in SERVICES:
        attempts = [
            Attempt(
                partner_id=p, offered_at=at(hours=i), remind_at=at(hours=i + 0.5), deadline=at(hours=i + 1), reminded=True,
                outcome="declined", replied_at=at(hours=i + 0.75, microseconds=123), reason="r" * 1600,
            )
            for i, p in enumerate(ladder)
        ]
        follow_ups = [
            FollowUp(
                number=n % 12 + 1, partner_id=ladder[n // 12], due_at=at(days=n), sent_at=at(days=n, microseconds=9),
                answer_by=at(days=n + 1), answer="issue", answered_at=at(days=n, hours=3, microseconds=1),
            )
            for n in range(10 * 12)
        ]
        services.append(
            ServiceStatus(
                service=service, stage="follow_up", candidates=ladder, partner_id=ladder[9], accepted_at=at(days=100),
                assigned_by_coordinator=True, attempts=attempts, escalation_level=999, escalated_alerts=100_000,
                follow_ups=follow_ups, issues_reported=100_000,
            )
        )
    problems = [
        ChannelProblem(
            at=at(minutes=30 * i, microseconds=i), partner_id=ladder[i % len(ladder)], channel="sms", problem="undelivered", message_sid=f"SM{i:032x}"
        )
        for i in range(2000)
    ]
    return ReferralStatus(
        code="7K3Q9", workflow_id="referral-7K3Q9", external_ref="R" * 100, stage="follow_up", urgency="emergency",
        region="laayoune-sakia-el-hamra", started_at=T0,
        assessment=Assessment(urgency="emergency", needs=list(SERVICES), withheld_needs=list(SERVICES), minor=True, interpreter_needed=True),
        age_group="unknown", languages=["ff", "wo", "bm", "ha", "ln", "sw"], services=services, escalation_level=999,
        awaiting_partners=[], reply_due_by=None, channel_problems=problems,
    )  # fmt: skip


async def test_the_longest_referral_stays_far_below_the_memo_limit():
    status = longest_referral()
    memo = status_memo.compact(status, run_started_at=T0)
    assert status_memo.expand(json.loads(json.dumps(memo)), status.workflow_id, T0, status.external_ref) == status
    size = await encoded_bytes(memo)
    # Measured: 549 KB (JSON: the channel problems 292 KB, the offers with their reasons 149 KB,
    # the check-ins 136 KB); under the publisher's budget, a quarter of the server's refusal.
    assert size < status_memo.MEMO_BUDGET < MEMO_LIMIT_BYTES, size


async def test_a_typical_referral_stays_under_the_memo_warning():
    """Two services, each accepted at the first offer and followed through three check-ins."""
    t = T0

    def service(name: str, partner: str) -> ServiceStatus:
        offer = Attempt(partner_id=partner, offered_at=t, remind_at=at(hours=12), deadline=at(hours=24), outcome="accepted", replied_at=at(minutes=5))
        checkins = [
            FollowUp(
                number=i, partner_id=partner, due_at=at(days=d), sent_at=at(days=d), answer_by=at(days=d + 1), answer="ok", answered_at=at(days=d, hours=1)
            )
            for i, d in ((1, 1), (2, 7), (3, 30))
        ]
        return ServiceStatus(
            service=name, stage="closed", candidates=[partner, "nat-shelter-amane", "nat-shelter-amal"], partner_id=partner,
            accepted_at=at(minutes=5), attempts=[offer], follow_ups=checkins, completed_at=at(days=30),
        )  # fmt: skip

    status = every_field_set().model_copy(
        update={"services": [service("shelter", "cas-assoc"), service("medical", "cas-clinic")], "channel_problems": [], "started_at": T0}
    )
    size = await encoded_bytes(status_memo.compact(status, run_started_at=T0))
    assert size < MEMO_WARN_BYTES, size


# --- on the time-skipping server -----------------------------------------------------------------


async def memo_and_query(env, code: str) -> tuple[ReferralStatus, ReferralStatus]:
    handle = env.client.get_workflow_handle_for(ReferralWorkflow.run, referrals.workflow_id(code))
    return await referrals.get_status(env.client, code), await handle.query(ReferralWorkflow.status)


async def assert_memo_is_query(env, code: str, reached=lambda status: True) -> ReferralStatus:
    """The memo's status is the query's, once the workflow task that changed it is done (and the
    referral has `reached` what the test waits for)."""

    async def same():
        memo, query = await memo_and_query(env, code)
        return memo if memo == query and reached(memo) else None

    return await wait_for(same)


async def test_the_memo_status_is_the_query_status_at_every_step(time_env, make_settings, smtp):
    settings = make_settings()
    client = time_env.client
    async with running_worker(client, settings) as tq:
        started = await referrals.start_referral(client, adult_intake(needs=["shelter"]), tq)
        code = started.code
        # Right after the start, before the worker has done anything, the starter's status.
        first = await referrals.get_status(client, code)
        assert first.stage == "identification" and [s.service for s in first.services] == ["shelter"]
        status = await assert_memo_is_query(time_env, code, lambda s: s.stage == "awaiting_acceptance")
        assert status.awaiting_partners == ["cas-assoc"]

        await time_env.sleep(timedelta(hours=12, minutes=5))  # the reminder
        assert (await assert_memo_is_query(time_env, code)).services[0].attempts[0].reminded
        # An update's answer comes with the workflow task that wrote its status: read at once.
        await referrals.partner_reply(client, code, PartnerReply(partner_id="cas-assoc", action="decline", reason="full"))
        assert (await referrals.get_status(client, code)).services[0].attempts[0].reason == "full"
        await assert_memo_is_query(time_env, code)
        await client.get_workflow_handle(referrals.workflow_id(code)).signal(
            ReferralWorkflow.report_channel_problem, ChannelReport(partner_id="cas-assoc", problem="undelivered", message_sid="SM" + "1" * 32)
        )
        assert (await assert_memo_is_query(time_env, code)).channel_problems[0].problem == "undelivered"
        partner = (await assert_memo_is_query(time_env, code, lambda s: s.stage == "awaiting_acceptance")).awaiting_partners[0]
        await referrals.partner_reply(client, code, PartnerReply(partner_id=partner, action="accept"))
        assert (await referrals.get_status(client, code)).stage == "follow_up"
        await assert_memo_is_query(time_env, code)
        await time_env.sleep(timedelta(hours=24, minutes=5))  # the first check-in
        await assert_memo_is_query(time_env, code, lambda s: s.services[0].follow_ups[0].sent_at is not None)
        await referrals.partner_reply(client, code, PartnerReply(partner_id=partner, action="done"))
        await client.get_workflow_handle_for(ReferralWorkflow.run, referrals.workflow_id(code)).result()
        closed = await assert_memo_is_query(time_env, code)
        assert closed.stage == "closed" and closed.closed_reason == "completed" and closed.closed_at is not None

        history = await client.get_workflow_handle(referrals.workflow_id(code)).fetch_history()
    # The memo is written only when the status changed, about once per workflow task that changed
    # it (SETTLED_PASSES lets the task's other coroutines run first), never in the first task (the
    # starter's status is the workflow's own), and always encrypted.
    upserts, tasks = [], 0
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_PROPERTIES_MODIFIED:
            assert tasks > 1, "a memo upsert in the first workflow task"
            [payload] = event.workflow_properties_modified_event_attributes.upserted_memo.fields.values()
            assert payload.metadata["encoding"] == b"binary/encrypted"
            upserts.append(payload)
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            tasks += 1
    written = await encrypted_converter().decode(upserts)
    assert all(a != b for a, b in itertools.pairwise(written)), "an upsert that changed nothing"
    assert 5 <= len(written) < tasks - 1
    assert written[-1] == status_memo.compact(closed, closed.started_at)
    markers = [e.marker_recorded_event_attributes for e in history.events if e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED]
    # A referral of the current generation runs the memo from its start, asking no patch.
    assert not any(m.marker_name == "core_patch" and status_memo.PATCH.encode() in m.details["patch-data"].payloads[0].data for m in markers)
    # The history with the memo upserts replays without nondeterminism, also under another
    # workflow id (as tests/replay replays the committed histories).
    replayer = Replayer(workflows=[ReferralWorkflow], data_converter=encrypted_converter(), workflow_runner=workflow_runner())
    for wid in (history.workflow_id, "replay-elsewhere"):
        result = await replayer.replay_workflow(WorkflowHistory(wid, history.events), raise_on_replay_failure=False)
        assert result.replay_failure is None, (wid, result.replay_failure)


async def test_a_referral_keeps_the_assessment_it_was_started_with(time_env, make_settings, smtp):
    """`assess` says normal urgency and shelter for this intake; the referral was started when
    the rules said emergency and legal: it goes on with those, partners and deadlines included."""
    client = time_env.client
    intake = adult_intake(needs=["shelter"], immediate_danger=False, urgency=None)
    today = assess(intake)
    assert today.urgency == "normal" and today.needs == ["shelter"]
    then = Assessment(urgency="emergency", needs=["legal"], withheld_needs=["shelter"], minor=False, interpreter_needed=True)
    code = referrals.referral_code(intake.external_ref)
    wid = referrals.workflow_id(code)
    async with running_worker(client, make_settings()) as tq:
        await client.start_workflow(
            ReferralWorkflow.run, ReferralInput(code=code, intake=intake, assessment=then), id=wid, task_queue=tq,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE, memo={status_memo.MEMO_KEY: status_memo.initial(wid, intake, then)},
        )  # fmt: skip

        async def offered():
            status = await referrals.get_status(client, code)
            return status if status.services[0].attempts else None

        status = await wait_for(offered)
        assert status.assessment == then and status.urgency == "emergency"
        assert [s.service for s in status.services] == ["legal"]
        attempt = status.services[0].attempts[0]
        assert attempt.deadline - attempt.offered_at == timedelta(hours=1)  # the emergency ladder, not 24 h
        _, query = await memo_and_query(time_env, code)
        assert query.assessment == then
        await referrals.coordinator_action(client, code, CoordinatorAction(action="cancel"))
        await client.get_workflow_handle(wid).result()


async def test_a_referral_started_without_an_assessment_applies_todays_rules(time_env, make_settings, smtp):
    """Referrals started before the assessment was passed (the input's field absent)."""
    client = time_env.client
    intake = adult_intake(needs=["medical"], immediate_danger=True)
    code = referrals.referral_code(intake.external_ref)
    async with running_worker(client, make_settings()) as tq:
        handle = await client.start_workflow(ReferralWorkflow.run, ReferralInput(code=code, intake=intake), id=referrals.workflow_id(code), task_queue=tq)
        status = await wait_for(lambda: referrals.get_status(client, code))  # published by the workflow itself
        assert status.assessment == assess(intake) and status.urgency == "emergency"
        await referrals.coordinator_action(client, code, CoordinatorAction(action="cancel"))
        await handle.result()


async def test_a_status_too_large_for_the_memo_leaves_it_and_is_read_by_query(time_env, make_settings, smtp, monkeypatch):
    """Past MEMO_BUDGET the status leaves the memo (the server would refuse it at 2 MB, and fail
    every workflow task after) and readers ask the query. The budget is lowered here, so the
    workflow runs outside the sandbox, which would re-import status_memo."""
    monkeypatch.setattr(status_memo, "MEMO_BUDGET", 250)
    client = time_env.client
    settings = make_settings()
    task_queue = f"referrals-test-{uuid.uuid4()}"
    worker = Worker(
        client, task_queue=task_queue, workflows=[ReferralWorkflow],
        activities=[*ReferralActivities(settings).all(), *LedgerActivities(settings).all(), *AvailabilityActivities(settings).all()],
        workflow_runner=UnsandboxedWorkflowRunner(), max_cached_workflows=0,
    )  # fmt: skip
    async with worker:
        started = await referrals.start_referral(client, adult_intake(needs=["shelter"]), task_queue)
        code = started.code
        handle = client.get_workflow_handle_for(ReferralWorkflow.run, referrals.workflow_id(code))
        await wait_for(lambda: any(m["to"] == DIRECTORY.partner("cas-assoc").sms for m in read_outbox(settings.outbox_dir)))
        described = await handle.describe()
        assert (await described.memo()).get(status_memo.MEMO_KEY) is None  # removed (the test server keeps a null)
        await assert_memo_is_query(time_env, code)  # the query's answer, both ways
        history = await handle.fetch_history()
        upserts = [e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_PROPERTIES_MODIFIED]
        assert len(upserts) == 1  # the removal, once
        await referrals.partner_reply(client, code, PartnerReply(partner_id="cas-assoc", action="accept"))
        await referrals.coordinator_action(client, code, CoordinatorAction(action="cancel"))
        await handle.result()
        history = await handle.fetch_history()
        assert len([e for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_PROPERTIES_MODIFIED]) == 1


async def test_each_run_after_continue_as_new_starts_with_the_status_it_carries(time_env, make_settings, smtp, tmp_path):
    """Temporal would start the next run with the memo the referral was started with (the
    starter's first status): a describe between two runs, or with every worker down right after
    one, would read the referral back at identification. Each run's first event holds the
    status the run before handed over instead."""
    data = yaml.safe_load(POLICY_FILE.read_text(encoding="utf-8"))
    data["continue_as_new_after_events"] = 30
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(data), encoding="utf-8")
    settings = make_settings(referral_policy_file=policy)
    async with running_worker(time_env.client, settings) as tq:
        intake = adult_intake(needs=["shelter", "legal"])
        started = await referrals.start_referral(time_env.client, intake, tq)
        await time_env.sleep(timedelta(days=6))  # three deadlines a service, then alerts: several runs
        runs = await referral_runs(time_env.client, referrals.workflow_id(started.code))
        # The same intake sent again after the referral continued: the same referral, not a second one.
        again = await referrals.start_referral(time_env.client, intake, tq)
        assert (again.code, again.created) == (started.code, False)
    assert len(runs) >= 3
    for history in runs[1:]:
        first = history.events[0].workflow_execution_started_event_attributes
        [carried_input] = await time_env.client.data_converter.decode(first.input.payloads[:1], [ReferralInput])
        carried = carried_input.carried
        assert carried is not None
        [memo] = await time_env.client.data_converter.decode([first.memo.fields[status_memo.MEMO_KEY]])
        run_start = history.events[0].event_time.ToDatetime(UTC)
        status = status_memo.expand(memo, history.workflow_id, run_start, carried_input.intake.external_ref)
        assert status.started_at == carried.started_at != run_start
        assert status.services == [c.status for c in carried.services]
        assert any(s.attempts for s in status.services)  # not the starter's first status
