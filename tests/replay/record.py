"""Record one workflow history per lifecycle path: `python -m tests.replay.record [NAME ...]`
(or `make record-histories`).

Each path runs against a fresh Temporal time-skipping test server with the tests' copy of the
production policy and directory (tests/fixtures/), the real activities, a local SMTP sink and
the outbox SMS backend, then writes `tests/replay/histories/<name>.json`
(`WorkflowHistory.to_json()`). Payloads are written
decoded (no encryption codec, see `tests.replay.replay_data_converter`), and the only intake is
the fictional one below: no real person's data ever goes into these files.

A path whose referral continues as new writes one file per run: `<name>.json` for the first,
`<name>.run-<n>.json` for the others (each run's history replays on its own).

Paths (Casablanca-Settat, adult, French, normal urgency: reply within 24 h, reminder at 12 h,
check-ins at 24 h, 7 d, 30 d, each answerable within 24 h, alerts 4 h after the empty ladder then
twice as long each time up to 24 h, the focal point alerted after 3; reflection period 30 d;
histories recorded before alerts backed off repeat them every 4 h):
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from aiosmtpd.controller import Controller
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.api.workflowservice.v1 import DescribeWorkflowExecutionRequest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.referral_activities import ReferralActivities
from config.settings import Settings
from ledger import migrate
from starter import referrals
from tests.conftest import BIN, SmtpSink, _Handler, free_port, wait_for
from tests.fixtures import PARTNERS_FILE, POLICY_FILE
from tests.histories import referral_runs
from tests.replay import HISTORIES, payload_texts, replay_data_converter
from worker import build_worker
from workflows import search_attributes as sa
from workflows.intake import Intake
from workflows.models import ChannelReport, CoordinatorAction, PartnerReply
from workflows.referral import ReferralWorkflow

# Obviously fictional: a made-up pseudonym, a number in the fictional +21265012345x range.
PSEUDONYM = "Test Person"
PHONE = "+212650123459"
NOTES = "Fictional test intake for the replay histories; no real person."
# A recorded history's size budget (decoded, indented JSON): the longest path, ladder-exhausted-assign,
# is ~190 KB before the ledger writes and ~206 KB with them (four writes of ~2.3 KB each).
MAX_BYTES = 256 * 1024


def fictional_intake(name: str, needs: list[str]) -> Intake:
    return Intake.model_validate(
        {
            "external_ref": f"REPLAY-{name}",
            "identified_by": {"agency": "labour_inspectorate", "officer_id": "TEST-0001", "region": "casablanca-settat"},
            "identified_at": "2026-01-05T09:30:00+01:00",
            "sector": "agriculture",
            "indicators": ["withholding_of_wages", "debt_bondage"],
            "immediate_danger": False,
            "person": {
                "pseudonym": PSEUDONYM,
                "age_group": "adult",
                "sex": "unknown",
                "nationality": "CI",
                "languages": ["fr"],
                "contact_phone": PHONE,
            },
            "needs": needs,
            "consent": {"given": True, "recorded_by": "TEST-0001", "recorded_at": "2026-01-05T09:40:00+01:00"},
            "urgency": None,
            "notes": NOTES,
        }
    )


@dataclass
class Run:
    """One path being recorded: the server, the worker's task queue, the referral."""

    env: WorkflowEnvironment
    settings: Settings
    task_queue: str
    smtp: SmtpSink
    code: str = ""

    @property
    def client(self) -> Client:
        return self.env.client

    async def start(self, name: str, needs: list[str]) -> None:
        started = await referrals.start_referral(self.client, fictional_intake(name, needs), self.task_queue)
        self.code = started.code

    async def status(self):
        return await referrals.get_status(self.client, self.code)

    async def service(self, service: str):
        return next(s for s in (await self.status()).services if s.service == service)

    async def offered(self, service: str, nth: int = 1) -> str:
        """The partner offered `service` for the `nth` time, once the offer went out."""

        async def current():
            s = await self.service(service)
            if s.stage == "awaiting_acceptance" and len(s.attempts) == nth:
                return s.attempts[-1].partner_id
            return None

        return await wait_for(current)

    async def reply(self, partner_id: str, action: str, **extra: Any) -> None:
        await referrals.partner_reply(self.client, self.code, PartnerReply(partner_id=partner_id, action=action, **extra))

    async def settle(self) -> None:
        """Wait until no send is in flight. Closing cancels sends still running, and the
        time-skipping server fails the workflow task (ACTIVITY_UNKNOWN) when one of them
        completed at the same moment: a race of the test server, not of the workflow."""

        request = DescribeWorkflowExecutionRequest(
            namespace=self.client.namespace, execution=WorkflowExecution(workflow_id=referrals.workflow_id(self.code))
        )

        async def idle():
            # The raw call: the SDK's describe() trips on the test server's search attributes.
            described = await self.client.workflow_service.describe_workflow_execution(request)
            return not described.pending_activities

        await wait_for(idle)

    async def act(self, action: str, **extra: Any) -> None:
        await self.settle()
        await referrals.coordinator_action(self.client, self.code, CoordinatorAction(action=action, by="coord-cas", **extra))

    async def until(self, predicate: Callable[[Any], bool]) -> None:
        async def check():
            return predicate(await self.status())

        await wait_for(check)

    async def sleep(self, duration: timedelta) -> None:
        """Skip time, then let the workflow task and sends that this fired settle."""
        await self.env.sleep(duration)
        await asyncio.sleep(0.3)

    async def finish(self) -> None:
        await self.client.get_workflow_handle_for(ReferralWorkflow.run, referrals.workflow_id(self.code)).result()


