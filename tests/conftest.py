"""Fixtures that start real local servers on loopback and stop them again.

- `time_env`: Temporal's time-skipping test server (timers and escalation ladders).
- `dev_env`: the Temporal CLI dev server (updates, visibility, UI metadata).
- `smtp`: an aiosmtpd server that keeps every message it receives.
- `postgres`: a PostgreSQL server from Debian's packages in a temporary directory (tests/postgres.py).
- `make_settings` / `start_worker`: settings pointing at those and at the tests' own partner
  directory and policy (tests/fixtures/), with a migrated ledger (a SQLite file in the test's data
  dir, or LEDGER_DATABASE_URL's database when given), and a worker with the real activities on a
  fresh task queue.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import email
import email.policy
import os
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from activities.referral_activities import ReferralActivities
from config.settings import Settings
from infra.database import engine_for
from infra.temporal import data_converter
from ledger import migrate
from ledger.store import LedgerStore
from tests.fixtures import PARTNERS_FILE, POLICY_FILE
from tests.postgres import PostgresServer, running_postgres, why_unavailable
from worker import build_worker
from workflows import search_attributes as sa

BIN = Path(sys.executable).parent
TESTS = Path(__file__).resolve().parent

# Every client and worker in the tests encrypts, as in production: a fixed test key (never a
# real one), also in the environment so subprocesses (CLI, worker, web app) get it.
TEST_KEYS = "test-1:" + base64.b64encode(b"referral-orchestrator-test-key!!").decode()
os.environ["REFERRAL_ENCRYPTION_KEYS"] = TEST_KEYS
os.environ.pop("REFERRAL_ALLOW_PLAINTEXT", None)
# The referrals' data keys (infra/data_keys.py): one key table for the whole session, so the
# session's clients, each test's worker and ledger, and subprocesses all find the same keys.
# Tests of the key table itself (erasure, rotation) give their settings one of their own.
DATA_KEYS_DIR = Path(tempfile.mkdtemp(prefix="referral-data-keys-"))
DATA_KEYS_URL = f"sqlite:///{DATA_KEYS_DIR / 'data-keys.sqlite3'}"
os.environ["DATA_KEYS_DATABASE_URL"] = DATA_KEYS_URL
migrate.upgrade(DATA_KEYS_URL)
atexit.register(shutil.rmtree, DATA_KEYS_DIR, ignore_errors=True)
# The tests' own partner directory and policy (tests/fixtures/), never config/'s, so an
# operator's edit cannot change an outcome; in the environment too, for settings built without
# them and for subprocesses (CLI, worker, web app). The variables win over any `.env`.
os.environ["REFERRAL_PARTNERS_FILE"] = str(PARTNERS_FILE)
os.environ["REFERRAL_POLICY_FILE"] = str(POLICY_FILE)


def encrypted_converter():
    return data_converter(Settings(_env_file=None, referral_encryption_keys=TEST_KEYS))  # type: ignore[call-arg]

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_INDEXED = {
    "KEYWORD": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "KEYWORD_LIST": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
    "INT": IndexedValueType.INDEXED_VALUE_TYPE_INT,
    "DATETIME": IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
}


@pytest.fixture(scope="session")
async def time_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(BIN / "temporal-test-server"),
        data_converter=encrypted_converter(),
    )
    await env.client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=env.client.namespace,
            search_attributes={k.name: _INDEXED[k.indexed_value_type.name.removeprefix("INDEXED_VALUE_TYPE_")] for k in sa.ALL},
        )
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(BIN / "temporal"),
        search_attributes=sa.ALL,
        data_converter=encrypted_converter(),
        dev_server_log_level="error",
    )
    yield env
    await env.shutdown()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the session; each test makes its own database (create_database)."""
    reason = why_unavailable()
    if reason is not None:
        pytest.skip(reason)
    with running_postgres(free_port()) as server:
        yield server


