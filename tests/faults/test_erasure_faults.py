"""Erasure (issue 16) with real processes: a worker (`python worker.py`), the web app's codec
server (uvicorn), the `referral` and `temporal` console scripts.

- After `referral erase`, no process decodes any payload of that referral: the codec server
  answers them as undecodable (naming the data key, never the data), `temporal workflow show`
  with the codec shows none of the person's data, visibility lists no run; another referral
  still decodes and goes on.
- A Temporal database file copied before the erasure and served again after it, read with the
  same master keys and key table, yields none of the person's data: every payload of the
  referral fails to decrypt.
- The worker SIGKILLed while an erasure runs: the erasure is carried on by the restarted worker
  to its end (request recorded as erased, key destroyed, no run left, ledger row marked), and the
  data key is never seen destroyed while the referral's workflow still runs.

Each test has its own key table (a SQLite file in its tmp dir) that its processes share.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sqlite3
import subprocess
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.message import Message
from sqlalchemy import select
from temporalio.api.common.v1 import Payload, Payloads, WorkflowExecution
from temporalio.api.enums.v1 import EventType, PendingActivityState, WorkflowExecutionStatus
from temporalio.api.workflowservice.v1 import DescribeWorkflowExecutionRequest, GetWorkflowExecutionHistoryRequest
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from config.settings import Settings
from infra.codec import ENCODING, KEY_ID, PayloadDecryptionError
from infra.data_keys import DataKeyStore, data_keys
from infra.database import engine_for
from infra.temporal import connect, payload_codec
from ledger import migrate
from ledger.erasures import ERASED
from ledger.store import LedgerStore
from starter import erasure, referrals
from tests.cases import NOTES, PHONE, PSEUDONYM, adult_intake
from tests.conftest import free_port, wait_for
from tests.faults.conftest import BIN, HOST, DevServer, Stack, say, settings_env, stack, write_policy
from tests.faults.test_smtp_outage import QUIET_POLICY
from tests.faults.test_web_restart import offered, wait_http
from tests.web.test_codec_server import payload_texts
from workflows.erasure import workflow_id as erasure_workflow_id
from workflows.models import PartnerReply

TOKEN = "fault-erasure-codec-token"
PERSONAL = (PSEUDONYM, PHONE, NOTES)  # the fictional person's data every intake here carries
RUNNING = WorkflowExecutionStatus.WORKFLOW_EXECUTION_STATUS_RUNNING


def intake():
    return adult_intake(needs=["shelter"], person={"pseudonym": PSEUDONYM, "contact_phone": PHONE}, notes=NOTES)


def overrides(tmp: Path, **more: Any) -> dict[str, Any]:
    """The test's own key table (migrated), shared by the test, its worker, web app and CLI runs."""
    url = f"sqlite:///{tmp / 'data-keys.sqlite3'}"
    migrate.upgrade(url)
    return {"data_keys_database_url": url, "referral_api_tokens": TOKEN, **more}


def key_store(settings: Settings) -> DataKeyStore:
    codec = payload_codec(settings)
    assert codec is not None and codec.data_keys is not None, "the fault tests encrypt"
    return codec.data_keys


def leaks(text: str | bytes) -> list[str]:
    blob = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
    return [p for p in PERSONAL if p.encode() in blob]


# --------------------------------------------------------------------------- Temporal, raw


def all_payloads(message: Message) -> list[Payload]:
    """Every Payload anywhere in a protobuf message: inputs, results, memo, headers, update
    arguments, failures' encoded attributes, user metadata, search attributes."""
    found: list[Payload] = []

    def walk(msg: Message) -> None:
        if isinstance(msg, Payload):
            found.append(msg)
            return
        for field, value in msg.ListFields():
            if field.message_type is None:
                continue
            if field.message_type.GetOptions().map_entry:
                items = list(value.values())
            elif isinstance(value, Message):
                items = [value]
            else:
                items = list(value)
            for item in items:
                if isinstance(item, Message):
                    walk(item)

    walk(message)
    return found


def encrypted(payloads: list[Payload]) -> list[Payload]:
    return [p for p in payloads if p.metadata.get("encoding") == ENCODING]


