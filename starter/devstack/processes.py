"""The devstack's child processes (Temporal, worker, web app): started in their own session,
their output shown prefixed with their name, stopped with SIGTERM then SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from starter.devstack.console import StartupError, say

STOP_TIMEOUT = 10.0  # seconds a child gets after SIGTERM before SIGKILL


class ChildDied(Exception):
    def __init__(self, name: str, code: int | None) -> None:
        super().__init__(f"{name} exited unexpectedly with code {code}")
        self.name = name
        self.code = code


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the devstack itself is killed (Linux)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    proc: asyncio.subprocess.Process
    exited: asyncio.Task = field(init=False)
    pump: asyncio.Task = field(init=False)
    quiet: bool = False  # set while stopping: shutdown chatter is not worth showing

    def __post_init__(self) -> None:
        self.exited = asyncio.create_task(self.proc.wait())
        self.pump = asyncio.create_task(self._pump())

    @classmethod
    async def start(cls, name: str, argv: list[str]) -> Child:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches only the devstack, which stops children in order
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                limit=1 << 20,
            )
        except OSError as err:
            raise StartupError(f"cannot start {name} ({argv[0]}): {err.strerror}") from None
        return cls(name, proc)

    async def _pump(self) -> None:
        prefix = f"[{self.name}]"
        assert self.proc.stdout is not None
        while True:
            try:
                line = await self.proc.stdout.readline()
            except ValueError:  # a line longer than the limit: show what there is
                line = await self.proc.stdout.read(1 << 20)
            if not line:
                return
            if not self.quiet:
                say(f"{prefix:<11}{line.decode('utf-8', 'replace').rstrip()}")

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    async def stop(self, timeout: float = STOP_TIMEOUT, quiet: bool = False) -> int | None:
        if self.running:
            self.quiet = quiet
            self.signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self.exited), timeout)
            except TimeoutError:
                say(f"devstack: {self.name} did not stop within {timeout:.0f}s; killing it")
                self.signal(signal.SIGKILL)
                await self.exited
        else:
            await self.exited
        # A grandchild may still hold the pipe; do not wait for it forever.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.pump), 2)
        self.pump.cancel()
        return self.proc.returncode



async def poll(check: Callable[[], Awaitable[bool]], failure: str, timeout: float) -> None:
    """Until `check()` says yes (its errors count as no), or StartupError after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        with contextlib.suppress(Exception):
            if await check():
                return
        if asyncio.get_running_loop().time() > deadline:
            raise StartupError(f"{failure} within {timeout:.0f}s")
        await asyncio.sleep(0.3)

