"""`referral ledger ...` and `referral report`: the ledger's commands (the ledger package does the work).

    referral ledger upgrade                         bring the ledger database to the code's migration
    referral ledger rebuild [CODE ...]              fill the ledger from Temporal (starter/ledger_rebuild.py)
    referral ledger delete --closed-before DATE     delete the referrals closed before that day
    referral report [--from DATE] [--to DATE] [--region R] [--format table|csv|json] [--no-suppression]

Dates are days (YYYY-MM-DD) in REFERRAL_TIMEZONE. Exit status: 0 done, 2 bad input, 1 the ledger
database unreachable or not migrated, Temporal unreachable, or a referral not rebuilt (one line on
stderr; never the database URL, which may hold a password).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo

from temporalio.service import RPCError

from config.settings import Settings
from infra.database import describe
from ledger import migrate
from ledger.report_output import to_csv, to_text
from ledger.reports import Filters
from ledger.store import LedgerNotReady, LedgerStore
from starter import ledger_rebuild
from starter.referrals import normalise_code
from workflows.intake import REGIONS


def iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a day as YYYY-MM-DD") from None


def add_commands(sub: argparse._SubParsersAction) -> None:
    """The `ledger` group and `report`, on the CLI's parser."""
    ledger = sub.add_parser("ledger", help="the de-identified ledger of referrals (database, migrations, retention)")
    commands = ledger.add_subparsers(dest="ledger_command", required=True)
    commands.add_parser("upgrade", help="create or migrate the ledger's tables (LEDGER_DATABASE_URL)")
    rebuild = commands.add_parser(
        "rebuild", help="write the record of every referral Temporal still knows (running, or closed within retention); safe to repeat"
    )
    rebuild.add_argument("codes", nargs="*", metavar="CODE", help="only these referrals (default: every one Temporal lists)")
    delete = commands.add_parser("delete", help="delete the referrals closed before a day (open ones are kept)")
    delete.add_argument("--closed-before", required=True, type=iso_date, metavar="DATE", help="YYYY-MM-DD, in REFERRAL_TIMEZONE")

    report = sub.add_parser("report", help="statistics from the ledger, small counts shown as <5")
    report.add_argument("--from", dest="date_from", type=iso_date, metavar="DATE", help="referrals started on or after this day")
    report.add_argument("--to", dest="date_to", type=iso_date, metavar="DATE", help="referrals started on or before this day")
    report.add_argument("--region", choices=REGIONS)
    report.add_argument("--format", choices=("table", "csv", "json"), default="table")
    report.add_argument("--no-suppression", action="store_true", help="show counts from 1 to 4 (never publish the output)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        if args.command == "report":
            return _report(args, settings)
        if args.ledger_command == "upgrade":
            # The data keys' database too, when DATA_KEYS_DATABASE_URL keeps them apart.
            for url in dict.fromkeys([settings.ledger_url, settings.data_keys_url]):
                revision = migrate.upgrade(url)
                print(f"ledger: {describe(url)} at revision {revision}")
            return 0
        if args.ledger_command == "delete":
            return _delete(args, settings)
        if args.ledger_command == "rebuild":
            return asyncio.run(_rebuild(settings, args.codes))
    except LedgerNotReady as err:
        print(f"referral: {err}", file=sys.stderr)
        return 1
    except Exception as err:  # SQLAlchemy's errors carry the URL; say what kind of failure only
        if type(err).__module__.startswith(("sqlalchemy", "psycopg", "sqlite3", "alembic")):
            print(f"referral: the ledger database failed ({type(err).__name__}) at {describe(settings.ledger_url)}", file=sys.stderr)
            return 1
        raise
    print(f"referral: unknown ledger command {args.ledger_command}", file=sys.stderr)
    return 2


def _delete(args: argparse.Namespace, settings: Settings) -> int:
    store = LedgerStore.from_settings(settings)
    store.check()
    before = datetime.combine(args.closed_before, time(), ZoneInfo(settings.referral_timezone))
    deleted = store.delete_closed_before(before)
    print(f"ledger: deleted {deleted} referral(s) closed before {args.closed_before} ({settings.referral_timezone}); open referrals kept")
    return 0


async def _rebuild(settings: Settings, given: list[str]) -> int:
    from infra.temporal import EncryptionNotConfigured, connect

    try:
        codes = [normalise_code(c) for c in given] or None
    except ValueError as err:
        print(f"referral: {err}", file=sys.stderr)
        return 2
    store = LedgerStore.from_settings(settings)
    store.check()
    try:
        client = await connect(settings)
    except EncryptionNotConfigured as err:
        print(f"referral: {err}", file=sys.stderr)
        return 1
    except Exception:
        print(f"referral: cannot reach Temporal at {settings.temporal_address}", file=sys.stderr)
        return 1
    try:
        done = await ledger_rebuild.rebuild(client, store, codes)
    except RPCError as err:  # listing the referrals failed
        print(f"referral: Temporal at {settings.temporal_address} failed ({err.status.name})", file=sys.stderr)
        return 1
    print(
        f"ledger: {done.read} referral(s) read from Temporal ({settings.temporal_namespace}): "
        f"{done.written} record(s) written, {done.kept} kept (the ledger's was as recent)"
    )
    for code, problem in sorted(done.failed.items()):
        print(f"referral: R-{code} not rebuilt ({problem})", file=sys.stderr)
    return 1 if done.failed else 0


def _report(args: argparse.Namespace, settings: Settings) -> int:
    store = LedgerStore.from_settings(settings)
    store.check()
    filters = Filters(date_from=args.date_from, date_to=args.date_to, region=args.region)
    report = store.report(filters, tz=ZoneInfo(settings.referral_timezone), now=datetime.now(UTC), suppress=not args.no_suppression)
    if args.format == "json":
        print(report.model_dump_json(indent=2))
    elif args.format == "csv":
        sys.stdout.write(to_csv(report))
    else:
        sys.stdout.write(to_text(report))
    if report.notice:
        print(f"referral: {report.notice}", file=sys.stderr)
    return 0
