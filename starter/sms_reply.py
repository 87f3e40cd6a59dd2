"""`referral reply`: play a partner's SMS by posting the webhook Twilio would, signed as Twilio signs it.

Also the one definition of that webhook's form (`inbound_form`) and of the URL Twilio signs
(`public_url`), shared by the web app's webhook, the tests and the bench.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import xml.etree.ElementTree as ET

import httpx
from twilio.request_validator import RequestValidator

from config.settings import Settings
from workflows.intake import normalise_phone

INBOUND_PATH = "/sms/inbound"
STATUS_PATH = "/sms/status"
DEV_TO_NUMBER = "+15005550006"  # `referral reply` without TWILIO_FROM_NUMBER


def public_url(settings: Settings, path: str, query: str = "") -> str:
    """The URL Twilio signs: PUBLIC_BASE_URL + path (+ ?query), whatever Host the request had."""
    url = settings.public_base_url.rstrip("/") + path
    return f"{url}?{query}" if query else url



def _messages_of(xml: str) -> list[str]:
    root = ET.fromstring(xml)
    return [(m.text or "").strip() for m in root.iter("Message")]


def inbound_form(account_sid: str, sender: str, to: str, body: str, sid: str) -> dict[str, str]:
    """The form Twilio posts to /sms/inbound for one incoming SMS."""
    return {
        "AccountSid": account_sid,
        "ApiVersion": "2010-04-01",
        "Body": body,
        "From": sender,
        "MessageSid": sid,
        "NumMedia": "0",
        "NumSegments": "1",
        "SmsMessageSid": sid,
        "SmsSid": sid,
        "SmsStatus": "received",
        "To": to,
    }


async def reply_command(settings: Settings, args: argparse.Namespace) -> int:
    """POST a Twilio-signed SMS webhook to the running web app and print its answer."""
    token = settings.twilio_auth_token
    if not token:
        print(
            "referral: TWILIO_AUTH_TOKEN is not set; the web app refuses unsigned webhooks. Use the web "
            "app's token (with `make run`, the \"Twilio token\" it prints, e.g. TWILIO_AUTH_TOKEN=dev-local-token).",
            file=sys.stderr,
        )
        return 2
    try:
        sender = normalise_phone(args.sender)
    except ValueError:
        print("referral: --from: not a valid phone number (E.164, e.g. +212650123441)", file=sys.stderr)
        return 2
    url = public_url(settings, INBOUND_PATH)
    sid = "SM" + secrets.token_hex(16)
    params = inbound_form(
        settings.twilio_account_sid or "AC" + "0" * 32, sender, settings.twilio_from_number or DEV_TO_NUMBER, args.body, sid
    )
    headers = {"X-Twilio-Signature": RequestValidator(token).compute_signature(url, params)}
    try:
        async with httpx.AsyncClient(timeout=20.0) as http:
            response = await http.post(url, data=params, headers=headers)
    except httpx.HTTPError:
        print(f"referral: cannot reach the web app at {url} (is `make run` running?)", file=sys.stderr)
        return 1
    if response.status_code == 403:
        print("referral: the web app refused the signature (403): TWILIO_AUTH_TOKEN and PUBLIC_BASE_URL must be the web app's", file=sys.stderr)
        return 1
    if response.status_code != 200:
        print(f"referral: the web app answered HTTP {response.status_code}", file=sys.stderr)
        return 1
    try:
        texts = _messages_of(response.text)
    except ET.ParseError:
        print("referral: the web app's answer is not TwiML", file=sys.stderr)
        return 1
    print("\n".join(texts) if texts else "(no reply)")
    if getattr(args, "xml", False):
        print(response.text)
    return 0
