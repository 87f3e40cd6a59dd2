"""`referral erase`, `referral export-person`, `referral erasures` and `referral keys rewrap`: a
person's rights over their data (Law 09-08: access, rectification, opposition), from the CLI.

    referral erase CODE --reason TEXT [--by ID] [--wait SECONDS]
        close the referral if open (consent withdrawn, partners told), destroy its data key,
        delete its runs from Temporal, mark its ledger row erased; recorded (code, when, who, why)
    referral export-person CODE [--output FILE]
        what the system holds about the person, as JSON, for the data protection officer
    referral erasures [--json]          the record of erasures
    referral keys rewrap                wrap every data key under the first REFERRAL_ENCRYPTION_KEYS
                                        entry (after a rotation, before retiring the old key)

Exit status: 0 done (or already erased), 2 bad input or no such referral, 1 Temporal or the
database unreachable or not migrated, 3 an erasure started but not finished within --wait.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from datetime import timedelta
from pathlib import Path

from pydantic import ValidationError

from config.settings import Settings
from infra.codec import PayloadDecryptionError
from infra.data_keys import DataKeysNotReady, DataKeyUnavailable
from infra.temporal import EncryptionNotConfigured, connect, payload_codec
from ledger.erasures import Erasure
from ledger.migrate import LedgerNotReady
from starter import erasure, referrals
from starter.referrals import normalise_code

COMMANDS = ("erase", "export-person", "erasures", "keys")


def default_by() -> str:
    """Who erases, when --by is not given: the account running the command."""
    try:
        return f"cli:{getpass.getuser()}"[:64]
    except (KeyError, OSError):
        return "cli"


def add_commands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("erase", help="erase the person's data for good (closes the referral if open)")
    s.add_argument("code")
    s.add_argument("--reason", required=True, help="why (recorded; never the person's name or other personal data)")
    s.add_argument("--by", default=None, help="who asks (recorded; default: cli:<your account>)")
    s.add_argument("--wait", type=float, default=erasure.DEFAULT_WAIT.total_seconds(), help="seconds to wait for it to finish (default 120)")

    s = sub.add_parser("export-person", help="what is held about the person, as JSON (for the data protection officer)")
    s.add_argument("code")
    s.add_argument("--output", help="write to this file (created with owner-only permissions) instead of stdout")

    s = sub.add_parser("erasures", help="the record of erasures (code, when, who, why)")
    s.add_argument("--json", action="store_true")

    keys = sub.add_parser("keys", help="the referrals' data keys")
    commands = keys.add_subparsers(dest="keys_command", required=True)
    commands.add_parser("rewrap", help="wrap every data key under the current master key (after a rotation)")


def erasure_line(record: Erasure, already: bool = False) -> str:
    when = f"{record.erased_at:%Y-%m-%d %H:%M} UTC" if record.erased_at else "not finished"
    note = " (already erased)" if already else ""
    return f"R-{record.code}: erased {when} by {record.requested_by}{note}"


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return asyncio.run(_run(args, settings))
    except (LedgerNotReady, DataKeysNotReady) as err:
        print(f"referral: {err}", file=sys.stderr)
        return 1
    except referrals.ReferralNotFound as err:
        print(f"referral: {err}", file=sys.stderr)
        return 2
    except ValidationError as err:
        fields = "; ".join(f"--{'.'.join(map(str, e['loc'])).replace('requested_by', 'by')}: {e['msg']}" for e in err.errors())
        print(f"referral: {fields}", file=sys.stderr)
        return 2
    except erasure.ErasurePending as err:
        print(f"referral: {err}", file=sys.stderr)
        return 3
    except (erasure.ErasureFailed, PayloadDecryptionError) as err:
        print(f"referral: {err}", file=sys.stderr)  # names key ids, never data
        return 1


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "erasures":
        rows = await asyncio.to_thread(erasure.erasures, settings)
        if args.json:
            print(json.dumps([r.model_dump(mode="json") for r in rows], indent=2, ensure_ascii=False))
        else:
            for r in rows:
                print(f"{erasure_line(r)}  requested {r.requested_at:%Y-%m-%d %H:%M} UTC  reason: {r.reason}")
        return 0
    if args.command == "keys":
        codec = payload_codec(settings)
        if codec is None or codec.data_keys is None:
            print("referral: REFERRAL_ENCRYPTION_KEYS is not set: there are no data keys", file=sys.stderr)
            return 2
        try:
            count = await asyncio.to_thread(codec.data_keys.rewrap)
        except DataKeyUnavailable as err:
            print(f"referral: {err}", file=sys.stderr)
            return 1
        print(f"data keys: {count} rewrapped under master key id {codec.data_keys.wrapping_key_id}")
        return 0
    try:
        code = normalise_code(args.code)
    except ValueError as err:
        print(f"referral: CODE: {err}", file=sys.stderr)
        return 2
    try:
        client = await connect(settings)
    except EncryptionNotConfigured as err:
        print(f"referral: {err}", file=sys.stderr)
        return 2
    except Exception:
        print(f"referral: cannot reach Temporal at {settings.temporal_address}", file=sys.stderr)
        return 1
    if args.command == "erase":
        outcome = await erasure.erase(
            client, settings, code, by=args.by or default_by(), reason=args.reason, wait=timedelta(seconds=max(args.wait, 1))
        )
        print(erasure_line(outcome.erasure, outcome.already))
        return 0
    from starter.person_export import export_person

    exported = await export_person(client, settings, code)
    text = json.dumps(exported, indent=2, ensure_ascii=False, default=str) + "\n"
    if args.output:
        try:
            await asyncio.to_thread(_write_private, Path(args.output), text)
        except FileExistsError:
            print(f"referral: --output: {args.output} exists; give a new file", file=sys.stderr)
            return 2
        print(f"R-{code}: written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _write_private(path: Path, text: str) -> None:
    """A new file only its owner can read: it holds the person's data."""
    path.touch(mode=0o600, exist_ok=False)
    path.write_text(text, encoding="utf-8")