async def history_payloads(client: Client, workflow_id: str, run_id: str = "") -> list[Payload]:
    """The payloads of one run (the latest by default), as the server stores them (every page)."""
    found: list[Payload] = []
    token = b""
    execution = WorkflowExecution(workflow_id=workflow_id, run_id=run_id)
    while True:
        request = GetWorkflowExecutionHistoryRequest(namespace=client.namespace, execution=execution, next_page_token=token)
        page = await client.workflow_service.get_workflow_execution_history(request)
        for event in page.history.events:
            found += all_payloads(event)
        token = page.next_page_token
        if not token:
            return found


async def describe(client: Client, workflow_id: str):
    """The latest run's description, or None when Temporal has none."""
    request = DescribeWorkflowExecutionRequest(namespace=client.namespace, execution=WorkflowExecution(workflow_id=workflow_id))
    try:
        return await client.workflow_service.describe_workflow_execution(request)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            return None
        raise


async def listed(client: Client, workflow_id: str) -> list[str]:
    return [w.run_id async for w in client.list_workflows(f"WorkflowId = '{workflow_id}'")]


async def decode_each(client: Client, payloads: list[Payload]) -> tuple[list[str], list[bytes]]:
    """(key ids of the payloads that fail to decrypt, data of those that decode)."""
    failed, decoded = [], []
    codec = client.data_converter.payload_codec
    assert codec is not None
    for p in payloads:
        try:
            [plain] = await codec.decode([p])
        except PayloadDecryptionError as err:
            assert not leaks(str(err)), str(err)
            failed.append(err.key_id)
        else:
            decoded.append(plain.data)
    return failed, decoded


# --------------------------------------------------------------------------- the codec server and the CLIs


def codec_body(payloads: list[Payload]) -> dict:
    return json_format.MessageToDict(Payloads(payloads=payloads))


