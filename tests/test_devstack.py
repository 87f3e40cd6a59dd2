"""`make run` end to end: `python -m starter.devstack` brings up Temporal, the local SMTP server,
the worker and the web app; a referral started with the CLI produces an SMS and an email without
personal data; Ctrl-C stops everything; a second start on the same data dir still knows the
referral.

Slow (two dev-server starts, ~30-60 s). Everything listens on free loopback ports and keeps its
state in a tmp dir, so it runs beside a developer's own `make run`.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from config.settings import CONFIG_DIR, Settings
from ledger.store import LedgerStore
from tests.fixtures import DEMO_POLICY_FILE, PARTNERS_FILE

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
EXAMPLE = REPO / "examples" / "adult-three-needs.json"
PERSONAL = ("Amina", "+212650123456", "212650123456", "0650123456", "Berrechid", "passport held by the employer")


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class Stack:
    """`python -m starter.devstack` in its own process group, its output collected."""

    def __init__(self, env: dict[str, str]) -> None:
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "starter.devstack"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.strip() == "devstack ready":
                self.ready.set()

    def output(self, last: int = 80) -> str:
        return "\n".join(self.lines[-last:])

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.2):
            if self.proc.poll() is not None:
                pytest.fail(f"devstack exited with {self.proc.returncode} before it was ready:\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"devstack not ready within {timeout}s:\n{self.output()}")

    def interrupt(self, timeout: float = 30) -> int:
        """Ctrl-C, as a terminal sends it: SIGINT to the foreground process group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"devstack did not stop within {timeout}s of SIGINT:\n{self.output()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                # The children die with it (PR_SET_PDEATHSIG).
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


def wait_until(predicate: Callable[[], object], timeout: float, what: str, stack: Stack) -> object:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if stack.proc.poll() is not None:
            pytest.fail(f"devstack exited with {stack.proc.returncode} while waiting for {what}:\n{stack.output()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not seen within {timeout}s:\n{stack.output()}")
        time.sleep(0.3)


def referral(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "referral"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def sms_for(data_dir: Path, code: str) -> list[dict]:
    path = data_dir / "outbox" / "sms.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if code in r["body"]]


def mails_for(data_dir: Path, code: str) -> list[tuple[Path, email.message.EmailMessage]]:
    found = []
    for path in sorted((data_dir / "outbox" / "mail").glob("*.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        if f"R-{code}" in str(msg["Subject"]):
            found.append((path, msg))
    return found


def mail_text(msg: email.message.EmailMessage) -> str:
    parts = [f"{k}: {v}" for k, v in msg.items()]
    for part in msg.walk():
        if part.get_content_maintype() == "text":
            parts.append(part.get_content())
    return "\n".join(parts)


def test_make_run_starts_everything_stops_cleanly_and_resumes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    temporal_port, ui_port, smtp_port, web_port, metrics_port = free_ports(5)
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env.update(
        REFERRAL_DATA_DIR=str(data_dir),
        TEMPORAL_ADDRESS=f"127.0.0.1:{temporal_port}",
        DEV_UI_PORT=str(ui_port),
        SMTP_PORT=str(smtp_port),
        WEB_PORT=str(web_port),
        METRICS_PORT=str(metrics_port),
        # The tests' own directory and demo policy, as an operator would set their own.
        REFERRAL_PARTNERS_FILE=str(PARTNERS_FILE),
        REFERRAL_POLICY_FILE=str(DEMO_POLICY_FILE),
        PYTHONUNBUFFERED="1",
    )
    ports = (temporal_port, ui_port, smtp_port, web_port, metrics_port)

    stack = Stack(env)
    try:
        stack.wait_ready()
        printout = stack.output(40)
        assert f"http://localhost:{ui_port}" in printout
        assert f"http://localhost:{web_port}/docs" in printout
        assert "dev-api-token" in printout and "dev-local-token" in printout
        # No key given: make run made a development key, said so, and keeps it with the dev secrets.
        assert "created a local development key" in stack.output(200)
        assert "payloads encrypted with key id dev-" in printout
        assert f"http://localhost:{web_port}/codec" in printout
        dev_secrets = (data_dir / "dev-secrets.env").read_text()
        key_line = next(line for line in dev_secrets.splitlines() if line.startswith("REFERRAL_ENCRYPTION_KEYS="))
        env["REFERRAL_ENCRYPTION_KEYS"] = key_line.split("=", 1)[1].strip("'\"")  # what sourcing the env file gives
        ui_settings = httpx.get(f"http://127.0.0.1:{ui_port}/api/v1/settings", timeout=5).json()
        assert ui_settings["Codec"]["Endpoint"] == f"http://localhost:{web_port}/codec"
        assert httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).status_code == 200

        started = referral(env, "start", "--file", str(EXAMPLE), "--json")
        assert started.returncode == 0, started.stderr
        code = json.loads(started.stdout)["code"]

        offers = wait_until(lambda: sms_for(data_dir, code), 45, f"an SMS for R-{code}", stack)
        mails = wait_until(lambda: mails_for(data_dir, code), 45, f"an .eml with R-{code} in its subject", stack)
        texts = [m["body"] + m["to"] for m in offers] + [mail_text(msg) for _, msg in mails]
        for text in texts:
            for secret in PERSONAL:
                assert secret not in text, f"personal data {secret!r} in an outgoing message"

        assert httpx.get(f"http://127.0.0.1:{web_port}/healthz", timeout=5).status_code == 200
        assert httpx.get(f"http://127.0.0.1:{ui_port}/", timeout=5).status_code == 200
        # make run migrated the ledger; the worker wrote the referral's record with its first offers.
        assert "devstack: ledger sqlite:///" in stack.output(200)
        ledger = LedgerStore.for_url(f"sqlite:///{(data_dir / 'ledger.sqlite3').resolve()}")
        record = wait_until(lambda: ledger.get(code), 30, f"the ledger's record of R-{code}", stack)
        assert record.region == "casablanca-settat" and record.services

        assert stack.interrupt() == 0, stack.output()
        assert "devstack: stopped" in stack.output(10)
        assert all(port_free(p) for p in ports), f"a port is still held after Ctrl-C: {[p for p in ports if not port_free(p)]}"
        # Checked once mail has stopped arriving: while the stack runs a write may be under way.
        assert not list((data_dir / "outbox" / "mail").glob(".*.tmp")), "a half-written .eml was left behind"
    finally:
        stack.kill()

    # Same data dir: the referral survived in temporal.db.
    again = Stack(env)
    try:
        again.wait_ready()
        status = referral(env, "status", code)
        assert status.returncode == 0, status.stderr
        assert code in status.stdout
        assert json.loads(status.stdout)
        assert again.interrupt() == 0, again.output()
    finally:
        again.kill()
    assert all(port_free(p) for p in ports)


def test_make_run_picks_the_operators_directory_and_the_demo_policy(tmp_path: Path) -> None:
    """The test above runs on the tests' own files; left to itself, `make run` takes config/'s
    directory and its demo policy (reading neither here: only the choice is checked)."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env.update(REFERRAL_DATA_DIR=str(tmp_path / "data"), PYTHONPATH=str(REPO))
    code = "from starter.devstack.environment import plan; s = plan().settings; print('files', s.referral_partners_file, s.referral_policy_file)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    files = next(line.split()[1:] for line in out.stdout.splitlines() if line.startswith("files "))
    assert files == [str(CONFIG_DIR / "partners.yaml"), str(CONFIG_DIR / "policy.demo.yaml")]
