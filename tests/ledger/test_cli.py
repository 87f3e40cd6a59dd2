"""`referral ledger upgrade|delete` and `referral report`, run as a script would, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from ledger import migrate
from ledger.reports import NOT_SUPPRESSED_NOTICE, Filters, build_report
from ledger.store import LedgerStore
from tests.ledger.test_reports import LEDGER

REPO = Path(__file__).resolve().parents[2]


def referral_cli(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "LEDGER_DATABASE_URL": url, "REFERRAL_TIMEZONE": "UTC"}
    return subprocess.run([sys.executable, "-m", "starter.cli", *args], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)


def test_upgrade_then_report(ledger_url: str) -> None:
    before = referral_cli(ledger_url, "report")
    assert before.returncode == 1 and "referral ledger upgrade" in before.stderr
    for _ in range(2):  # safe to run again
        done = referral_cli(ledger_url, "ledger", "upgrade")
        assert done.returncode == 0, done.stderr
        assert f"at revision {migrate.head_revision()}" in done.stdout
    store = LedgerStore.for_url(ledger_url)
    for record in LEDGER:
        store.upsert(record)

    shown = referral_cli(ledger_url, "report", "--format", "json")
    assert shown.returncode == 0, shown.stderr
    expected = build_report(LEDGER, Filters(), tz=UTC, now=datetime.now(UTC)).model_dump(mode="json")
    got = json.loads(shown.stdout)
    assert {k: v for k, v in got.items() if k != "generated_at"} == {k: v for k, v in expected.items() if k != "generated_at"}

    table = referral_cli(ledger_url, "report", "--region", "souss-massa", "--from", "2026-01-01", "--to", "2026-01-31")
    assert table.returncode == 0 and "in souss-massa: <5" in table.stdout and "2026-01-01 to 2026-01-31" in table.stdout

    csv = referral_cli(ledger_url, "report", "--format", "csv", "--no-suppression")
    assert csv.returncode == 0
    assert f"report,notice,,{NOT_SUPPRESSED_NOTICE}" in csv.stdout.splitlines()
    assert "by_month,2026-01,urgent,2" in csv.stdout.splitlines()
    assert NOT_SUPPRESSED_NOTICE in csv.stderr


def test_bad_input_names_the_option(ledger_url: str) -> None:
    for args, option in ((("report", "--from", "2026-02-30"), "--from"), (("report", "--region", "atlantis"), "--region"),
                         (("ledger", "delete", "--closed-before", "soon"), "--closed-before"), (("ledger", "delete"), "--closed-before")):  # fmt: skip
        out = referral_cli(ledger_url, *args)
        assert out.returncode == 2 and option in out.stderr, (args, out.stderr)


def test_delete_closed_before_a_day(ledger_url: str) -> None:
    migrate.upgrade(ledger_url)
    store = LedgerStore.for_url(ledger_url)
    for record in LEDGER:
        store.upsert(record)
    # Closed: the second urgent referral (12 January) and the five emergencies (4 to 8 February, at 20:00).
    out = referral_cli(ledger_url, "ledger", "delete", "--closed-before", "2026-02-06")
    assert out.returncode == 0, out.stderr
    assert "deleted 3 referral(s) closed before 2026-02-06" in out.stdout
    assert store.count() == len(LEDGER) - 3
    assert all(r.closed_at is None or r.closed_at >= datetime(2026, 2, 6, tzinfo=UTC) for r in store.records())


def test_an_unreachable_database_is_one_line_without_its_password() -> None:
    out = referral_cli("postgresql+psycopg://ledger:hunter2-secret@127.0.0.1:9/ledger", "report")
    assert out.returncode == 1
    assert out.stderr.startswith("referral: the ledger database cannot be opened") and "hunter2" not in out.stderr + out.stdout