async def codec_decode(base: str, payloads: list[Payload]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(base + "/codec/decode", json=codec_body(payloads), headers={"Authorization": f"Bearer {TOKEN}"})


def decoded_data(response: httpx.Response) -> bytes:
    assert response.status_code == 200, response.text
    parsed = json_format.ParseDict(response.json(), Payloads())
    return b"\n".join(p.data for p in parsed.payloads)


async def run(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(subprocess.run, argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=240)


async def workflow_show(address: str, workflow_id: str, codec: str, *extra: str) -> subprocess.CompletedProcess:
    """What an operator runs: `temporal workflow show` decoding through the codec server."""
    return await run([
        str(BIN / "temporal"), "workflow", "show", "--workflow-id", workflow_id, "--address", address,
        "--namespace", "default", "--output", "json", "--codec-endpoint", f"{codec}/codec", "--codec-auth", f"Bearer {TOKEN}", *extra,
    ])  # fmt: skip


async def start_processes(s: Stack) -> str:
    """The worker and the web app (its codec server), each in its own process, started together
    (the stack is entered with start_worker=False); the web app's log tail if it exits."""
    s.worker.start()
    port = free_port()
    web = s.web_proc(port)
    web.start()
    base = f"http://{HOST}:{port}"
    up = asyncio.create_task(wait_http(base))
    while not up.done():
        if not web.running:
            up.cancel()
            raise RuntimeError(f"the web app exited:\n{web.tail()}")
        await asyncio.wait([up], timeout=0.3)
    await up
    await s.wait_worker()
    return base


# --------------------------------------------------------------------------- 1. after erase


async def test_after_erase_nothing_decodes_the_referral_and_others_go_on(fault_server: DevServer, tmp_path: Path):
    policy = write_policy(tmp_path / "policy.yaml", QUIET_POLICY)
    async with stack(fault_server, tmp_path, policy, start_worker=False, **overrides(tmp_path)) as s:
        base = await start_processes(s)
        erased, kept = [await s.start(intake()) for _ in range(2)]
        for code in (erased, kept):
            await offered(s, code)
        wid = referrals.workflow_id(erased)
        key_id = key_store(s.settings).state(erased).key_id
        assert key_id is not None
        stored = encrypted(await history_payloads(s.client, wid))
        assert stored and {p.metadata[KEY_ID].decode() for p in stored} == {key_id}, "every payload under its data key"
        # Before: the codec server and the CLI show the person's data (so the checks below mean something).
        assert PSEUDONYM.encode() in decoded_data(await codec_decode(base, stored))
        before = await workflow_show(fault_server.address, wid, base)
        assert before.returncode == 0 and PSEUDONYM in payload_texts(before.stdout), before.stderr

        erase = await run([str(BIN / "referral"), "erase", erased, "--reason", "the person asked (fault test)", "--by", "coord-fault"],
                          env=settings_env(s.settings), cwd=tmp_path)  # fmt: skip
        assert erase.returncode == 0, erase.stderr
        assert f"R-{erased}: erased" in erase.stdout and not leaks(erase.stdout + erase.stderr)

        # The codec server: undecodable, as a batch and one by one, naming the data key only.
        refused = await codec_decode(base, stored)
        assert refused.status_code == 422 and key_id in refused.json()["error"] and "destroyed" in refused.json()["error"]
        assert not leaks(refused.text)
        for p in stored:
            one = await codec_decode(base, [p])
            assert one.status_code == 422 and key_id in one.text and not leaks(one.text)
        # This process's own client cannot either.
        failed, decoded = await decode_each(s.client, stored)
        assert failed == [key_id] * len(stored) and not decoded
        # `temporal workflow show` with the codec: nothing of the person (the workflow is gone).
        after = await workflow_show(fault_server.address, wid, base)
        assert not leaks(after.stdout + after.stderr + payload_texts(after.stdout)), after.stdout
        say(f"workflow show after erase: exit {after.returncode}, {(after.stderr or after.stdout).strip()[:160]!r}")
        # Gone from Temporal: no run listed, none described.
        assert await listed(s.client, wid) == [] and await describe(s.client, wid) is None

        # The other referral still decodes, through the codec server too, and goes on.
        other = encrypted(await history_payloads(s.client, referrals.workflow_id(kept)))
        assert PSEUDONYM.encode() in decoded_data(await codec_decode(base, other))
        service = (await s.status(kept)).services[0]
        reply = PartnerReply(partner_id=service.attempts[-1].partner_id, action="accept", service=service.service, channel="api")
        await referrals.partner_reply(s.client, kept, reply, update_id=f"{kept}-accept")

        async def accepted() -> bool:
            return (await s.status(kept)).services[0].stage == "follow_up"

        await wait_for(accepted, timeout=60, interval=0.3)
        say(f"FIGURES erase_decode payloads_refused={len(stored)} other_referral_went_on=1 cli_exit={erase.returncode}")
        await s.terminate_open([kept])


# --------------------------------------------------------------------------- 2. a copy from before


def backup(source: Path, target: Path) -> None:
    """A consistent copy of a SQLite file in use (the online backup API)."""
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


async def test_a_temporal_database_copied_before_the_erasure_yields_nothing_after_it(tmp_path: Path):
    policy = write_policy(tmp_path / "policy.yaml", QUIET_POLICY)
    server = DevServer(tmp_path / "temporal")
    copy = DevServer(tmp_path / "copy")
    await server.start()
    try:
        async with stack(server, tmp_path, policy, start_worker=False, **overrides(tmp_path)) as s:
            base = await start_processes(s)
            code = await s.start(intake())
            await offered(s, code)
            wid = referrals.workflow_id(code)
            key_id = key_store(s.settings).state(code).key_id
            _, before = await decode_each(s.client, await history_payloads(s.client, wid))
            assert any(PSEUDONYM.encode() in data for data in before), "readable before the erasure"

            await asyncio.to_thread(backup, server.db, copy.db)
            assert not leaks(copy.db.read_bytes()), "encrypted at rest"
            done = await erasure.erase(s.client, s.settings, code, by="coord-fault", reason="the person asked (fault test)")
            assert done.erasure.state == ERASED and key_store(s.settings).state(code).destroyed

            # The original server goes (a copy's membership rows name its addresses), the copy comes up.
            await s.worker.stop()
            await server.stop()
            await copy.start()
            reader = await connect(s.settings.model_copy(update={"temporal_address": copy.address}))
            payloads = await history_payloads(reader, wid)
            sealed = encrypted(payloads)
            assert sealed, "the copy still holds the referral's history"
            failed, decoded = await decode_each(reader, payloads)
            assert failed == [key_id] * len(sealed), f"every encrypted payload is the referral's and fails: {sorted(set(failed))}"
            assert not any(leaks(data) for data in decoded), "nothing decodable holds the person's data"
            refused = await codec_decode(base, sealed)
            assert refused.status_code == 422 and key_id is not None and key_id in refused.text and not leaks(refused.text)
            # Nor anything else the copy holds: every run it lists, and what it lists of them.
            others = 0
            async for execution in reader.list_workflows():
                assert not leaks(execution.raw_info.SerializeToString()), execution.id
                _, readable = await decode_each(reader, await history_payloads(reader, execution.id, execution.run_id))
                assert not any(leaks(data) for data in readable), execution.id
                others += execution.id != wid
            # An operator's `temporal workflow show` through the codec server: nothing of the person.
            shown = await workflow_show(copy.address, wid, base, "--command-timeout", "5s")
            assert not leaks(shown.stdout + shown.stderr + payload_texts(shown.stdout)), shown.stdout[:2000]
            say(f"workflow show on the copy: exit {shown.returncode}, {(shown.stderr or shown.stdout).strip()[:300]!r}")
            say(
                f"FIGURES erase_copy payloads={len(payloads)} encrypted={len(sealed)} undecodable={len(failed)} "
                f"passed_through={len(decoded)} other_workflows={others} workflow_show_exit={shown.returncode}"
            )
    finally:
        await copy.stop()
        await server.stop()


# --------------------------------------------------------------------------- 3. the worker killed mid-erasure


async def completed_steps(client: Client, code: str) -> int:
    """How many of the erasure's activities have completed (they run one after another)."""
    with contextlib.suppress(RPCError):
        history = await client.get_workflow_handle(erasure_workflow_id(code)).fetch_history()
        return sum(1 for e in history.events if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED)
    return 0


async def running_activity(client: Client, code: str) -> str | None:
    described = await describe(client, erasure_workflow_id(code))
    if described is None:
        return None
    started = [a for a in described.pending_activities if a.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED]
    return started[0].activity_type.name if started else None


def after_steps(n: int) -> Callable[[Client, str, float], Awaitable[bool]]:
    async def ready(client: Client, code: str, elapsed: float) -> bool:
        return await completed_steps(client, code) >= n

    return ready


def during(activity: str) -> Callable[[Client, str, float], Awaitable[bool]]:
    async def ready(client: Client, code: str, elapsed: float) -> bool:
        return await running_activity(client, code) == activity

    return ready


def after_seconds(seconds: float) -> Callable[[Client, str, float], Awaitable[bool]]:
    async def ready(client: Client, code: str, elapsed: float) -> bool:
        return elapsed >= seconds

    return ready


async def watch(s: Stack, code: str, stop: asyncio.Event, seen: list[str]) -> int:
    """Until `stop`: the key's state, then the referral's; a destroyed key with the referral still
    running is recorded. (In that order: a run seen after its key was read destroyed cannot have
    closed before the destruction.) How many observations were made."""
    store, wid, observations = key_store(s.settings), referrals.workflow_id(code), 0
    while not stop.is_set():
        destroyed = (await asyncio.to_thread(store.state, code)).destroyed
        described = await describe(s.client, wid)
        observations += 1
        if destroyed and described is not None and described.workflow_execution_info.status == RUNNING:
            seen.append(f"observation {observations}: key destroyed, referral-{code} running")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)
    return observations


def wrapped_key(store: DataKeyStore, code: str) -> bytes | None:
    with engine_for(store.url).connect() as conn:
        return conn.execute(select(data_keys.c.wrapped).where(data_keys.c.referral == code)).scalar_one()


def key_files_hold(store: DataKeyStore, data: bytes) -> bool:
    """Whether the key table's SQLite file, or its write-ahead log, still holds `data`."""
    path = Path(store.url.removeprefix("sqlite:///"))
    return any(data in p.read_bytes() for p in path.parent.glob(path.name + "*"))


async def erase_killing_the_worker(s: Stack, kill_when: Callable[[Client, str, float], Awaitable[bool]], label: str) -> dict:
    code = await s.start(intake())
    await offered(s, code)
    store = key_store(s.settings)
    assert store.state(code).key_id is not None and not store.state(code).destroyed
    wrapped = await asyncio.to_thread(wrapped_key, store, code)
    assert wrapped is not None and await asyncio.to_thread(key_files_hold, store, wrapped)
    stop, seen = asyncio.Event(), list[str]()
    watcher = asyncio.create_task(watch(s, code, stop, seen))
    t0 = time.monotonic()
    erasing = asyncio.create_task(
        erasure.erase(s.client, s.settings, code, by="coord-fault", reason="the person asked (fault test)", wait=timedelta(minutes=4))
    )
    try:
        await wait_for(lambda: erasing.done() or kill_when(s.client, code, time.monotonic() - t0), timeout=90, interval=0.05)
        steps, activity = await completed_steps(s.client, code), await running_activity(s.client, code)
        await s.worker.kill(signal.SIGKILL)
        killed_at = time.monotonic() - t0
        described = await describe(s.client, erasure_workflow_id(code))
        cut = described is not None and described.workflow_execution_info.status == RUNNING
        s.worker.start()
        await s.worker.wait_log("worker started")
        outcome = await erasing
    finally:
        stop.set()
        observations = await watcher
        if not erasing.done():
            erasing.cancel()
    figures = {
        "kill": label, "steps_done_at_kill": steps, "activity_at_kill": activity or "-", "erasure_cut": cut,
        "killed_at": round(killed_at, 1), "seconds": round(time.monotonic() - t0, 1), "observations": observations,
        "was_open": outcome.was_open, "runs_deleted": outcome.erasure.runs_deleted,
    }  # fmt: skip
    say("FIGURES erase_kill " + " ".join(f"{k}={v}" for k, v in figures.items()))

    assert not seen, "\n".join(seen)
    # Complete, never half: recorded erased, key destroyed, no run left, ledger row marked.
    record = erasure.erasure_state(s.settings, code)
    assert record is not None and record.state == ERASED and record.erased_at is not None, record
    assert outcome.erasure.state == ERASED
    assert store.state(code).destroyed and await asyncio.to_thread(wrapped_key, store, code) is None
    assert not await asyncio.to_thread(key_files_hold, store, wrapped), "the destroyed key's bytes linger in the key table's files"
    wid = referrals.workflow_id(code)
    assert await listed(s.client, wid) == [] and await describe(s.client, wid) is None
    row = await asyncio.to_thread(LedgerStore.for_url(s.settings.ledger_url).get, code)
    assert row is not None and row.erased and row.closure_reason == "consent_withdrawn", row
    assert record.ledger_marked
    assert outcome.was_open, "the referral was open: this erasure closed it, whichever attempt of the close step finished"
    return figures


KILL_POINTS = {
    "after_request_recorded": after_steps(1),
    "while_closing": during("erasure_close_referral"),
    "after_key_destroyed": after_steps(3),
    "while_deleting_runs": during("erasure_delete_runs"),
    **{f"random_{i}": after_seconds(random.Random(16 + i).uniform(0.0, 3.0)) for i in range(3)},
}


async def test_worker_sigkill_during_an_erasure_it_completes(fault_server: DevServer, tmp_path: Path):
    """With `make test`: the worker killed once the erasure's first step is done (its second,
    closing the referral, is then under way or about to be)."""
    policy = write_policy(tmp_path / "policy.yaml", QUIET_POLICY)
    async with stack(fault_server, tmp_path, policy, **overrides(tmp_path)) as s:
        figures = await erase_killing_the_worker(s, KILL_POINTS["after_request_recorded"], "after_request_recorded")
    assert figures["erasure_cut"], "the kill landed after the erasure had finished: it tested nothing"


@pytest.mark.faults_full
@pytest.mark.parametrize("point", [p for p in KILL_POINTS if p != "after_request_recorded"])
async def test_worker_sigkill_at_other_points_of_an_erasure(fault_server: DevServer, tmp_path: Path, point: str):
    policy = write_policy(tmp_path / "policy.yaml", QUIET_POLICY)
    async with stack(fault_server, tmp_path, policy, **overrides(tmp_path)) as s:
        await erase_killing_the_worker(s, KILL_POINTS[point], point)
