"""The fault-injection harness: real processes on loopback that a test can kill and restart.

- `DevServer`: the Temporal CLI dev server in its own process, its state in a SQLite file in
  tmp, the referral search attributes registered (as `make run` does), so it can be stopped
  (SIGTERM or SIGKILL) and started again on the same file and port.
- `Proc`: a child process (`python worker.py`, `uvicorn web.app:app`) started with the
  environment built from a `Settings` by `settings_env`, so it sees exactly what the in-process
  client sees (data converter and encryption keys included); killed with any signal, restarted.
- `MailSink`: an SMTP server that can be stopped and started again on the same port; it keeps
  every message, so duplicates (the same Message-ID twice) can be counted.
- `Stack`: one of each around a tmp data dir; `Driver`: plays the partners and the coordinator;
  `message_report`: what each referral's history scheduled against what the outbox and the
  sink received.

Markers: every test here is `faults`; the slow ones are also `faults_full` and left out of
`make test` (`make test-faults` runs them all).
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from temporalio.api.enums.v1 import EventType, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, DescribeTaskQueueRequest
from temporalio.client import Client
from temporalio.service import RPCError

from activities.directory import load_directory
from activities.sms import read_outbox
from config.settings import Settings
from infra.temporal import connect
from ledger import migrate
from starter import referrals
from starter.devstack import search_attribute_flags
from tests import conftest as base
from tests.conftest import free_port
from tests.fixtures import PARTNERS_FILE
from tests.histories import referral_runs
from workflows.models import CoordinatorAction, Delivery, Notice, PartnerReply, ReferralStatus

# The key every test client and worker encrypts with (tests/conftest.py); None before encryption.
TEST_KEYS = getattr(base, "TEST_KEYS", None)
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
DIRECTORY = load_directory(PARTNERS_FILE)
SEND_ACTIVITIES = ("send_sms", "send_email")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "tests/faults/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.faults)


def say(text: str) -> None:
    """Figures for the lead: shown with `-s`, and kept in the test's captured output otherwise."""
    print(text, flush=True)