@dataclass
class SmtpSink:
    """Every message the local SMTP server accepted, parsed."""

    port: int
    messages: list[EmailMessage] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if address in m["To"]]


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.sink.refuse:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.sink.messages.append(msg)  # type: ignore[arg-type]
        return "250 Message accepted"


@pytest.fixture(scope="session")
def smtp() -> AsyncIterator[SmtpSink]:
    sink = SmtpSink(port=free_port())
    controller = Controller(_Handler(sink), hostname="127.0.0.1", port=sink.port)
    controller.start()
    yield sink
    controller.stop()


@pytest.fixture(scope="session")
def ledger_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty SQLite ledger at the code's migration, copied into each test's data dir (faster
    than migrating each)."""
    path = tmp_path_factory.mktemp("ledger-template") / "ledger.sqlite3"
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    engine_for(url).dispose()  # the last connection closed: the WAL is folded into the file
    return path


def with_ledger(settings: Settings, template: Path | None = None) -> Settings:
    """The settings' ledger database brought to the code's migration (the default SQLite file
    copied from `template` when given)."""
    if settings.ledger_database_url is None and template is not None:
        target = settings.referral_data_dir / "ledger.sqlite3"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(template, target)
        return settings
    migrate.upgrade(settings.ledger_url)
    return settings


@pytest.fixture
def make_settings(tmp_path: Path, smtp: SmtpSink, ledger_template: Path) -> Callable[..., Settings]:
    smtp.messages.clear()
    smtp.refuse.clear()

    def make(**overrides: object) -> Settings:
        values = dict(
            referral_data_dir=tmp_path / "data",
            smtp_host="127.0.0.1",
            smtp_port=smtp.port,
            referral_policy_file=POLICY_FILE,
            referral_partners_file=PARTNERS_FILE,
            sms_backend="outbox",
            referral_encryption_keys=TEST_KEYS,
            metrics_port=0,
        )
        values.update(overrides)
        return with_ledger(Settings(_env_file=None, **values), ledger_template)  # type: ignore[arg-type]

    return make


@dataclass
class LedgerDB:
    """The ledger a test's worker writes to: the SQLite file in the test's data dir, or a fresh
    database on the session's PostgreSQL server. `settings(...)` is make_settings pointing at it."""

    kind: str  # sqlite | postgresql
    settings: Callable[..., Settings]
    url: str
    server: PostgresServer | None = None
    database: str | None = None

    def store(self) -> LedgerStore:
        return LedgerStore.for_url(self.url)

    def contents(self) -> bytes:
        """Everything the database holds, as bytes: the SQLite file with its WAL and shared
        memory, or pg_dump's SQL of the PostgreSQL database."""
        if self.server is not None:
            assert self.database is not None
            return self.server.dump(self.database).encode()
        path = Path(self.url.removeprefix("sqlite:///"))
        return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_db(request: pytest.FixtureRequest, make_settings: Callable[..., Settings]) -> Iterator[LedgerDB]:
    if request.param == "sqlite":
        db = LedgerDB("sqlite", make_settings, make_settings().ledger_url)
        yield db
        engine_for(db.url).dispose()
        return
    server: PostgresServer = request.getfixturevalue("postgres")
    name = server.create_database()
    url = server.url(name)

    def settings(**overrides: object) -> Settings:
        return make_settings(**{"ledger_database_url": url, **overrides})

    settings()  # migrated, as the SQLite file is
    yield LedgerDB("postgresql", settings, url, server, name)
    engine_for(url).dispose()
    server.drop_database(name)


@asynccontextmanager
async def running_worker(client: Client, settings: Settings) -> AsyncIterator[str]:
    task_queue = f"referrals-test-{uuid.uuid4()}"
    async with build_worker(client, settings, task_queue=task_queue, activities=ReferralActivities(settings)):
        yield task_queue


async def wait_for(predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.1):
    """Poll `predicate` (sync or async) until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval)
