"""`referral`: the coordinators' command line.

    referral start --file CASE.json|yaml [--json]
    referral status CODE
    referral respond CODE --partner ID accept|decline|ok|done|issue [--reason TEXT] [--decline-code N]
    referral assign CODE --service S --partner ID
    referral close CODE [--service S] --outcome OUTCOME [--reason TEXT]
    referral cancel CODE [--outcome OUTCOME] [--reason TEXT]
    referral withdraw-consent CODE [--reason TEXT] [--erase | --keep-data]
                                         (the open services: person_declined; asks whether to erase)
    referral erase CODE --reason TEXT | export-person CODE | erasures | keys rewrap
                                         (a person's data: starter/person_data_cli.py)
    referral list [--stage S] [--region R] [--overdue] [--json]
    referral worker
    referral ledger upgrade | delete --closed-before DATE      (starter/ledger_cli.py)
    referral report [--from DATE] [--to DATE] [--region R] [--format table|csv|json] [--no-suppression]

Exit status: 0 done, 2 bad input, unknown code or a refused action (one line on stderr naming
the problem), 1 Temporal unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import NoReturn

import yaml
from pydantic import ValidationError

from config.settings import get_settings
from infra.data_keys import ReferralDataErased
from infra.temporal import EncryptionNotConfigured, connect
from ledger.record import DECLINE_CODES, SERVICE_OUTCOMES
from starter import erasure, ledger_cli, person_data_cli, referrals
from workflows.intake import REGIONS, SERVICES, Intake, describe_errors
from workflows.models import PARTNER_ACTIONS, STAGES, CoordinatorAction, PartnerReply


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2."""


def complain(message: str, status: int = 2) -> int:
    print(f"referral: {message}", file=sys.stderr)
    return status


def fail(message: str, status: int = 2) -> NoReturn:
    raise SystemExit(complain(message, status))


def load_intake(path: str) -> Intake:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError:
        raise UsageError(f"--file: cannot read {path}") from None
    try:
        data = yaml.safe_load(text) if file.suffix in (".yaml", ".yml") else json.loads(text)
    except (ValueError, yaml.YAMLError):
        raise UsageError(f"--file: {path} is not valid {'YAML' if file.suffix in ('.yaml', '.yml') else 'JSON'}") from None
    if not isinstance(data, dict):
        raise UsageError(f"--file: {path} must hold one intake object")
    try:
        # JSON mode: datetimes as strings, exactly as the API receives them
        return Intake.model_validate_json(json.dumps(data, default=str))
    except ValidationError as err:
        raise UsageError(f"intake invalid: {describe_errors(err)}") from None


def _code(text: str) -> str:
    try:
        return referrals.normalise_code(text)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str))


async def _run(args: argparse.Namespace) -> int:
    settings = get_settings()
    if args.command == "reply":
        from starter.sms_reply import reply_command

        return await reply_command(settings, args)
    intake = load_intake(args.file) if args.command == "start" else None
    code = _code(args.code) if hasattr(args, "code") else None
    try:
        client = await connect(settings)
    except EncryptionNotConfigured as err:
        fail(str(err))
    except Exception:
        fail(f"cannot reach Temporal at {settings.temporal_address}", 1)

    if args.command == "start":
        assert intake is not None
        started = await referrals.start_referral(client, intake, settings.referral_task_queue)
        if args.json:
            _print_json({"code": started.code, "workflow_id": started.workflow_id, "created": started.created})
        else:
            note = "started" if started.created else "already started for this external_ref"
            print(f"R-{started.code}  {started.workflow_id}  ({note})")
        return 0

    assert code is not None or args.command == "list"
    if args.command == "status":
        status = await referrals.get_status(client, code)  # type: ignore[arg-type]
        print(status.model_dump_json(indent=2))
        return 0

    if args.command == "respond":
        reply = PartnerReply(
            partner_id=args.partner, action=args.action, reason=args.reason, decline_code=args.decline_code, channel="cli"
        )
        outcome = await referrals.partner_reply(client, code, reply)  # type: ignore[arg-type]
        print(f"R-{outcome.code}: {outcome.outcome} ({', '.join(outcome.services)})")
        return 0

    if args.command in ("assign", "cancel", "close", "withdraw-consent"):
        assert code is not None  # these commands take a code (argparse requires it)
        if args.command == "assign":
            _check_partner(settings, args.partner, args.service)
        action = CoordinatorAction(
            action=args.command.replace("-", "_"),
            service=getattr(args, "service", None),
            partner_id=getattr(args, "partner", None),
            reason=getattr(args, "reason", None),
            by=args.by,
            outcome=getattr(args, "outcome", None),
        )
        done = await referrals.coordinator_action(client, code, action)
        print(f"R-{done.code}: {done.action} done, stage {done.stage}")
        if args.command == "withdraw-consent":
            return await _erase_after_withdrawal(args, settings, client, done.code)
        return 0

    if args.command == "list":
        query = referrals.list_query(args.stage, args.region, args.overdue)
        rows = await referrals.list_referrals(client, query)
        if args.json:
            _print_json([r.model_dump(mode="json") for r in rows])
            return 0
        print(f"{'CODE':<8}{'STAGE':<21}{'URGENCY':<11}{'REGION':<27}{'LEVEL':<7}AWAITING")
        for r in rows:
            awaiting = ",".join(r.awaiting_partners) or "-"
            print(f"R-{r.code:<6}{r.stage or '-':<21}{r.urgency or '-':<11}{r.region or '-':<27}{r.escalation_level or 0:<7}{awaiting}")
        return 0
    raise UsageError(f"unknown command {args.command}")


