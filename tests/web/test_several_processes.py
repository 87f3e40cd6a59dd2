"""`uvicorn web.app:app --workers 2`: two processes, one app.

A real uvicorn with two worker processes on loopback, against the tests' Temporal dev server
and an in-process referral worker, with no WEB_SESSION_SECRET (so the session key kept in
REFERRAL_DATA_DIR is what both processes sign with). Each request goes on a connection of its
own, and the test finds which process holds the server side of it (Linux /proc), so it can
show that both processes served and agreed: a session opened through one is accepted by the
other, a logout through one is honoured by both, and one MessageSid delivered to both is applied
once with one answer. Nothing is added to the app for this.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from temporalio.client import Client
from twilio.request_validator import RequestValidator

from activities.sms import read_outbox
from config.settings import Settings
from starter import referrals, sms_reply
from tests.cases import adult_intake
from tests.conftest import free_port, running_worker, wait_for
from tests.faults.conftest import Proc, settings_env
from tests.web.test_forms import HASH, PASSWORD, csrf_of
from tests.web.test_sms_webhook import POLICY, TOKEN, TWILIO_NUMBER, new_sid, number
from web import session_store
from web.security import SESSION_COOKIE
from workflows.models import CoordinatorAction
from workflows.referral import ReferralWorkflow

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
BATCH = 8  # requests at once, so that a busy process leaves some to the other
MAX_REQUESTS = 400

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="tells the serving process apart through Linux /proc")


@dataclass
class Web:
    base: str
    port: int
    proc: Proc
    settings: Settings
    client: Client

    @property
    def parent(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid


def _children(parent: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                pids.append(int(entry.name))
    return pids


def _serving_pid(parent: int, server_port: int, client_port: int) -> int | None:
    """The worker process holding the server side of the connection from `client_port`."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == server_port and int(cols[2].rsplit(":", 1)[1], 16) == client_port:
                inodes.add(f"socket:[{cols[9]}]")
    for pid in _children(parent):
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    if os.readlink(fd) in inodes:
                        return pid
                except OSError:
                    continue
        except OSError:
            continue
    return None


async def served(web: Web, method: str, path: str, **kwargs) -> tuple[int, httpx.Response]:
    """One request on a connection of its own, and the pid of the process that answered it."""
    async with httpx.AsyncClient(base_url=web.base, timeout=30) as http:
        response = await http.request(method, path, **kwargs)
        client_port = response.extensions["network_stream"].get_extra_info("client_addr")[1]
        pid = await asyncio.to_thread(_serving_pid, web.parent, web.port, client_port)
    assert pid is not None, "no worker process holds the connection"
    return pid, response


async def from_both(web: Web, request: Callable[[], Awaitable[tuple[int, httpx.Response]]]) -> list[tuple[int, httpx.Response]]:
    """Send `request` in batches until both worker processes have answered some."""
    results: list[tuple[int, httpx.Response]] = []
    while len({pid for pid, _ in results}) < 2:
        assert len(results) < MAX_REQUESTS, f"only one process served {len(results)} requests"
        results += await asyncio.gather(*(request() for _ in range(BATCH)))
    return results


def cookie(value: str) -> dict[str, str]:
    return {"Cookie": f"{SESSION_COOKIE}={value}"}


@pytest.fixture
async def web(dev_env, make_settings, tmp_path: Path) -> AsyncIterator[Web]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY, encoding="utf-8")
    port = free_port()
    base = f"http://{HOST}:{port}"
    values = dict(
        temporal_address=dev_env.client.service_client.config.target_host,
        temporal_namespace=dev_env.client.namespace,
        referral_policy_file=policy,
        public_base_url=base,
        twilio_auth_token=TOKEN,
        twilio_from_number=TWILIO_NUMBER,
        coordinator_logins=f"amina:{HASH}",
        web_session_secret="",  # each process would otherwise need the key kept in the data dir
        log_level="WARNING",
    )
    async with running_worker(dev_env.client, make_settings(**values)) as task_queue:
        settings = make_settings(**values, referral_task_queue=task_queue)
        # The checkout's code, whatever the environment's editable install points at.
        env = {**settings_env(settings), "PYTHONPATH": str(REPO)}
        argv = [sys.executable, "-m", "uvicorn", "web.app:app", "--host", HOST, "--port", str(port), "--workers", "2", "--log-level", "warning"]
        proc = Proc("web", argv, env, tmp_path, tmp_path / "web.log")
        proc.start()
        site = Web(base, port, proc, settings, dev_env.client)
        try:
            await _up(site)
            yield site
        finally:
            await proc.stop()


