"""The bench's process supervision (bench/run.py): a process it started that dies stops the
run at once, with that process's last log lines, instead of leaving it waiting forever."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest

from bench.run import REPO, ProcessDied, Stack


def make_stack(tmp_path: Path) -> Stack:
    logs = tmp_path / "logs"
    logs.mkdir()
    return Stack(tmp_path, logs, 0, 0, 0, 0, env={"PATH": "/usr/bin:/bin"})


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


async def test_a_process_dying_stops_the_run_with_its_last_lines(tmp_path: Path) -> None:
    stack = make_stack(tmp_path)
    stack.start("web", python("import time; time.sleep(60)"))
    stack.start("worker", python("print('\\n'.join(f'line {i}' for i in range(100))); print('Namespace other-ns is not found'); raise SystemExit(3)"))
    waited = asyncio.Event()

    async def phase() -> None:  # what a phase does while the worker is dead: wait, forever
        try:
            await asyncio.sleep(600)
        finally:
            waited.set()

    t0 = time.monotonic()
    try:
        with pytest.raises(ProcessDied) as died:
            await stack.supervise(phase(), every=0.1)
    finally:
        stack.stop_all()
    assert time.monotonic() - t0 < 30
    assert waited.is_set(), "the phase was not cancelled"
    assert died.value.name == "worker" and died.value.returncode == 3
    text = str(died.value)
    assert "worker exited with status 3" in text and "Namespace other-ns is not found" in text
    assert "line 99" in text and "line 10\n" not in text  # the last lines, not the whole log
    assert str(died.value.log) in text


async def test_a_process_stopped_on_purpose_is_not_a_death(tmp_path: Path) -> None:
    stack = make_stack(tmp_path)
    stack.start("worker-throughput", python("import time; time.sleep(60)"))
    stack.start("web", python("import time; time.sleep(60)"))

    async def phase() -> int:
        stack.stop("worker-throughput")  # the bench restarts the worker between phases
        await asyncio.sleep(0.5)
        return 42

    try:
        assert await stack.supervise(phase(), every=0.1) == 42
    finally:
        stack.stop_all()


async def test_a_failing_phase_raises_its_own_error(tmp_path: Path) -> None:
    stack = make_stack(tmp_path)
    stack.start("web", python("import time; time.sleep(60)"))

    async def phase() -> None:
        raise ValueError("phase failed")

    try:
        with pytest.raises(ValueError, match="phase failed"):
            await stack.supervise(phase(), every=0.1)
    finally:
        stack.stop_all()


def test_children_run_in_the_runs_directory_with_the_checkout_importable(tmp_path: Path) -> None:
    """Not in the checkout, whose `.env` (a developer's, naming another namespace) the worker
    would read while the bench's own client does not: the worker then died at start."""
    stack = make_stack(tmp_path)
    proc = stack.start("probe", python("import os, workflows; print(os.getcwd()); print(workflows.__file__)"))
    assert proc.popen.wait(30) == 0
    cwd, module = proc.log.read_text().splitlines()[-2:]
    assert Path(cwd) == tmp_path
    assert Path(module).is_relative_to(REPO)
