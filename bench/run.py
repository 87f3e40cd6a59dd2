"""`make bench` (python -m bench): throughput, reply latency and scale against bare Temporal.

Everything runs on loopback, started and stopped here, each in its own process:

- the Temporal dev server (`<venv>/bin/temporal server start-dev`, headless, a database file in
  a temporary directory, the referral search attributes registered);
- the stand-ins (bench/partners.py): an SMTP sink and the Twilio stand-in of standins/, which also plays the
  partners by answering offers and check-ins with Twilio-signed `POST /sms/inbound`;
- the web app as deployed (`uvicorn web.app:app`);
- the worker as deployed (`python worker.py`), restarted for each phase with its policy;
- for the baseline, bench/baseline.py's worker.

All of them get a production-like environment: SMS_BACKEND=twilio (pointed at the fake), SMTP,
JSON logs at INFO, partner links signed, payload encryption on (REFERRAL_ENCRYPTION_KEYS, a key
generated for the run), the worker's Prometheus endpoint on.

Phases, in order:
1. throughput: N referrals (two services each) through their whole lifecycle, the partners
   answering by SMS (A, then OK and DONE to two check-ins 1 s and 2 s after acceptance), then
   the same N runs of the bare baseline (bench/baseline.py) on the same server;
2. reply latency: 1,000 signed `POST /sms/inbound` (A <code>) to open referrals, each followed
   or preceded (alternately) by a raw `execute_update` of the same update on the same
   referral's other service, one at a time;
3. scale: 10,000 referrals started and left waiting on their timers (policy.long.yaml); the
   worker's RSS once they are all offered and the worker is idle;
   (before it) status reads: `--status-reads` reads of a referral with a long history, with
   every worker stopped (bench/status_reads.py);
4. the test suite's wall time: `--with-suite` runs `python -m pytest -q` after the rest (the
   stack stopped first); otherwise `--suite-seconds` / BENCH_SUITE_SECONDS is printed, if given.

Prints one plain-text table. `--quick` runs small counts (a smoke test of the bench itself).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlencode

REPO = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
TASK_QUEUE = "bench-referrals"
BASELINE_QUEUE = "bench-baseline"
# WORKER_MAX_CACHED_REFERRALS for the comparison run with the sticky cache on
CACHED = 1000
CLK_TCK = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")


# Regions of each phase: their partners differ, so only the throughput phase's are auto-answered.
THROUGHPUT_REGION = "casablanca-settat"
LATENCY_REGION = "rabat-sale-kenitra"
SCALE_REGION = "fes-meknes"
SERVICES = ["shelter", "medical"]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- processes


class ProcessDied(RuntimeError):
    """A process the bench started exited on its own: the bench stops at once and shows why."""

    def __init__(self, proc: Proc) -> None:
        self.name, self.returncode, self.log = proc.name, proc.popen.returncode, proc.log
        self.tail = proc.last_lines()
        super().__init__(f"{proc.name} exited with status {self.returncode}; its last lines ({proc.log}):\n" + "\n".join(self.tail))


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    @classmethod
    def start(cls, name: str, argv: list[str], env: dict[str, str], logs: Path, cwd: Path) -> Proc:
        """Started in `cwd` (the run's directory, where no `.env` is: a developer's `.env` naming
        another namespace once made the worker exit at start), the checkout on PYTHONPATH."""
        log = logs / f"{name}.log"
        env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))}
        with log.open("ab") as fh:
            popen = subprocess.Popen(argv, cwd=cwd, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        return cls(name, popen, log)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def last_lines(self, n: int = 40) -> list[str]:
        try:
            return self.log.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return []

    def check(self) -> None:
        """Raise ProcessDied if the process has exited."""
        if self.popen.poll() is not None:
            raise ProcessDied(self)

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)

    def status(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak RSS) in kB."""
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
        return out

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def wait_idle(proc: Proc, quiet_for: float = 2.0, threshold: float = 0.05, limit: float = 600.0) -> None:
    """Until the process used less than `threshold` of a CPU for `quiet_for` seconds."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        before = proc.cpu_seconds()
        await asyncio.sleep(quiet_for)
        if proc.cpu_seconds() - before < threshold * quiet_for:
            return
    raise RuntimeError(f"{proc.name} never went idle")


# --------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    tmp: Path
    logs: Path
    temporal_port: int
    web_port: int
    smtp_port: int
    twilio_port: int
    env: dict[str, str]
    procs: dict[str, Proc] = field(default_factory=dict)
    encryption: bool = False

    @property
    def address(self) -> str:
        return f"{HOST}:{self.temporal_port}"

    @property
    def public_base_url(self) -> str:
        return f"http://{HOST}:{self.web_port}"

    def settings(self, **overrides: str):
        from config.settings import Settings

        values = {k.lower(): v for k, v in {**self.env, **overrides}.items() if k.lower() in Settings.model_fields}
        return Settings(_env_file=None, **values)  # type: ignore[arg-type]

    def start(self, name: str, argv: list[str], **env: str) -> Proc:
        proc = Proc.start(name, argv, {**self.env, **env}, self.logs, cwd=self.tmp)
        self.procs[name] = proc
        return proc

    def check(self) -> None:
        """Raise ProcessDied if any process of the stack has exited (those stopped on purpose
        have left `procs` before their signal)."""
        for proc in list(self.procs.values()):
            proc.check()

    async def supervise(self, work: Awaitable[T], every: float = 0.5) -> T:
        """Await `work`, but stop it at once with ProcessDied when a process of the stack dies:
        a dead worker would otherwise leave the bench waiting for referrals that never move."""
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=every)
                if done:
                    return task.result()
                self.check()
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None:
            proc.stop()

    def stop_all(self) -> None:
        for name in reversed(list(self.procs)):
            self.stop(name)


def make_stack() -> Stack:
    from config.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="referral-bench-"))
    logs = tmp / "logs"
    logs.mkdir()
    stack = Stack(tmp, logs, free_port(), free_port(), free_port(), free_port(), {})
    from standins.twilio import DEFAULT_ACCOUNT_SID, DEFAULT_AUTH_TOKEN, DEFAULT_FROM_NUMBER

    env = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env.update(
        TEMPORAL_ADDRESS=stack.address,
        REFERRAL_TASK_QUEUE=TASK_QUEUE,
        REFERRAL_DATA_DIR=str(tmp / "data"),
        REFERRAL_POLICY_FILE=str(BENCH / "policy.fast.yaml"),
        REFERRAL_PARTNERS_FILE=str(open_all_hours(tmp)),
        SMTP_HOST=HOST,
        SMTP_PORT=str(stack.smtp_port),
        SMS_BACKEND="twilio",
        TWILIO_ACCOUNT_SID=DEFAULT_ACCOUNT_SID,
        TWILIO_AUTH_TOKEN=DEFAULT_AUTH_TOKEN,
        TWILIO_FROM_NUMBER=DEFAULT_FROM_NUMBER,
        TWILIO_API_BASE_URL=f"http://{HOST}:{stack.twilio_port}",
        PUBLIC_BASE_URL=stack.public_base_url,
        WEB_PORT=str(stack.web_port),
        PARTNER_LINK_SECRET=base64.urlsafe_b64encode(os.urandom(32)).decode(),
        WEB_SESSION_SECRET=base64.urlsafe_b64encode(os.urandom(32)).decode(),
        REFERRAL_API_TOKENS="bench-api-token",
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
        # Bytecode cached as a normal install has it (in the run's directory, not the tree):
        # without it the workflow sandbox compiles workflows/referral.py from source for every
        # workflow run it creates, ~30 ms each (this machine sets PYTHONDONTWRITEBYTECODE=1).
        PYTHONPYCACHEPREFIX=str(tmp / "pycache"),
    )
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    fields = Settings.model_fields
    if "referral_encryption_keys" in fields:
        env["REFERRAL_ENCRYPTION_KEYS"] = "bench-1:" + base64.b64encode(os.urandom(32)).decode()
        stack.encryption = True
    if "metrics_port" in fields:
        env["METRICS_PORT"] = str(free_port())
        env["METRICS_HOST"] = HOST
    stack.env = env
    if "ledger_database_url" in fields:  # the workers write the ledger (a SQLite file in the data dir): migrate it first
        from ledger import migrate

        migrate.upgrade(stack.settings().ledger_url)
    return stack


async def start_temporal(stack: Stack) -> None:
    from temporalio.client import Client

    from starter.devstack import search_attribute_flags

    argv = [
        str(BIN / "temporal"), "server", "start-dev", "--headless",
        "--ip", HOST, "--port", str(stack.temporal_port),
        "--db-filename", str(stack.tmp / "temporal.db"),
        "--log-level", "error",
    ]  # fmt: skip
    argv += search_attribute_flags()
    proc = stack.start("temporal", argv)
    deadline = time.monotonic() + 60
    while True:
        proc.check()
        try:
            client = await Client.connect(stack.address)
            await client.count_workflows()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


async def wait_http(url: str, proc: Proc, limit: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + limit
    async with httpx.AsyncClient(timeout=2.0) as http:
        while True:
            proc.check()
            try:
                await http.get(url)
                return
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


def open_all_hours(tmp: Path) -> Path:
    """The production directory with every partner open at all hours: the bench measures the
    workflow whatever the time of day, and an offer to a partner closed now would wait for its
    opening (README, "Partners' capacity and hours")."""
    import yaml

    from config.settings import CONFIG_DIR

    data = yaml.safe_load((CONFIG_DIR / "partners.yaml").read_text(encoding="utf-8"))
    for partner in data["partners"]:
        partner.pop("hours", None)
    path = tmp / "partners.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def partner_numbers(region: str) -> dict[str, tuple[str, str]]:
    """service -> (partner id, SMS number) of the first candidate for the bench intake."""
    from activities.directory import load_directory
    from config.settings import CONFIG_DIR
    from workflows.models import MatchRequest

    directory = load_directory(CONFIG_DIR / "partners.yaml")
    out = {}
    for service in SERVICES:
        first = directory.match(MatchRequest(service=service, region=region, languages=["fr"], minor=False))[0]
        partner = directory.partner(first.partner_id)
        assert partner is not None and partner.sms
        out[service] = (partner.id, partner.sms)
    assert len({p for p, _ in out.values()}) == len(SERVICES), f"one partner holds two services in {region}"
    return out


def start_worker(stack: Stack, name: str, policy: str, **env: str) -> Proc:
    return stack.start(name, [sys.executable, str(REPO / "worker.py")], REFERRAL_POLICY_FILE=str(BENCH / policy), **env)


# --------------------------------------------------------------------------- referrals

_EXAMPLE = json.loads((REPO / "examples" / "adult-three-needs.json").read_text())


def intake(region: str, tag: str):
    from workflows.intake import Intake

    data = copy.deepcopy(_EXAMPLE)
    data["external_ref"] = f"BENCH-{tag}-{uuid.uuid4().hex[:16]}"
    data["needs"] = list(SERVICES)
    data["identified_by"]["region"] = region
    return Intake.model_validate(data)


async def start_many(client, region: str, tag: str, n: int, concurrency: int = 32) -> tuple[list[str], float]:
    """Start n referrals; their codes and the seconds the start calls took."""
    from starter.referrals import start_referral

    sem = asyncio.Semaphore(concurrency)
    codes: list[str] = [""] * n

    async def one(i: int) -> None:
        async with sem:
            started = await start_referral(client, intake(region, tag), TASK_QUEUE)
            codes[i] = started.code

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return codes, time.perf_counter() - t0


async def wait_stage(client, region: str, stage: str, n: int, limit: float = 900.0, strict: bool = True) -> int:
    """Wait until `n` referrals of `region` are at `stage`; how many are. Past `limit`, raise,
    or (not strict) return the count reached so the table can say it."""
    query = f"WorkflowType = 'ReferralWorkflow' AND ReferralRegion = '{region}' AND ReferralStage = '{stage}'"
    deadline = time.monotonic() + limit
    while (reached := (await client.count_workflows(query)).count) < n:
        if time.monotonic() > deadline:
            if not strict:
                return reached
            raise RuntimeError(f"fewer than {n} referrals reached {stage} in {limit:g} s")
        await asyncio.sleep(0.5)
    return reached


def history_shape(history) -> dict[str, int]:
    from temporalio.api.enums.v1 import EventType

    counts = {"events": len(history.events), "activities": 0, "timers": 0, "updates": 0}
    for e in history.events:
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            counts["activities"] += 1
        elif e.event_type == EventType.EVENT_TYPE_TIMER_STARTED:
            counts["timers"] += 1
        elif e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED:
            counts["updates"] += 1
    return counts


# --------------------------------------------------------------------------- phases


@dataclass
class Throughput:
    n: int
    seconds: float
    ok: int
    shape: dict[str, int]
    shape_max: dict[str, int]

    @property
    def rate(self) -> float:
        return self.n / self.seconds


async def throughput_ours(client, n: int) -> Throughput:
    from workflows.referral import ReferralWorkflow

    codes: list[str] = []
    sem = asyncio.Semaphore(32)
    results = []

    async def one() -> None:
        from starter.referrals import start_referral, workflow_id

        async with sem:
            started = await start_referral(client, intake(THROUGHPUT_REGION, "tp"), TASK_QUEUE)
        codes.append(started.code)
        handle = client.get_workflow_handle_for(ReferralWorkflow.run, workflow_id(started.code))
        results.append(await handle.result())

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    seconds = time.perf_counter() - t0
    ok = sum(
        1
        for r in results
        if r.closed_reason == "completed"
        and all(s.completed_at and s.escalation_level == 0 and [f.answer for f in s.follow_ups] == ["ok", "done"] for s in r.services)
    )
    if ok < n:
        paths = Counter(
            (r.closed_reason, tuple((s.escalation_level, tuple(f.answer for f in s.follow_ups)) for s in r.services)) for r in results
        )
        say(f"bench: lifecycles not as expected: {paths.most_common(5)}")
    shapes = []
    for code in codes[:20]:
        history = await client.get_workflow_handle(f"referral-{code}").fetch_history()
        shapes.append(history_shape(history))
    typical = {k: int(statistics.median(s[k] for s in shapes)) for k in shapes[0]}
    most = {k: max(s[k] for s in shapes) for k in shapes[0]}
    return Throughput(n, seconds, ok, typical, most)


async def throughput_baseline(client, n: int) -> Throughput:
    from bench.baseline import BaselineInput, BaselineReply, BaselineWorkflow

    sem = asyncio.Semaphore(32)
    ids: list[str] = []
    results = []
    run = uuid.uuid4().hex[:8]

    async def one(i: int) -> None:
        async with sem:
            handle = await client.start_workflow(BaselineWorkflow.run, BaselineInput(), id=f"baseline-{run}-{i}", task_queue=BASELINE_QUEUE)
        ids.append(handle.id)

        async def partner(service: int) -> None:
            for step in range(3):
                await handle.execute_update(BaselineWorkflow.reply, BaselineReply(service, step))

        await asyncio.gather(*(partner(s) for s in range(len(SERVICES))))
        results.append(await handle.result())

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    seconds = time.perf_counter() - t0
    ok = sum(1 for r in results if r == 2 * len(SERVICES))
    shapes = [history_shape(await client.get_workflow_handle(i).fetch_history()) for i in ids[:20]]
    typical = {k: int(statistics.median(s[k] for s in shapes)) for k in shapes[0]}
    most = {k: max(s[k] for s in shapes) for k in shapes[0]}
    return Throughput(n, seconds, ok, typical, most)


def percentiles(values: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(values, n=100, method="inclusive")
    return q[49], q[94], q[98]


@dataclass
class Latency:
    n: int
    web: list[float]
    raw: list[float]
    web_ok: int
    raw_ok: int


async def latency(stack: Stack, client, worker: Proc, n: int, warmup: int = 20) -> Latency:
    import httpx

    from standins.twilio import signed_headers
    from starter.referrals import workflow_id
    from workflows.models import PartnerReply
    from workflows.referral import ReferralWorkflow

    partners = partner_numbers(LATENCY_REGION)
    codes, _ = await start_many(client, LATENCY_REGION, "lat", n + warmup)
    await wait_stage(client, LATENCY_REGION, "awaiting_acceptance", n + warmup)
    await wait_idle(worker)
    url = stack.public_base_url + "/sms/inbound"
    token = stack.env["TWILIO_AUTH_TOKEN"]
    web_partner = partners[SERVICES[0]]
    raw_partner = partners[SERVICES[1]]
    web: list[float] = []
    raw: list[float] = []
    web_ok = raw_ok = 0
    async with httpx.AsyncClient(timeout=30.0) as http:

        async def by_webhook(code: str) -> tuple[float, bool]:
            sid = "SM" + uuid.uuid4().hex
            params = {
                "AccountSid": stack.env["TWILIO_ACCOUNT_SID"], "ApiVersion": "2010-04-01", "Body": f"A {code}",
                "From": web_partner[1], "MessageSid": sid, "NumMedia": "0", "NumSegments": "1",
                "SmsMessageSid": sid, "SmsSid": sid, "SmsStatus": "received", "To": stack.env["TWILIO_FROM_NUMBER"],
            }  # fmt: skip
            content, headers = urlencode(params), signed_headers(token, url, params)
            t0 = time.perf_counter()
            response = await http.post(url, content=content, headers=headers)
            dt = time.perf_counter() - t0
            return dt, response.status_code == 200 and f"R-{code}" in response.text and "<Message>" in response.text

        async def raw_update(code: str) -> tuple[float, bool]:
            handle = client.get_workflow_handle_for(ReferralWorkflow.run, workflow_id(code))
            reply = PartnerReply(partner_id=raw_partner[0], action="accept", channel="sms")
            t0 = time.perf_counter()
            outcome = await handle.execute_update(ReferralWorkflow.partner_reply, reply, id=f"bench-{uuid.uuid4().hex}")
            dt = time.perf_counter() - t0
            return dt, outcome.outcome == "accepted"

        for i, code in enumerate(codes):
            first, second = (by_webhook, raw_update) if i % 2 == 0 else (raw_update, by_webhook)
            for fn in (first, second):
                dt, ok = await fn(code)
                if i < warmup:
                    continue
                if fn is by_webhook:
                    web.append(dt)
                    web_ok += ok
                else:
                    raw.append(dt)
                    raw_ok += ok
    return Latency(n, web, raw, web_ok, raw_ok)


@dataclass
class Scale:
    n: int
    start_seconds: float
    settled_seconds: float
    rss_kb: int
    peak_kb: int
    idle_rss_before_kb: int
    offered: int  # referrals that reached awaiting_acceptance in the time allowed


async def scale(client, worker: Proc, n: int) -> Scale:
    await wait_idle(worker)
    before = worker.status()["VmRSS"]
    t0 = time.perf_counter()
    _, start_seconds = await start_many(client, SCALE_REGION, "scale", n, concurrency=64)
    # Each referral needs a few workflow tasks to be offered; allow ~0.2 s of them per referral.
    offered = await wait_stage(client, SCALE_REGION, "awaiting_acceptance", n, limit=max(900.0, 0.2 * n), strict=False)
    if offered == n:
        await wait_idle(worker)
    settled = time.perf_counter() - t0
    status = worker.status()
    return Scale(n, start_seconds, settled, status["VmRSS"], status["VmHWM"], before, offered)


# --------------------------------------------------------------------------- the table


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), platform.processor())
    mem = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")), 0)
    return f"{os.cpu_count()} CPU ({cpu}), {mem / 1048576:.0f} GiB RAM, Python {platform.python_version()}"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def table(
    args,
    stack: Stack,
    tp: Throughput | None,
    base: Throughput | None,
    cached: Throughput | None,
    lat: Latency | None,
    sc: Scale | None,
    suite: tuple[float, str] | None,
    reads=None,
) -> str:
    from bench.status_reads import rows as status_rows

    rows: list[tuple[str, str, str, str]] = []
    if tp and base:
        ratio = tp.rate / base.rate
        rows.append((
            f"throughput, ours ({tp.n} referrals, full lifecycle)",
            f"{tp.rate:.2f} referrals/s ({tp.seconds:.1f} s; {tp.ok}/{tp.n} as expected)",
            "", "",
        ))  # fmt: skip
        rows.append((f"throughput, bare baseline ({base.n} runs)", f"{base.rate:.2f} runs/s ({base.seconds:.1f} s; {base.ok}/{base.n} as expected)", "", ""))
        rows.append(("throughput ratio ours / baseline", f"{ratio:.2f}", ">= 0.85", verdict(ratio >= 0.85)))
        if cached:
            rows.append((
                f"ours with the sticky cache on ({CACHED} cached)",
                f"{cached.rate:.2f} referrals/s ({cached.ok}/{cached.n} as expected): {cached.rate / base.rate:.2f} x baseline",
                "", "",
            ))  # fmt: skip
        s, b = tp.shape, base.shape
        rows.append((
            "shape per run: activities / timers / updates",
            f"ours {s['activities']}/{s['timers']}/{s['updates']}, baseline {b['activities']}/{b['timers']}/{b['updates']}",
            "", "",
        ))  # fmt: skip
    if lat:
        w50, w95, w99 = (x * 1000 for x in percentiles(lat.web))
        r50, r95, r99 = (x * 1000 for x in percentiles(lat.raw))
        rows.append((
            f"reply POST /sms/inbound -> TwiML, p50/p95/p99 ({len(lat.web)})",
            f"{w50:.1f} / {w95:.1f} / {w99:.1f} ms ({lat.web_ok} answered as expected)",
            "p50 <= 25 ms", verdict(w50 <= 25),
        ))  # fmt: skip
        rows.append((f"raw execute_update, p50/p95/p99 ({len(lat.raw)})", f"{r50:.1f} / {r95:.1f} / {r99:.1f} ms ({lat.raw_ok} accepted)", "", ""))
        rows.append(("reply p99 / raw p99", f"{w99 / r99:.2f}x", "<= 1.5x", verdict(w99 <= 1.5 * r99)))
    if reads:
        rows += status_rows(reads)
    if sc:
        settled = "all offered" if sc.offered == sc.n else f"{sc.offered} of them offered (then stopped)"
        rows.append(("scale: open referrals waiting on timers", f"{sc.offered} of {sc.n} started", "10000", verdict(sc.offered >= 10000)))
        rows.append((
            "scale: time to start them",
            f"{sc.start_seconds:.1f} s of start calls ({sc.n / sc.start_seconds:.0f}/s); {sc.settled_seconds:.1f} s until {settled}",
            "", "",
        ))  # fmt: skip
        rows.append((
            "scale: worker RSS with them open",
            f"{sc.rss_kb / 1024:.0f} MB (peak {sc.peak_kb / 1024:.0f} MB; {sc.idle_rss_before_kb / 1024:.0f} MB before)",
            "<= 300 MB", verdict(sc.peak_kb / 1024 <= 300),
        ))  # fmt: skip
    if tp:
        # 160 since the status memo (issue 13): about ten memo upserts per lifecycle
        rows.append((
            "events per history, typical lifecycle",
            f"{tp.shape['events']} (max {tp.shape_max['events']} of 20)",
            "<= 160", verdict(tp.shape_max["events"] <= 160),
        ))  # fmt: skip
    if suite:
        rows.append(("test suite wall time", f"{suite[0]:.0f} s ({suite[1]})", "", ""))
    else:
        rows.append(("test suite wall time", "not measured (--with-suite, or --suite-seconds)", "", ""))
    widths = [max(len(r[i]) for r in [*rows, ("measure", "value", "target", "")]) for i in range(4)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    head = [
        f"Referral orchestrator bench, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {machine()}",
        f"encryption {'on' if stack.encryption else 'off'}; SMS via the Twilio fake, email via an SMTP sink, Temporal dev server, all on loopback",
        "",
        line(("measure", "value", "target", "")),
        line(tuple("-" * w for w in widths)),  # type: ignore[arg-type]
    ]
    return "\n".join(head + [line(r) for r in rows])


# --------------------------------------------------------------------------- main


async def run(args) -> str:
    from temporalio.client import Client

    from infra.temporal import connect

    stack = make_stack()
    say(f"bench: working directory {stack.tmp}")
    tp = base = cached = lat = sc = reads = None

    async def phases() -> None:
        nonlocal tp, base, cached, lat, sc, reads
        await start_temporal(stack)
        say("bench: dev server up")
        auto = ",".join(number for _, number in partner_numbers(THROUGHPUT_REGION).values())
        standins = stack.start(
            "partners",
            [sys.executable, "-m", "bench.partners", "--smtp-port", str(stack.smtp_port), "--twilio-port", str(stack.twilio_port),
             "--webhook", stack.public_base_url + "/sms/inbound", "--auto", auto],
        )  # fmt: skip
        web = stack.start(
            "web",
            [sys.executable, "-m", "uvicorn", "web.app:app", "--host", HOST, "--port", str(stack.web_port),
             "--log-level", "warning", "--no-access-log"],
        )  # fmt: skip
        await wait_http(f"http://{HOST}:{stack.twilio_port}/bench/stats", standins)
        await wait_http(stack.public_base_url + "/healthz", web)
        client = await connect(stack.settings())
        bare = await Client.connect(stack.address)

        if args.throughput:
            say("bench: throughput, bare baseline")
            stack.start("baseline-worker", [sys.executable, "-m", "bench.baseline", stack.address, BASELINE_QUEUE])
            await throughput_baseline(bare, 10)  # warm-up
            base = await throughput_baseline(bare, args.throughput)
            stack.stop("baseline-worker")
            say(f"bench: baseline {base.rate:.2f}/s {base.shape}")

            say("bench: throughput, ours")
            worker = start_worker(stack, "worker-throughput", "policy.fast.yaml")
            await throughput_ours(client, 10)  # warm-up
            tp = await throughput_ours(client, args.throughput)
            say(f"bench: ours {tp.rate:.2f}/s {tp.shape} ok={tp.ok}")
            if args.profile == "worker":
                await profile(stack, worker, lambda: throughput_ours(client, args.throughput), "worker-throughput")
            stack.stop("worker-throughput")

            # The same with Temporal's sticky cache, which production leaves off (README
            # "Reliability"): what the cache-off safety costs.
            say("bench: throughput, ours with the sticky cache")
            start_worker(stack, "worker-throughput-cached", "policy.fast.yaml", WORKER_MAX_CACHED_REFERRALS=str(CACHED))
            await throughput_ours(client, 10)  # warm-up
            cached = await throughput_ours(client, args.throughput)
            say(f"bench: ours, cached {cached.rate:.2f}/s ok={cached.ok}")
            stack.stop("worker-throughput-cached")

        if args.status_reads:
            from bench.status_reads import status_reads

            say(f"bench: status reads, a history of {args.status_history} events")
            reads = await status_reads(stack, client, args.status_reads, args.status_history)
            say(f"bench: status reads by describe p50/p95/p99 {[round(x * 1000, 1) for x in percentiles(reads.describe)]} ms, {reads.events} events")

        if args.replies or args.scale:
            worker = start_worker(stack, "worker-latency", "policy.long.yaml")
            if args.replies:
                say("bench: reply latency")
                if args.profile == "web":
                    lat = await profile(stack, stack.procs["web"], lambda: latency(stack, client, worker, args.replies), "web-latency")
                else:
                    lat = await latency(stack, client, worker, args.replies)
                say(f"bench: web p50/p95/p99 {[round(x * 1000, 1) for x in percentiles(lat.web)]}, raw {[round(x * 1000, 1) for x in percentiles(lat.raw)]}")
            stack.stop("worker-latency")
            if args.scale:
                say(f"bench: scale, {args.scale} referrals")
                worker = start_worker(stack, "worker-scale", "policy.long.yaml")
                await wait_idle(worker, quiet_for=3.0)
                if args.profile == "worker":
                    sc = await profile(stack, worker, lambda: scale(client, worker, args.scale), "worker-scale")
                else:
                    sc = await scale(client, worker, args.scale)
                say(f"bench: scale rss {sc.rss_kb // 1024} MB, peak {sc.peak_kb // 1024} MB, {sc.offered}/{sc.n} offered in {sc.settled_seconds:.0f} s")

    died = False
    try:
        await stack.supervise(phases())
    except ProcessDied:
        died = True
        raise
    finally:
        stack.stop_all()
        if not args.keep and not died:
            shutil.rmtree(stack.tmp, ignore_errors=True)
    suite = None
    if args.with_suite:
        say("bench: running the test suite")
        t0 = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", "pytest", "-q"], cwd=REPO, stdout=sys.stderr, stderr=sys.stderr)
        suite = (time.perf_counter() - t0, "passed" if code == 0 else f"pytest exit code {code}")
    elif args.suite_seconds:
        suite = (args.suite_seconds, "recorded, passed in")
    return table(args, stack, tp, base, cached, lat, sc, suite, reads)


async def profile(stack: Stack, proc: Proc, work, label: str):
    """py-spy over `proc` while `work` runs (py-spy is installed on demand, not a project
    dependency); the collapsed stacks are kept and the hottest frames printed."""
    spy = shutil.which("py-spy", path=str(BIN))
    if spy is None:
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    raw = stack.tmp / f"profile-{label}.txt"
    sampler = subprocess.Popen(
        [spy, "record", "--pid", str(proc.pid), "--format", "raw", "--rate", "100", "--output", str(raw), "--nonblocking"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        result = await work()
    finally:
        sampler.send_signal(signal.SIGINT)
        sampler.wait(60)
    say(f"bench: profile of {proc.name} ({label}) in {raw}")
    say(summarise_profile(raw))
    return result


def summarise_profile(raw: Path, top: int = 30) -> str:
    """Inclusive and own sample counts per frame from py-spy's collapsed stacks."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    if not raw.exists():
        return "(no samples)"
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    out = [f"{total} samples", "inclusive:"]
    out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in sorted(inclusive.items(), key=lambda x: -x[1])[:top]]
    out.append("own:")
    out += [f"  {100 * c / total:5.1f}%  {f}" for f, c in sorted(own.items(), key=lambda x: -x[1])[:top]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--throughput", type=int, default=300, help="referrals (and baseline runs) for the throughput figure; 0 skips")
    parser.add_argument("--replies", type=int, default=1000, help="replies timed for the latency figure; 0 skips")
    parser.add_argument("--scale", type=int, default=10000, help="open referrals for the scale figure; 0 skips")
    parser.add_argument("--status-reads", type=int, default=200, help="status reads timed with every worker stopped; 0 skips")
    parser.add_argument("--status-history", type=int, default=1400, help="history events of the referral whose status is read (one run: under 1,500)")
    parser.add_argument("--with-suite", action="store_true", help="also run the test suite and print its wall time")
    parser.add_argument(
        "--suite-seconds",
        type=float,
        default=float(os.environ.get("BENCH_SUITE_SECONDS") or 0),
        help="a recorded suite wall time to print instead",
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke test of the bench itself")
    parser.add_argument(
        "--profile",
        choices=("worker", "web"),
        help="py-spy the worker (a second throughput run, and the scale phase) or the web app (the latency phase)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, profiles)")
    args = parser.parse_args(argv)
    if args.quick:
        args.throughput, args.replies, args.scale, args.status_reads, args.status_history = 20, 40, 200, 20, 300
    # SIGTERM (a `timeout`, a CI cancel) stops the stack like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    t0 = time.perf_counter()
    try:
        text = asyncio.run(run(args))
    except ProcessDied as died:
        say(f"bench: stopped: {died}\nbench: the run's directory, with every log, is kept: {died.log.parent.parent}")
        return 1
    print(text)
    print(f"\n(bench took {time.perf_counter() - t0:.0f} s: python -m bench {' '.join(argv if argv is not None else sys.argv[1:])})")
    return 0