# --- the paths ---------------------------------------------------------------------------------


async def completed(run: Run) -> None:
    """Accepted, check-ins at 24 h and 7 d answered OK, then DONE: closed as completed."""
    await run.start("completed", ["medical"])
    partner = await run.offered("medical")
    await run.reply(partner, "accept")
    await run.sleep(timedelta(hours=24, minutes=1))
    await run.until(lambda s: s.services[0].follow_ups and s.services[0].follow_ups[0].sent_at)
    await run.reply(partner, "ok")
    await run.sleep(timedelta(days=6))
    await run.until(lambda s: len(s.services[0].follow_ups) > 1 and s.services[0].follow_ups[1].sent_at)
    await run.reply(partner, "ok")
    await run.reply(partner, "done")
    await run.finish()


async def decline_then_accept(run: Run) -> None:
    """The first partner declines; the next one is offered at once, accepts, and completes."""
    await run.start("decline-then-accept", ["shelter"])
    first = await run.offered("shelter")
    await run.reply(first, "decline", reason="no beds tonight")
    second = await run.offered("shelter", 2)
    await run.reply(second, "accept")
    await run.reply(second, "done")
    await run.finish()


async def deadline_escalation(run: Run) -> None:
    """Reminder at 12 h, deadline at 24 h: escalation level 1 and the next partner, who accepts."""
    await run.start("deadline-escalation", ["shelter"])
    await run.offered("shelter")
    await run.sleep(timedelta(hours=12, minutes=5))
    await run.until(lambda s: s.services[0].attempts[0].reminded)
    await run.sleep(timedelta(hours=12))
    second = await run.offered("shelter", 2)
    await run.reply(second, "accept")
    await run.reply(second, "done")
    await run.finish()


async def ladder_exhausted_assign(run: Run) -> None:
    """Three missed deadlines, stage escalated, two repeated alerts, a partner assigned by hand, DONE."""
    await run.start("ladder-exhausted-assign", ["shelter"])
    await run.offered("shelter")
    await run.sleep(timedelta(hours=72, minutes=5))
    await run.until(lambda s: s.stage == "escalated")
    await run.sleep(timedelta(hours=12, minutes=10))  # repeats 4 h, then 8 h apart (recorded before backoff: 4 h, 4 h)
    await run.until(lambda s: s.services[0].escalated_alerts >= 2)
    await run.act("assign", service="shelter", partner_id="nat-shelter-amal")
    await run.reply("nat-shelter-amal", "done")
    await run.finish()