async def _up(web: Web) -> None:
    async def healthy() -> bool:
        if not web.proc.running:
            raise AssertionError(f"uvicorn exited:\n{web.proc.tail()}")
        try:
            return (await served(web, "GET", "/healthz"))[1].status_code == 200
        except (httpx.HTTPError, AssertionError):
            return False

    await wait_for(healthy, timeout=120, interval=0.3)
    await from_both(web, lambda: served(web, "GET", "/healthz"))


async def test_a_session_is_accepted_by_either_process_and_a_logout_by_both(web: Web) -> None:
    key_file = web.settings.referral_data_dir.resolve() / session_store.KEY_FILE
    assert key_file.is_file() and os.stat(key_file).st_mode & 0o777 == 0o600

    async with httpx.AsyncClient(base_url=web.base, timeout=30) as http:
        page = await http.get("/login")
        response = await http.post("/login", data={"login": "amina", "password": PASSWORD, "csrf": csrf_of(page.text), "next": "/referrals/new"})
        assert response.status_code == 303 and response.headers["location"] == "/referrals/new", response.text
        session = http.cookies[SESSION_COOKIE]

    pages = await from_both(web, lambda: served(web, "GET", "/referrals/new", headers=cookie(session)))
    assert all(r.status_code == 200 for _, r in pages), [(pid, r.status_code) for pid, r in pages]

    logout_pid, response = await served(
        web, "POST", "/logout", data={"csrf": csrf_of(pages[0][1].text)}, headers=cookie(session)
    )
    assert response.status_code == 303 and response.headers["location"] == "/login?bye=1"

    replays = await from_both(web, lambda: served(web, "GET", "/referrals/new", headers=cookie(session)))
    assert {pid for pid, _ in replays} - {logout_pid}, "the other process never answered"
    for pid, r in replays:
        assert r.status_code == 303 and r.headers["location"].startswith("/login"), (pid, logout_pid, r.status_code)


async def test_one_message_sid_delivered_to_both_processes_is_applied_once(web: Web) -> None:
    client = web.client
    code = (await referrals.start_referral(client, adult_intake(needs=["shelter"]), web.settings.referral_task_queue)).code
    try:
        sms = number("cas-assoc")
        await wait_for(lambda: any(code in m["body"] for m in read_outbox(web.settings.outbox_dir) if m["to"] == sms), timeout=60)
        params = sms_reply.inbound_form("AC" + "0" * 32, sms, TWILIO_NUMBER, f"A {code}", new_sid())
        signature = RequestValidator(TOKEN).compute_signature(web.base + "/sms/inbound", params)

        def deliver() -> Awaitable[tuple[int, httpx.Response]]:
            return served(web, "POST", "/sms/inbound", data=params, headers={"X-Twilio-Signature": signature})

        # The first batch races: deliveries of one MessageSid reach both processes at once.
        deliveries = await from_both(web, deliver)
        answers = {r.text for _, r in deliveries}
        assert all(r.status_code == 200 for _, r in deliveries)
        assert len(answers) == 1 and "acceptation enregistrée" in answers.pop()

        status = await referrals.get_status(client, code)
        assert [a.outcome for a in status.services[0].attempts] == ["accepted"]
        history = await client.get_workflow_handle(referrals.workflow_id(code)).fetch_history()
        accepted = [e for e in history.events if e.HasField("workflow_execution_update_accepted_event_attributes")]
        assert len(accepted) == 1
    finally:
        try:
            await referrals.coordinator_action(client, code, CoordinatorAction(action="cancel"))
        except referrals.ReferralRejected:
            pass
        await client.get_workflow_handle_for(ReferralWorkflow.run, referrals.workflow_id(code)).result()
