"""What `make run` prints once everything is up: where to look, the dev tokens, how payloads are
protected, and the first commands to try from another terminal (whose environment it writes to
`$REFERRAL_DATA_DIR/devstack.env`)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from config.settings import Settings
from starter.devstack.console import HOST, say, shown
from starter.devstack.environment import Plan, write_env_file


def protection_lines(p: Plan) -> list[str]:
    s = p.settings
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


def ledger_place(s: Settings) -> str:
    from infra.database import describe

    url = s.ledger_url
    return shown(Path(url.removeprefix("sqlite:///"))) if url.startswith("sqlite:///") else describe(url)


def print_ready(p: Plan) -> None:
    s = p.settings
    ns = s.temporal_namespace
    web = f"http://localhost:{s.web_port}"
    sms = (
        shown(s.outbox_dir / "sms.jsonl")
        if s.sms_backend == "outbox"
        else f"sent through {s.sms_backend} (SMS_BACKEND)"
    )
    env_file = p.data_dir / "devstack.env"
    write_env_file(env_file, p.dev_env, "# The environment `make run` gave its children; source it to use `referral` against it.\n")
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
        f"  Reports       {web}/reports   (`referral report`; the ledger: {ledger_place(s)})",
        f"  API token     {os.environ.get('REFERRAL_API_TOKENS', '')}   (Authorization: Bearer ...)",
        f"  Twilio token  {os.environ.get('TWILIO_AUTH_TOKEN', '')}   (dev only: lets `referral reply` sign webhooks locally)",
    ]
    if os.environ.get("REFERRAL_API_TOKENS"):
        token = os.environ["REFERRAL_API_TOKENS"].split(",")[0].strip()
        lines.append(f"  Web form      {web}/login   login api, password {token} (or COORDINATOR_LOGINS)")
    if (p.data_dir / "dev-secrets.env").exists():
        lines.append(f"  Dev secrets   {shown(p.data_dir / 'dev-secrets.env')}")
    lines += protection_lines(p)
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