async def follow_up_silence(run: Run) -> None:
    """Check-in 1 goes unanswered (escalates), check-in 2 is answered, then the coordinator closes."""
    await run.start("follow-up-silence", ["medical"])
    partner = await run.offered("medical")
    await run.reply(partner, "accept")
    await run.sleep(timedelta(hours=48, minutes=5))
    await run.until(lambda s: s.services[0].follow_ups[0].answer == "silence")
    await run.sleep(timedelta(days=5, hours=1))
    await run.until(lambda s: len(s.services[0].follow_ups) > 1 and s.services[0].follow_ups[1].sent_at)
    await run.reply(partner, "ok")
    await run.act("close", reason="service delivered")
    await run.finish()


async def two_services(run: Run) -> None:
    """Shelter and medical side by side: medical accepted at once, shelter escalates to the next
    partner who accepts; an issue reported; both DONE."""
    await run.start("two-services", ["shelter", "medical"])
    medical = await run.offered("medical")
    await run.offered("shelter")
    await run.reply(medical, "accept")
    await run.sleep(timedelta(hours=24, minutes=5))
    shelter = await run.offered("shelter", 2)
    await run.reply(shelter, "accept")
    await run.reply(medical, "issue", reason="interpreter missing at the appointment")
    await run.reply(medical, "done")
    await run.reply(shelter, "done")
    await run.finish()


async def withdraw_consent(run: Run) -> None:
    """One service offered, one accepted: consent withdrawn closes everything, both partners told."""
    await run.start("withdraw-consent", ["shelter", "medical"])
    await run.offered("shelter")
    medical = await run.offered("medical")
    await run.reply(medical, "accept")
    await run.act("withdraw_consent", reason="the person withdrew consent")
    await run.finish()


async def cancel(run: Run) -> None:
    """Cancelled by the coordinator while the offer is pending."""
    await run.start("cancel", ["shelter"])
    await run.offered("shelter")
    await run.act("cancel", reason="duplicate referral")
    await run.finish()


async def close_service_then_whole(run: Run) -> None:
    """Medical accepted then closed on its own; shelter still offered; then the whole referral closed."""
    await run.start("close-service-then-whole", ["shelter", "medical"])
    await run.offered("shelter")
    medical = await run.offered("medical")
    await run.reply(medical, "accept")
    await run.act("close", service="medical", reason="treated")
    await run.until(lambda s: s.services[1].stage == "closed")
    await run.act("close", reason="shelter found outside the mechanism")
    await run.finish()


async def sms_channel_problem(run: Run) -> None:
    """The first partner has no SMS number (test directory): the SMS is refused, the coordinator is
    told, the email carries the offer. Then the SMS webhook reports an opt-out twice (same
    MessageSid, deduplicated) and a failed delivery; the partner accepts by email link; cancelled."""
    await run.start("sms-channel-problem", ["shelter"])
    partner = await run.offered("shelter")
    await run.until(lambda s: s.channel_problems)
    handle = run.client.get_workflow_handle_for(ReferralWorkflow.run, referrals.workflow_id(run.code))
    opt_out = ChannelReport(partner_id=partner, channel="sms", problem="OptedOut", message_sid="SM" + "0" * 31 + "1")
    await handle.signal(ReferralWorkflow.report_channel_problem, opt_out)
    await handle.signal(ReferralWorkflow.report_channel_problem, opt_out)
    failed = ChannelReport(partner_id=partner, channel="sms", problem="undelivered", message_sid="SM" + "0" * 31 + "2")
    await handle.signal(ReferralWorkflow.report_channel_problem, failed)
    await run.until(lambda s: len(s.channel_problems) == 3)
    await run.reply(partner, "accept", channel="web")
    await run.act("cancel")
    await run.finish()