# --------------------------------------------------------------------------- environment


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a child process needs to build the same Settings as `settings`.

    Every field is written out (so a field added later, such as encryption keys, follows by
    itself); variables of the parent that name a setting are dropped first, so nothing leaks in
    from the developer's shell. Children run in a tmp cwd, so no `.env` is read either.
    """
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (list, dict, tuple, set)):
            text = json.dumps(list(value) if isinstance(value, (tuple, set)) else value)
        else:
            text = str(value)
        env[name.upper()] = text
    env["PYTHONUNBUFFERED"] = "1"
    # This checkout's code, whatever the venv has installed (children run in a tmp cwd).
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


def base_settings(**values: Any) -> Settings:
    """Settings for the fault tests: the tests' encryption key, no metrics endpoint (several
    workers run at once), no `.env`."""
    defaults: dict[str, Any] = {"metrics_port": 0} if "metrics_port" in Settings.model_fields else {}
    if TEST_KEYS and "referral_encryption_keys" in Settings.model_fields:
        defaults["referral_encryption_keys"] = TEST_KEYS
    return Settings(_env_file=None, **{**defaults, **values})  # type: ignore[arg-type]


# --------------------------------------------------------------------------- processes


class Proc:
    """A child process with its output in a log file; killed and restarted at will."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path, log_path: Path) -> None:
        self.name, self.argv, self.env, self.cwd, self.log_path = name, argv, env, cwd, log_path
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.kills = 0
        self._offset = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        assert not self.running, f"{self.name} already running"
        # The child keeps its own copy of the descriptor; ours closes once it has started.
        with open(self.log_path, "ab") as log:
            self._offset = log.tell()
            log.write(f"\n===== {self.name} start {self.starts + 1}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        self.starts += 1

    async def kill(self, sig: int = signal.SIGKILL, timeout: float = 30.0) -> int | None:
        """Send `sig` and wait for the process to end (SIGKILL after `timeout`)."""
        if not self.running:
            return None
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig == signal.SIGKILL:
            self.kills += 1
        try:
            return await asyncio.to_thread(self.proc.wait, timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return await asyncio.to_thread(self.proc.wait)

    async def stop(self) -> None:
        await self.kill(signal.SIGTERM, timeout=15)

    async def wait_log(self, marker: str, timeout: float = 180.0) -> None:
        """Until `marker` appears in the output of the current run."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._offset)
                if marker.encode() in fh.read():
                    return
            if not self.running:
                raise RuntimeError(f"{self.name} exited:\n{self.tail()}")
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"{self.name} did not log {marker!r}:\n{self.tail()}")
            await asyncio.sleep(0.2)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class DevServer:
    """`temporal server start-dev` on a db file, restartable on the same file and port."""

    def __init__(self, directory: Path, namespace: str = "default") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.db = directory / "temporal.db"
        self.port = free_port()
        self.namespace = namespace
        argv = [
            str(BIN / "temporal"), "server", "start-dev",
            "--ip", HOST, "--port", str(self.port), "--headless",
            "--db-filename", str(self.db), "--namespace", namespace, "--log-level", "error",
        ]  # fmt: skip
        argv += search_attribute_flags()
        self.proc = Proc("temporal", argv, dict(os.environ), directory, directory / "temporal.log")

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    async def start(self, timeout: float = 90.0) -> None:
        self.proc.start()
        await self.wait_ready(timeout)

    async def wait_ready(self, timeout: float = 90.0) -> None:
        settings = base_settings(temporal_address=self.address, temporal_namespace=self.namespace)
        last: Exception | None = None
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if not self.proc.running:
                raise RuntimeError(f"the dev server exited:\n{self.proc.tail()}")
            try:
                client = await asyncio.wait_for(connect(settings), 5)
                await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=self.namespace))
                return
            except Exception as err:
                last = err
                if asyncio.get_running_loop().time() > deadline:
                    raise RuntimeError(f"the dev server did not come up ({last!r}):\n{self.proc.tail()}") from None
                await asyncio.sleep(0.3)

    async def stop(self, sig: int = signal.SIGTERM) -> int | None:
        return await self.proc.kill(sig, timeout=30)


class MailSink:
    """An SMTP server that keeps every message; `stop()` makes the port refuse connections."""

    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[EmailMessage] = []
        self._controller: Controller | None = None
        self.outages = 0

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(email.message_from_bytes(envelope.content, policy=email.policy.default))  # type: ignore[arg-type]
        return "250 Message accepted"

    def start(self) -> None:
        assert self._controller is None
        self._controller = Controller(self, hostname=HOST, port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None
            self.outages += 1

    @property
    def up(self) -> bool:
        return self._controller is not None

    def message_ids(self) -> Counter[str]:
        return Counter(str(m["Message-ID"]).strip("<>").split("@")[0] for m in self.messages)

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if address in str(m["To"])]


# --------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    server: DevServer
    client: Client
    settings: Settings
    sink: MailSink
    task_queue: str
    tmp: Path
    worker: Proc
    web: Proc | None = None

    async def start_worker(self, wait: bool = True) -> None:
        self.worker.start()
        if wait:
            await self.wait_worker()

    async def wait_worker(self, timeout: float = 180.0) -> None:
        """Until the task queue has a poller (only meaningful for the first start)."""
        request = DescribeTaskQueueRequest(
            namespace=self.client.namespace,
            task_queue=TaskQueue(name=self.task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            if not self.worker.running:
                raise RuntimeError(f"the worker exited:\n{self.worker.tail()}")
            with contextlib.suppress(Exception):
                if (await self.client.workflow_service.describe_task_queue(request)).pollers:
                    return
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"the worker did not poll:\n{self.worker.tail()}")
            await asyncio.sleep(0.3)

    def web_proc(self, port: int) -> Proc:
        argv = [sys.executable, "-m", "uvicorn", "web.app:app", "--host", HOST, "--port", str(port), "--log-level", "warning"]
        self.web = Proc("web", argv, settings_env(self.settings), self.tmp, self.tmp / "web.log")
        return self.web

    async def start(self, intake) -> str:
        return (await referrals.start_referral(self.client, intake, self.task_queue)).code

    async def status(self, code: str, timeout: float = 20.0) -> ReferralStatus:
        return await asyncio.wait_for(referrals.get_status(self.client, code), timeout)

    async def result(self, code: str, timeout: float = 120.0):
        handle = self.client.get_workflow_handle(referrals.workflow_id(code))
        return await asyncio.wait_for(handle.result(), timeout)

    async def terminate_open(self, codes: list[str]) -> None:
        for code in codes:
            with contextlib.suppress(Exception):
                await self.client.get_workflow_handle(referrals.workflow_id(code)).terminate("fault test cleanup")


def write_policy(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@asynccontextmanager
async def stack(server: DevServer, tmp: Path, policy: Path, start_worker: bool = True, **overrides: Any) -> AsyncIterator[Stack]:
    """A mail sink, settings in `tmp`, a client and a worker subprocess on a fresh task queue."""
    sink = MailSink()
    sink.start()
    task_queue = f"referrals-faults-{os.urandom(4).hex()}"
    values: dict[str, Any] = dict(
        temporal_address=server.address,
        temporal_namespace=server.namespace,
        referral_task_queue=task_queue,
        referral_data_dir=tmp / "data",
        referral_policy_file=policy,
        referral_partners_file=PARTNERS_FILE,
        smtp_host=HOST,
        smtp_port=sink.port,
        smtp_timeout_seconds=5.0,
        sms_backend="outbox",
        log_level="INFO",
    )
    values.update(overrides)
    settings = base_settings(**values)
    settings.referral_data_dir.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(settings.ledger_url)  # the worker's ledger: a SQLite file in the data dir
    client = await connect(settings)
    worker = Proc("worker", [sys.executable, str(REPO / "worker.py")], settings_env(settings), tmp, tmp / "worker.log")
    s = Stack(server, client, settings, sink, task_queue, tmp, worker)
    try:
        if start_worker:
            await s.start_worker()
        yield s
    finally:
        if s.web is not None:
            await s.web.stop()
        await s.worker.stop()
        sink.stop()


@pytest.fixture(scope="session")
async def fault_server(tmp_path_factory) -> AsyncIterator[DevServer]:
    """One dev server for the fault tests that do not restart it (each uses its own task queue)."""
    server = DevServer(tmp_path_factory.mktemp("fault-temporal"))
    await server.start()
    yield server
    await server.stop()


# --------------------------------------------------------------------------- the driver


@dataclass
class Plan:
    """How the partners of one referral behave."""

    code: str
    kind: str  # accept | decline_first | silent | done_early
    needs: list[str]
    external_ref: str
    declined: set[str] = field(default_factory=set)
    assigned: set[str] = field(default_factory=set)  # services the coordinator assigned by hand
    replies: int = 0
    rejections: Counter = field(default_factory=Counter)
    final: ReferralStatus | None = None

    @property
    def expected_reason(self) -> str:
        return "closed" if self.kind == "silent" else "completed"


class Driver:
    """Plays every partner (and the coordinator of the silent referrals) from the status query.

    Each reply carries an update id derived from what it answers, so a reply resent after a
    failed call (worker killed, server down) is applied once. Every call is bounded by its own
    timeout and any failure of it (timeout, RPC error, update cancelled by the server going
    away, ...) is counted and retried on the next poll; the driver never gives up before its
    deadline. The deadline is checked by each referral's loop rather than enforced by
    cancelling it: the SDK turns a cancelled `execute_update` into
    `WorkflowUpdateRPCTimeoutOrCancelledError`, so a cancellation could be swallowed and the
    driver would never stop.

    A silent referral is closed by the coordinator once every service is escalated; the close
    counts only when the status query shows the referral closed, and it is resent (same update
    id, so applied once) on every poll until then.
    """

    QUERY_TIMEOUT = 20.0
    UPDATE_TIMEOUT = 30.0

    def __init__(self, s: Stack, plans: list[Plan], poll: float = 1.0) -> None:
        self.s, self.plans, self.poll = s, plans, poll
        self.errors: Counter = Counter()
        self.last: dict[str, ReferralStatus] = {}
        self.close_sent: dict[str, float] = {}  # code -> loop time of the first close sent
        self.close_confirmed: dict[str, float] = {}  # code -> seconds from first close to closed status
        self._deadline = 0.0

    async def run(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + timeout
        await asyncio.gather(*(self._drive(p) for p in self.plans))
        open_ = [p for p in self.plans if p.final is None]
        if not open_:
            return
        lines = [f"{len(open_)} referral(s) not closed after {timeout:.0f}s; driver errors {dict(self.errors)}"]
        for p in open_:
            st = self.last.get(p.code)
            if p.code in self.close_sent:
                lines.append(f"  R-{p.code}: close first sent {loop.time() - self.close_sent[p.code]:.0f}s ago, never confirmed")
            if st is None:
                lines.append(f"  R-{p.code} {p.kind}: never queried")
                continue
            for svc in st.services:
                lines.append(
                    f"  R-{p.code} {p.kind} {svc.service}: stage {svc.stage}, partner {svc.partner_id}, "
                    f"attempts {[a.outcome for a in svc.attempts]}, follow-ups {[(f.number, bool(f.sent_at), f.answer) for f in svc.follow_ups]}"
                )
        raise AssertionError("\n".join(lines))

    def _failed(self, what: str, err: BaseException) -> None:
        label = type(err).__name__
        if isinstance(err, RPCError):
            label += f"({err.status.name})"
        self.errors[f"{what} {label}"] += 1

    async def _call(self, what: str, coro, timeout: float) -> tuple[bool, Any]:
        """(True, result) or (False, None) after counting the failure; rejections re-raised."""
        try:
            return True, await asyncio.wait_for(coro, timeout)
        except referrals.ReferralRejected:
            raise
        except asyncio.CancelledError:
            raise
        except Exception as err:
            self._failed(what, err)
            return False, None

    async def _reply(self, plan: Plan, partner: str, action: str, service: str, update_id: str) -> None:
        reply = PartnerReply(partner_id=partner, action=action, service=service, channel="api")
        try:
            ok, _ = await self._call("reply", referrals.partner_reply(self.s.client, plan.code, reply, update_id=update_id), self.UPDATE_TIMEOUT)
        except referrals.ReferralRejected as err:
            plan.rejections[err.kind] += 1
            return
        if ok:
            plan.replies += 1

    async def _drive(self, plan: Plan) -> None:
        loop = asyncio.get_running_loop()
        rnd = random.Random(plan.code)
        await asyncio.sleep(rnd.uniform(0, self.poll))
        while loop.time() < self._deadline:
            ok, status = await self._call("query", self.s.status(plan.code, timeout=self.QUERY_TIMEOUT), self.QUERY_TIMEOUT + 5)
            if not ok:
                await asyncio.sleep(self.poll)
                continue
            self.last[plan.code] = status
            if status.stage == "closed" or status.closed_at is not None:
                plan.final = status
                if plan.code in self.close_sent:
                    self.close_confirmed[plan.code] = loop.time() - self.close_sent[plan.code]
                return
            await self._act(plan, status)
            await asyncio.sleep(self.poll)

    async def _act(self, plan: Plan, status: ReferralStatus) -> None:
        if plan.kind == "silent":
            if status.services and all(svc.stage == "escalated" for svc in status.services):
                self.close_sent.setdefault(plan.code, asyncio.get_running_loop().time())
                action = CoordinatorAction(action="close", by="fault-driver")
                try:
                    close_update = referrals.coordinator_action(self.s.client, plan.code, action, update_id=f"close-{plan.code}")
                    await self._call("close", close_update, self.UPDATE_TIMEOUT)
                except referrals.ReferralRejected as err:
                    # `referral_closed`: an earlier close got through; the next poll confirms it.
                    plan.rejections[err.kind] += 1
            return
        for svc in status.services:
            if svc.stage == "escalated":
                await self._assign(plan, svc)
                continue
            pending = svc.attempts[-1] if svc.attempts and svc.attempts[-1].outcome is None else None
            # Accepting from the status, the partner may answer before the SMS went out (an
            # offer sent by an activity lost with a killed worker is retried only after
            # its start-to-close timeout).
            if svc.stage in ("notification", "awaiting_acceptance") and pending is not None:
                n = len(svc.attempts)
                # Decline until the status shows a decline applied: a decline whose call failed
                # is resent (same update id) rather than turned into an accept.
                if plan.kind == "decline_first" and not any(a.outcome == "declined" for a in svc.attempts):
                    await self._reply(plan, pending.partner_id, "decline", svc.service, f"{plan.code}-{svc.service}-{n}-decline")
                    plan.declined.add(svc.service)
                else:
                    await self._reply(plan, pending.partner_id, "accept", svc.service, f"{plan.code}-{svc.service}-{n}-accept")
            elif svc.stage == "follow_up" and svc.partner_id and svc.completed_at is None:
                open_checkin = next((f for f in reversed(svc.follow_ups) if f.sent_at and f.answer is None), None)
                last_sent = max((f.number for f in svc.follow_ups if f.sent_at), default=0)
                if open_checkin is not None:
                    await self._reply(plan, svc.partner_id, "ok", svc.service, f"{plan.code}-{svc.service}-ci{open_checkin.number}-ok")
                    if plan.kind == "done_early" or open_checkin.number >= 2:
                        await self._reply(plan, svc.partner_id, "done", svc.service, f"{plan.code}-{svc.service}-done")
                elif last_sent >= 3 or (plan.kind == "done_early" and last_sent >= 1):
                    await self._reply(plan, svc.partner_id, "done", svc.service, f"{plan.code}-{svc.service}-done")


    async def _assign(self, plan: Plan, svc) -> None:
        """Every offer of a replying referral timed out while the fault kept the partner's reply
        from getting through (a 6 s reply window, a server down for 5 s): the ladder is exhausted
        and the service escalated, as designed. The coordinator acts on the escalation and
        assigns the last candidate offered by hand; the service then goes on to follow-up."""
        partner = svc.attempts[-1].partner_id if svc.attempts else (svc.candidates[0] if svc.candidates else None)
        if partner is None:
            return
        action = CoordinatorAction(action="assign", service=svc.service, partner_id=partner, by="fault-driver")
        try:
            assign_update = referrals.coordinator_action(self.s.client, plan.code, action, update_id=f"assign-{plan.code}-{svc.service}")
            ok, _ = await self._call("assign", assign_update, self.UPDATE_TIMEOUT)
        except referrals.ReferralRejected as err:
            plan.rejections[err.kind] += 1
            return
        if ok:
            plan.assigned.add(svc.service)


NEEDS_MIX = [["shelter"], ["medical"], ["legal"], ["shelter", "medical"], ["medical", "legal"], ["shelter", "legal"]]
KINDS = ["accept", "decline_first", "silent", "done_early", "accept"]


def plan_intakes(n: int, seed: int, prefix: str) -> list[tuple[str, list[str], Any]]:
    """(kind, needs, intake) for n referrals with distinct external_refs; seeded."""
    from tests.cases import adult_intake

    rnd = random.Random(seed)
    out = []
    for i in range(n):
        needs = rnd.choice(NEEDS_MIX)
        kind = KINDS[i % len(KINDS)]
        intake = adult_intake(needs=needs, external_ref=f"{prefix}-{seed}-{i:03d}")
        out.append((kind, needs, intake))
    return out


def check_ends(plans: list[Plan]) -> list[str]:
    """Referrals that did not reach their expected end, with why."""
    wrong = []
    for p in plans:
        st = p.final
        if st is None:
            wrong.append(f"R-{p.code} ({p.kind}): no final status")
            continue
        if st.closed_reason != p.expected_reason:
            wrong.append(f"R-{p.code} ({p.kind}): closed_reason {st.closed_reason}, expected {p.expected_reason}")
            continue
        for svc in st.services:
            if p.kind == "silent":
                outcomes = [a.outcome for a in svc.attempts]
                timed_out = outcomes.count("timed_out")
                # The close is sent once the status shows every service escalated. A status
                # answered by a worker replaying the history includes a deadline timer that has
                # fired but is not yet recorded; the close then lands in the same workflow task
                # as that timer, and Temporal applies the update first: the last offer is
                # withdrawn by the close instead of timing out. Either is a right end.
                last_ok = bool(outcomes) and outcomes[-1] in ("timed_out", "withdrawn")
                exhausted = timed_out == len(outcomes)
                level_ok = svc.escalation_level >= timed_out + (1 if exhausted else 0)
                if not last_ok or timed_out < len(outcomes) - 1 or not level_ok:
                    wrong.append(f"R-{p.code} silent {svc.service}: attempts {outcomes}, level {svc.escalation_level}")
            else:
                if svc.completed_at is None or svc.accepted_at is None:
                    wrong.append(f"R-{p.code} ({p.kind}) {svc.service}: not completed")
                outcomes = [a.outcome for a in svc.attempts]
                # A first offer may time out while the worker is down; a decline still comes.
                if p.kind == "decline_first" and "declined" not in outcomes:
                    wrong.append(f"R-{p.code} decline_first {svc.service}: outcomes {outcomes}")
                # Or assigned by the coordinator after every offer timed out during the fault.
                if "accepted" not in outcomes and not svc.assigned_by_coordinator:
                    wrong.append(f"R-{p.code} ({p.kind}) {svc.service}: no accepted attempt: {outcomes}")
    return wrong


# --------------------------------------------------------------------------- counting messages


def _all_contacts() -> list[str]:
    ids = [p.id for p in DIRECTORY.partners] + [c.id for c in DIRECTORY.coordinators.values()]
    return sorted({*ids, DIRECTORY.national_focal_point.id})


@dataclass
class MessageCount:
    """One (referral, template, channel, recipient): sends the history completed, messages seen."""

    code: str
    template: str
    channel: str
    recipient: str
    completed: int = 0  # send activities completed with status `sent`
    unique: int = 0  # distinct activity keys seen at the outbox / sink
    received: int = 0  # lines / emails seen (received - unique = duplicates)
    lost: int = 0  # completed sends with no message seen
    repeated: int = 0  # the same notice scheduled again under another number (a resent reminder, alert...)


def _send_key(wid: str, run_id: str, activity_id: str, notice: Notice, channel: str) -> str:
    """The key the send activity deduplicates on (activities/referral_activities.py): the notice's
    number, whatever run sends it; the run and activity for a notice from before numbering."""
    return notice.send_key(wid, channel) or f"{wid}/{run_id}/{activity_id}"


def _row(rows: dict[tuple, MessageCount], code: str, notice: Notice, channel: str) -> MessageCount:
    key = (code, notice.template, channel, notice.recipient_id)
    return rows.setdefault(key, MessageCount(*key))


# Notices that may legitimately go twice with the same content (two refusals of one channel).
_MAY_REPEAT = {"channel_problem"}


async def message_report(s: Stack, codes: list[str]) -> list[MessageCount]:
    """Per (code, template, channel, recipient): what the histories of every run of the referral
    say was sent, and what arrived.

    Each send's key is `<workflow id>/notice-<n>/<channel>` (see `_send_key`), plus
    `/<contact id>` for the outbox line's id; sha256 of it is the email's Message-ID. So every
    line and email maps to one scheduled send, and a duplicate is the same key twice. A notice
    scheduled again with the same content under another number (which the key cannot catch) is
    counted as `repeated`.
    """
    outbox = Counter(line["id"] for line in read_outbox(s.settings.outbox_dir))
    mails = s.sink.message_ids()
    contacts = _all_contacts()
    rows: dict[tuple, MessageCount] = {}
    for code in codes:
        wid = referrals.workflow_id(code)
        seen_content: dict[tuple, int | None] = {}
        for history in await referral_runs(s.client, wid):
            run_id = history.run_id
            scheduled: dict[int, tuple[str, str, Notice]] = {}
            for event in history.events:
                if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                    attrs = event.activity_task_scheduled_event_attributes
                    if attrs.activity_type.name in SEND_ACTIVITIES:
                        [notice] = await s.client.data_converter.decode(list(attrs.input.payloads), [Notice])
                        scheduled[event.event_id] = (attrs.activity_id, attrs.activity_type.name, notice)
                        channel = "sms" if attrs.activity_type.name == "send_sms" else "email"
                        content = (channel, notice.recipient_id, notice.template, notice.context.model_dump_json())
                        if notice.template not in _MAY_REPEAT and content in seen_content and seen_content[content] != notice.number:
                            _row(rows, code, notice, channel).repeated += 1
                        seen_content.setdefault(content, notice.number)
                elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                    attrs = event.activity_task_completed_event_attributes
                    if attrs.scheduled_event_id not in scheduled:
                        continue
                    activity_id, kind, notice = scheduled[attrs.scheduled_event_id]
                    [delivery] = await s.client.data_converter.decode(list(attrs.result.payloads), [Delivery])
                    channel = "sms" if kind == "send_sms" else "email"
                    row = _row(rows, code, notice, channel)
                    if delivery.status != "sent":
                        continue
                    row.completed += 1
                    key = _send_key(wid, run_id, activity_id, notice, channel) + "/"
                    if channel == "sms":
                        seen = {k: n for k, n in outbox.items() if k.startswith(key)}
                    else:
                        seen = {}
                        for cid in contacts:
                            mid = hashlib.sha256(f"{key}{cid}".encode()).hexdigest()[:32]
                            if mails.get(mid):
                                seen[mid] = mails[mid]
                    row.unique += len(seen)
                    row.received += sum(seen.values())
                    if not seen:
                        row.lost += 1
    return list(rows.values())


def summarise(rows: list[MessageCount]) -> dict[str, int]:
    return {
        "sends": sum(r.completed for r in rows),
        "messages": sum(r.unique for r in rows),
        "received": sum(r.received for r in rows),
        "duplicates": sum(r.received - r.unique for r in rows),
        "lost": sum(r.lost for r in rows),
        "sms_duplicates": sum(r.received - r.unique for r in rows if r.channel == "sms"),
        "email_duplicates": sum(r.received - r.unique for r in rows if r.channel == "email"),
        "sms_repeated": sum(r.repeated for r in rows if r.channel == "sms"),
        "email_repeated": sum(r.repeated for r in rows if r.channel == "email"),
    }


def per_referral_table(rows: list[MessageCount], plans: list[Plan]) -> str:
    kinds = {p.code: p for p in plans}
    lines = [f"{'referral':<9} {'kind':<13} {'needs':<16} {'reason':<9} {'sends':>5} {'sms':>4} {'email':>5} {'dup':>4} {'lost':>4}"]
    for code in [p.code for p in plans]:
        mine = [r for r in rows if r.code == code]
        p = kinds[code]
        sms = sum(r.unique for r in mine if r.channel == "sms")
        mail = sum(r.unique for r in mine if r.channel == "email")
        dup = sum(r.received - r.unique for r in mine)
        lost = sum(r.lost for r in mine)
        reason = p.final.closed_reason if p.final else "-"
        needs = "+".join(p.needs)
        completed = sum(r.completed for r in mine)
        lines.append(f"R-{code:<7} {p.kind:<13} {needs:<16} {reason or '-':<9} {completed:>5} {sms:>4} {mail:>5} {dup:>4} {lost:>4}")
    dups = [r for r in rows if r.received > r.unique or r.lost or r.repeated]
    if dups:
        lines.append("")
        lines.append("duplicated or lost, by (referral, template, channel, recipient):")
        for r in dups:
            counts = f"sends {r.completed} seen {r.unique} received {r.received} lost {r.lost} repeated {r.repeated}"
            lines.append(f"  R-{r.code} {r.template:<16} {r.channel:<5} {r.recipient:<20} {counts}")
    return "\n".join(lines)
