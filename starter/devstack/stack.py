"""`make run`: the parts started in order, supervised, and stopped in the reverse order."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from starter.devstack.console import HOST, StartupError, say, shown
from starter.devstack.environment import Plan, check_ports, lock_data_dir, plan
from starter.devstack.guide import print_ready
from starter.devstack.mail import start_smtp
from starter.devstack.processes import Child, ChildDied, poll
from starter.devstack.temporal_server import START_TIMEOUT, connect_when_up, ensure_search_attributes, server_argv

if TYPE_CHECKING:
    from temporalio.client import Client

REPO = Path(__file__).resolve().parents[2]

T = TypeVar("T")


class Stopped(Exception):
    """SIGINT or SIGTERM arrived."""


class Devstack:
    def __init__(self, p: Plan) -> None:
        self.p = p
        self.children: dict[str, Child] = {}
        self.smtp: asyncio.AbstractServer | None = None
        self.stop_requested = asyncio.Event()
        self.signals = 0
        self.client: Client | None = None  # once the server is up

    # -- signals and supervision

    def on_signal(self, signum: int) -> None:
        self.signals += 1
        if self.signals == 1:
            say(f"\ndevstack: {signal.Signals(signum).name}, stopping (Ctrl-C again to kill at once)")
            self.stop_requested.set()
        elif signum == signal.SIGINT:
            # A second Ctrl-C is a person in a hurry. A repeated SIGTERM is not: `make` and
            # `timeout` both relay theirs, so one request can arrive twice.
            say("devstack: killing everything")
            for child in self.children.values():
                child.signal(signal.SIGKILL)

    async def guard(self, aw: Awaitable[T]) -> T:
        """Await `aw`, unless a stop is requested or a child dies first."""
        task = asyncio.ensure_future(aw)
        stop = asyncio.create_task(self.stop_requested.wait())
        exits = {c.exited: c for c in self.children.values()}
        try:
            done, _ = await asyncio.wait({task, stop, *exits}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        for waiter, child in exits.items():
            if waiter in done:
                task.cancel()
                raise ChildDied(child.name, child.proc.returncode)
        if stop in done:
            task.cancel()
            raise Stopped
        return task.result()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self.on_signal, sig)
        try:
            await self.guard(self.start_temporal())
            self.smtp = await start_smtp(self.p.mail_dir, self.p.settings.smtp_port)
            await self.guard(self.upgrade_ledger())
            await self.guard(self.start_apps())
            print_ready(self.p)
            await self.guard(self.stop_requested.wait())
            return 0
        except Stopped:
            return 0
        except ChildDied as died:
            hint = ""
            if died.name == "temporal":
                hint = f" (see its output above; `rm -rf {shown(self.p.data_dir)}` resets a broken store)"
            say(f"devstack: {died}{hint}; stopping the rest")
            return 1
        except StartupError as err:
            say(f"devstack: {err}")
            return 1
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        apps = [self.children[n] for n in ("web", "worker") if n in self.children]
        if any(c.running for c in apps):
            say("devstack: stopping web and worker")
        await asyncio.gather(*(c.stop() for c in apps))
        if self.smtp is not None:
            self.smtp.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.smtp.wait_closed(), 5)
            self.smtp = None
        temporal = self.children.get("temporal")
        if temporal is not None:
            if temporal.running:
                say("devstack: stopping the Temporal server")
            await temporal.stop(timeout=20, quiet=True)
        say("devstack: stopped")

    # -- parts

    async def start_temporal(self) -> None:
        argv = server_argv(self.p)
        say(f"devstack: starting the Temporal dev server on {HOST}:{self.p.temporal_port} (state in {shown(self.p.data_dir / 'temporal.db')})")
        self.children["temporal"] = await Child.start("temporal", argv)
        client = await connect_when_up(self.p)
        await ensure_search_attributes(client, self.p)
        self.client = client

    async def upgrade_ledger(self) -> None:
        """The ledger the worker writes each referral's record to (a SQLite file in the data dir,
        unless LEDGER_DATABASE_URL says otherwise), brought to the code's migration."""
        from infra.database import describe
        from ledger import migrate

        # The referrals' data keys live there too (or in DATA_KEYS_DATABASE_URL's database).
        for url in dict.fromkeys([self.p.settings.ledger_url, self.p.settings.data_keys_url]):
            try:
                revision = await asyncio.to_thread(migrate.upgrade, url)
            except Exception as err:
                problem = type(err).__name__
                raise StartupError(f"the ledger database {describe(url)} could not be migrated ({problem}); `referral ledger upgrade` shows why") from None
            say(f"devstack: ledger {describe(url)} at revision {revision}")

    async def start_apps(self) -> None:
        s = self.p.settings
        self.children["worker"] = await Child.start("worker", [sys.executable, str(REPO / "worker.py")])
        self.children["web"] = await Child.start(
            "web",
            [sys.executable, "-m", "uvicorn", "web.app:app", "--host", HOST, "--port", str(s.web_port), "--log-level", "warning"],
        )
        await asyncio.gather(self._wait_worker(), self._wait_http(f"http://{HOST}:{s.web_port}/healthz", "web app"))
        await self._wait_http(f"http://{HOST}:{self.p.ui_port}/", "Temporal Web UI")

    async def _wait_worker(self) -> None:
        """Ready when it polls its task queue."""
        from temporalio.api.enums.v1 import TaskQueueType
        from temporalio.api.taskqueue.v1 import TaskQueue
        from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest

        s = self.p.settings
        request = DescribeTaskQueueRequest(
            namespace=s.temporal_namespace,
            task_queue=TaskQueue(name=s.referral_task_queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
        )
        await poll(lambda: self._has_pollers(request), "the worker did not poll its task queue", 60)

    async def _has_pollers(self, request) -> bool:
        assert self.client is not None
        response = await self.client.workflow_service.describe_task_queue(request)
        return bool(response.pollers)

    async def _wait_http(self, url: str, what: str) -> None:
        import httpx

        async with httpx.AsyncClient(timeout=2) as http:

            async def ok() -> bool:
                return (await http.get(url)).status_code == 200

            await poll(ok, f"the {what} did not answer {url}", START_TIMEOUT)


def main() -> None:
    try:
        p = plan()
        check_ports(p)
        lock = lock_data_dir(p.data_dir)
    except StartupError as err:
        say(f"devstack: {err}")
        raise SystemExit(1) from None
    try:
        code = asyncio.run(Devstack(p).run())
    finally:
        lock.close()
    raise SystemExit(code)