async def unreachable_partner(run: Run) -> None:
    """The first partner has no SMS number and its mailbox refuses mail: unreachable, so the next
    partner is offered at once, without waiting for the deadline; it declines, the third accepts."""
    await run.start("unreachable-partner", ["shelter"])
    second = await run.offered("shelter", 2)
    await run.reply(second, "decline")
    third = await run.offered("shelter", 3)
    await run.reply(third, "accept")
    await run.act("close")
    await run.finish()


async def reflection_period(run: Run) -> None:
    """Accepted at once; check-ins at 24 h, 7 d and 30 d answered OK; the coordinator told 5 days
    before the 30-day reflection period ends; then DONE."""
    await run.start("reflection-period", ["medical"])
    partner = await run.offered("medical")
    await run.reply(partner, "accept")
    for number, wait in ((1, timedelta(hours=24, minutes=1)), (2, timedelta(days=6)), (3, timedelta(days=23))):
        await run.sleep(wait)
        await run.until(lambda s, n=number: len(s.services[0].follow_ups) >= n and s.services[0].follow_ups[n - 1].sent_at)
        await run.reply(partner, "ok")
    await run.reply(partner, "done")
    await run.finish()


async def escalated_continued_as_new(run: Run) -> None:
    """Continuing as new past 80 events: the ladder runs out (three deadlines), the alerts back off
    (4 h, 8 h, 16 h, 24 h) and climb to the national focal point at the fourth, over several runs; the
    coordinator assigns a partner, who answers two check-ins in later runs, then DONE."""
    await run.start("escalated-continued-as-new", ["shelter"])
    await run.offered("shelter")
    await run.sleep(timedelta(hours=72, minutes=5))
    await run.until(lambda s: s.stage == "escalated")
    await run.sleep(timedelta(days=3))
    await run.until(lambda s: s.services[0].escalated_alerts >= 4 and s.services[0].escalation_level == 5)
    await run.act("assign", service="shelter", partner_id="nat-shelter-amal")
    for number, wait in ((1, timedelta(hours=24, minutes=1)), (2, timedelta(days=6))):
        await run.sleep(wait)
        await run.until(lambda s, n=number: len(s.services[0].follow_ups) >= n and s.services[0].follow_ups[n - 1].sent_at)
        await run.reply("nat-shelter-amal", "ok")
    await run.reply("nat-shelter-amal", "done")
    await run.finish()


NO_SMS_PARTNER = "cas-assoc"


@dataclass(frozen=True)
class Path_:
    name: str
    scenario: Callable[[Run], Awaitable[None]]
    no_sms: bool = False  # the first shelter partner has no SMS number
    refuse_email: bool = False  # ... and its mailbox refuses mail
    continue_after_events: int | None = None  # the policy's continue_as_new_after_events, lowered


PATHS = [
    Path_("completed", completed),
    Path_("decline-then-accept", decline_then_accept),
    Path_("deadline-escalation", deadline_escalation),
    Path_("ladder-exhausted-assign", ladder_exhausted_assign),
    Path_("follow-up-silence", follow_up_silence),
    Path_("two-services", two_services),
    Path_("withdraw-consent", withdraw_consent),
    Path_("cancel", cancel),
    Path_("close-service-then-whole", close_service_then_whole),
    Path_("sms-channel-problem", sms_channel_problem, no_sms=True),
    Path_("unreachable-partner", unreachable_partner, no_sms=True, refuse_email=True),
    Path_("reflection-period", reflection_period),
    Path_("escalated-continued-as-new", escalated_continued_as_new, continue_after_events=80),
]
__doc__ = (__doc__ or "") + "".join(f"\n- {p.name}: {' '.join((p.scenario.__doc__ or '').split())}" for p in PATHS)


# --- the machinery -----------------------------------------------------------------------------