async def _erase_after_withdrawal(args: argparse.Namespace, settings, client, code: str) -> int:
    """A withdrawal of consent asks whether to erase the person's data too (--erase / --keep-data,
    or a question when a person is at the terminal)."""
    wanted = args.erase
    if wanted is None and sys.stdin.isatty():
        answer = await asyncio.to_thread(input, f"Erase R-{code}'s personal data for good as well? [y/N] ")
        wanted = answer.strip().lower() in ("y", "yes", "o", "oui")
    if not wanted:
        print(f"R-{code}: the person's data is kept; to erase it: referral erase {code} --reason TEXT")
        return 0
    reason = "consent withdrawn" + (f": {args.reason}" if args.reason else "")
    outcome = await erasure.erase(client, settings, code, by=args.by or person_data_cli.default_by(), reason=reason[:500])
    print(person_data_cli.erasure_line(outcome.erasure, outcome.already))
    return 0


def _not_found(code: str) -> str:
    """`no referral R-X`, or when it was erased, when and by whom (the record of erasures)."""
    try:
        erased = erasure.erasure_state(get_settings(), code)
    except Exception:  # the ledger's database unreadable or not migrated: the plain answer
        erased = None
    if erased is not None and erased.erased_at is not None:
        return f"R-{code} was erased on {erased.erased_at:%Y-%m-%d} by {erased.requested_by}"
    return f"no referral R-{code}"


def _check_partner(settings, partner_id: str, service: str) -> None:
    from activities.directory import ConfigError, load_directory

    try:
        partner = load_directory(settings.referral_partners_file).partner(partner_id)
    except ConfigError as err:
        raise UsageError(str(err)) from None
    if partner is None:
        raise UsageError(f"--partner: no partner {partner_id!r} in the directory")
    if service not in partner.services:
        raise UsageError(f"--partner: {partner_id} does not offer {service}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="referral", description="Start and steer referrals.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("start", help="start a referral from an intake file")
    s.add_argument("--file", required=True, help="intake as JSON or YAML")
    s.add_argument("--json", action="store_true", help="print {code, workflow_id, created}")

    s = sub.add_parser("status", help="the referral's status as JSON")
    s.add_argument("code")

    s = sub.add_parser("respond", help="answer as a partner would by SMS")
    s.add_argument("code")
    s.add_argument("--partner", required=True)
    s.add_argument("action", choices=PARTNER_ACTIONS)
    s.add_argument("--reason")
    s.add_argument(
        "--decline-code",
        type=int,
        choices=sorted(DECLINE_CODES),
        help="decline only: " + ", ".join(f"{n} {meaning}" for n, meaning in DECLINE_CODES.items()),
    )

    s = sub.add_parser("assign", help="assign a partner to a service by hand")
    s.add_argument("code")
    s.add_argument("--service", required=True, choices=SERVICES)
    s.add_argument("--partner", required=True)
    s.add_argument("--by", help="coordinator id")

    for name, text in (
        ("cancel", "cancel the referral"),
        ("close", "close the referral, or one service"),
        ("withdraw-consent", "the person withdrew consent: stop everything"),
    ):
        s = sub.add_parser(name, help=text)
        s.add_argument("code")
        s.add_argument("--reason")
        s.add_argument("--by", help="coordinator id")
        if name == "close":
            s.add_argument("--service", choices=SERVICES, help="close only this service")
            s.add_argument("--outcome", required=True, choices=SERVICE_OUTCOMES, help="how the service (or every open service) ended")
        elif name == "cancel":
            s.add_argument("--outcome", choices=SERVICE_OUTCOMES, help="optional: how the open services ended")
        else:
            choice = s.add_mutually_exclusive_group()
            choice.add_argument("--erase", action="store_true", default=None, help="also erase the person's data for good")
            choice.add_argument("--keep-data", dest="erase", action="store_false", help="keep the data (do not ask)")

    s = sub.add_parser("list", help="referrals from Temporal visibility")
    s.add_argument("--stage", choices=STAGES)
    s.add_argument("--region", choices=REGIONS)
    s.add_argument("--overdue", action="store_true", help="open referrals past a deadline or escalated")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("reply", help="play a partner: send a signed SMS webhook to the running web app")
    s.add_argument("--from", dest="sender", required=True, help="the partner's number, E.164")
    s.add_argument("body", help='the SMS text, e.g. "A 7K3Q9"')

    sub.add_parser("worker", help="run the worker")
    ledger_cli.add_commands(sub)
    person_data_cli.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    status = _main(argv)
    # The Temporal client's native runtime can crash in interpreter shutdown of a short-lived
    # process (sdk-python#300): flush and leave without running finalizers.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _main(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    if args.command == "worker":
        from worker import main as worker_main

        worker_main()
        return 0
    if args.command in ("ledger", "report"):
        return ledger_cli.run(args, get_settings())
    if args.command in person_data_cli.COMMANDS:
        return person_data_cli.run(args, get_settings())
    try:
        return asyncio.run(_run(args))
    except UsageError as err:
        return complain(str(err))
    except referrals.ReferralNotFound as err:
        return complain(_not_found(err.code))
    except erasure.ErasurePending as err:
        return complain(str(err), 3)
    except ReferralDataErased as err:
        return complain(f"external_ref: {err}; a new referral needs a new external_ref")
    except referrals.ReferralRejected as err:
        if err.kind == "already_applied":
            print(f"referral: {err}")
            return 0
        return complain(f"refused ({err.kind}): {err}")
    except ValidationError as err:
        return complain(describe_errors(err))
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else 2
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    main()