def _directory_without_sms(work: Path) -> Path:
    data = yaml.safe_load(PARTNERS_FILE.read_text(encoding="utf-8"))
    for partner in data["partners"]:
        if partner["id"] == NO_SMS_PARTNER:
            partner.pop("sms", None)
    path = work / "partners.no-sms.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def _policy_continuing_after(work: Path, events: int) -> Path:
    data = yaml.safe_load(POLICY_FILE.read_text(encoding="utf-8"))
    data["continue_as_new_after_events"] = events
    path = work / f"policy.continue-after-{events}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def history_files(name: str, runs: int) -> list[str]:
    """The files of a path's runs, first run first."""
    return [f"{name}.json", *(f"{name}.run-{n}.json" for n in range(2, runs + 1))]


def path_of_file(stem: str) -> str:
    """The lifecycle path a history file stands for (`x.run-2` and `x.v1` are `x`'s)."""
    return stem.split(".")[0]


async def _time_skipping_env() -> WorkflowEnvironment:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(BIN / "temporal-test-server"),
        data_converter=replay_data_converter(),
    )
    indexed = {
        "KEYWORD": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
        "KEYWORD_LIST": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
        "INT": IndexedValueType.INDEXED_VALUE_TYPE_INT,
        "DATETIME": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
    }
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={
                k.name: indexed[k.indexed_value_type.name.removeprefix("INDEXED_VALUE_TYPE_")] for k in sa.ALL
            },
        )
    )
    return env


async def record_one(path: Path_, smtp: SmtpSink, work: Path, out_dir: Path) -> list[Path]:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        referral_data_dir=work / path.name,
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        referral_policy_file=_policy_continuing_after(work, path.continue_after_events) if path.continue_after_events else POLICY_FILE,
        referral_partners_file=_directory_without_sms(work) if path.no_sms else PARTNERS_FILE,
        sms_backend="outbox",
        referral_allow_plaintext=True,
        metrics_port=0,
    )
    migrate.upgrade(settings.ledger_url)  # the ledger the worker writes to: a SQLite file in the work dir
    smtp.refuse.clear()
    if path.refuse_email:
        smtp.refuse.add(f"{NO_SMS_PARTNER}@partners.example.org")
    env = await _time_skipping_env()  # a fresh server per path: nothing else in its history
    try:
        task_queue = f"replay-record-{uuid.uuid4()}"
        async with build_worker(env.client, settings, task_queue=task_queue, activities=ReferralActivities(settings)):
            run = Run(env, settings, task_queue, smtp)
            await asyncio.wait_for(path.scenario(run), timeout=180)
            runs = await referral_runs(env.client, referrals.workflow_id(run.code))
    finally:
        await env.shutdown()
    if path.continue_after_events and len(runs) < 3:
        raise SystemExit(f"{path.name}: {len(runs)} run(s); the path is meant to continue as new at least twice")
    targets = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for history, file_name in zip(runs, history_files(path.name, len(runs)), strict=True):
        text = history.to_json()
        payloads = payload_texts(json.loads(text))
        assert any(PSEUDONYM in p for p in payloads), "the fictional intake is not in the history"
        if len(text.encode()) > MAX_BYTES:
            raise SystemExit(f"{file_name}: history is {len(text.encode())} bytes, over {MAX_BYTES}")
        target = out_dir / file_name
        target.write_text(text + "\n", encoding="utf-8")
        targets.append(target)
    return targets


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.replay.record", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="paths to record (default: all)")
    parser.add_argument("--out", type=Path, default=HISTORIES, help="directory for <name>.json (default: %(default)s)")
    args = parser.parse_args(argv)
    by_name = {p.name: p for p in PATHS}
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        parser.error(f"unknown path(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
    chosen = [by_name[n] for n in args.names] or PATHS

    smtp = SmtpSink(port=free_port())
    controller = Controller(_Handler(smtp), hostname="127.0.0.1", port=smtp.port)
    controller.start()
    try:
        with tempfile.TemporaryDirectory(prefix="replay-record-") as tmp:
            for path in chosen:
                for target in await record_one(path, smtp, Path(tmp), args.out):
                    print(f"{target.relative_to(Path.cwd()) if target.is_relative_to(Path.cwd()) else target}: {target.stat().st_size // 1024} KB")
    finally:
        controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
