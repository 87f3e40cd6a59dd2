"""Twilio's webhooks: partners' SMS replies in, delivery status callbacks in; `referral reply`.

    POST /sms/inbound   a partner's SMS -> the matching update -> a TwiML <Message> answer
    POST /sms/status    ?code=<CODE>&partner=<id>: undelivered/failed -> a channel problem

Both check `X-Twilio-Signature` against the URL Twilio was given: `PUBLIC_BASE_URL` + the
endpoint's path + the query string, never the request's Host header (a proxy or an attacker
sets that). No TWILIO_AUTH_TOKEN, no signature or a wrong one: 403 and nothing changes.

Inbound, in order: the sender's number is looked up in the partner directory (an unknown number
gets the same neutral text in French, Arabic and English, which says nothing about any
referral); the body is parsed (`starter.sms_commands`); STOP records the opt-out and tells every
open referral of that partner (`report_channel_problem`), START removes it; HELP lists the
commands and the sender's open codes; a reply without a code applies only when the sender has
exactly one open referral (visibility: `ReferralPartners`), otherwise the answer lists them.
The update's outcome or rejection becomes a reply in the partner's language (`sms_reply.*` in
config/messages/<lang>.po): the code and what happened, never anything about the person. A
decline's reason code (`D 7K3Q9 1`) is recorded with it and its meaning confirmed; a number that is
no reason code (`D 7K3Q9 5`) records nothing and is answered with the list of codes, as HELP is.

Twice the same MessageSid, once the effect, whichever web process each delivery reaches
(everything below lives in `<REFERRAL_DATA_DIR>/sms_webhook.sqlite3` or in Temporal, nothing
in a process's memory, so `uvicorn --workers N` is safe):
- the answer given to each MessageSid is kept (table `sms_replies`, a week) and a redelivery
  gets it again without touching Temporal;
- deliveries of one MessageSid are handled one at a time: each takes the MessageSid's lease
  (table `sms_claims`) and renews it while it works; a delivery arriving meanwhile waits, then
  gets the answer kept, or handles the message itself when none was (a provisional answer);
  the lease of a process that died lapses within seconds;
- the update's id is `sms-<MessageSid>`, so even without that record (lost) Temporal applies
  the reply once and answers the redelivery with the same outcome.

Twilio waits 15 s for an answer. Temporal calls share a budget of `TEMPORAL_TIMEOUT_SECONDS`;
when an update is still running at the end of it, the partner is told "received, we will
confirm", the update goes on in the background (same update id), and its outcome is then kept
as the MessageSid's answer and sent to the partner as an SMS through the configured backend.
That provisional answer is not recorded: a redelivery of the MessageSid waits for the same
update again (Temporal attaches it to the one in flight) instead of repeating "received". The
outcome is sent as an SMS only by whoever keeps it first: when a redelivery's answer already
carried it, no SMS repeats it.
When Temporal cannot be reached at all the partner is asked to send the message again later;
nothing was applied, and a later message applies normally.

Opt-outs (table `sms_opt_outs`) are read by the SMS activity through `is_opted_out`: the
worker and the web app must share REFERRAL_DATA_DIR (Twilio's own error 21610 is the safety
net where they do not).

Logs carry the MessageSid, the partner id and the outcome kind: never the body or a number.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import parse_qsl

import structlog
from fastapi import APIRouter, Request, Response
from starlette.datastructures import FormData
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode
from twilio.request_validator import RequestValidator
from twilio.twiml.messaging_response import MessagingResponse

from activities.directory import ConfigError, Partner, load_directory
from activities.sms_channel import build_sms_backend
from activities.sms_store import (
    clear_opt_out,
    is_opted_out,
    keep_reply,
    one_delivery_at_a_time,
    record_opt_out,
    remember_reply,
)
from config.settings import Settings
from infra.translations import DEFAULT_LANGUAGE, LANGUAGES, Translations, translations
from ledger.record import DECLINE_CODES
from starter import capacity, referrals
from starter.sms_capacity import CapacityCommand
from starter.sms_commands import SmsCommand, parse_sms
from starter.sms_reply import INBOUND_PATH, STATUS_PATH, public_url
from workflows.intake import normalise_phone
from workflows.models import ChannelReport, PartnerReply
from workflows.referral import ReferralWorkflow

log = structlog.get_logger("sms_webhook")
router = APIRouter()

# All Temporal calls of one webhook request share this budget, well within Twilio's 15 s.
TEMPORAL_TIMEOUT_SECONDS = 8.0
# An update still running after the answer went out is given this long before it is left alone.
LATE_UPDATE_TIMEOUT_SECONDS = 300.0
# Twilio's forms are a few hundred bytes; a concatenated 1,600-character SMS stays far below.
MAX_BODY_BYTES = 64 * 1024
FAILED_STATUSES = ("undelivered", "failed")
MAX_LISTED_CODES = 10

_PARTNER_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_SID = re.compile(r"^[A-Za-z0-9]{2,64}$")
# What to write for each action in an example ("reply again with the code, e.g. A 7K3Q9").
_KEYWORD = {"accept": "A", "decline": "D", "ok": "OK", "done": "DONE", "issue": "ISSUE"}
_FORBIDDEN = Response(status_code=403, content="forbidden", media_type="text/plain")
_T = TypeVar("_T")


# --- signatures ----------------------------------------------------------------------------


async def _signed_form(request: Request, path: str) -> dict[str, str] | None:
    """The request's form (first value of each field) if Twilio signed it for our public URL,
    else None. The signature is checked over every value, repeated fields included."""
    settings: Settings = request.app.state.settings
    token = settings.twilio_auth_token
    signature = request.headers.get("x-twilio-signature")
    if not token or not signature:
        return None
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("application/x-www-form-urlencoded"):
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            return None
    try:
        pairs = parse_qsl(body.decode("ascii"), keep_blank_values=True, max_num_fields=200, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return None
    query = request.scope.get("query_string", b"").decode("latin-1")
    url = public_url(settings, path, query)
    if not RequestValidator(token).validate(url, FormData(list(pairs)), signature):
        return None
    form: dict[str, str] = {}
    for name, value in pairs:
        form.setdefault(name, value)
    return form


# --- replies -------------------------------------------------------------------------------


def reply_text(settings: Settings, language: str, key: str, **values: object) -> str:
    if language not in LANGUAGES:
        language = DEFAULT_LANGUAGE
    words = translations(settings.referral_messages_dir, language)
    if "code" in values:
        values.setdefault("ref", f"R-{values['code']}")
    if "services" in values:
        labels = words.labels("services")
        values["services"] = ", ".join(labels.get(s, s) for s in values["services"])  # type: ignore[attr-defined]
    if "reason" in values:
        values["reason"] = decline_reason(words, values["reason"])  # type: ignore[arg-type]
    if "reasons" in values:
        separator = "، " if language == "ar" else ", "
        values["reasons"] = separator.join(decline_reason(words, n) for n in values["reasons"])  # type: ignore[attr-defined]
    return words.format(f"sms_reply.{key}", **values).strip()


def decline_reason(words: Translations, decline_code: int) -> str:
    """A decline code as an SMS names it: `2 not a service we offer`."""
    label = words.labels("decline_codes").get(str(decline_code))
    return f"{decline_code} {label}" if label else str(decline_code)


def neutral_text(settings: Settings) -> str:
    """For a number not in the directory: the same words whatever it sent, in all three languages."""
    return "\n".join(reply_text(settings, lang, "unknown_sender") for lang in LANGUAGES)


def twiml(text: str) -> Response:
    response = MessagingResponse()
    if text:
        response.message(text)
    return Response(content=str(response), media_type="application/xml")


@dataclass(frozen=True)
class Answer:
    kind: str  # for logs: the outcome or rejection kind
    text: str
    final: bool = True  # False: not kept for the MessageSid, a redelivery is handled anew


# --- the budget of Temporal calls ----------------------------------------------------------


class _Budget:
    def __init__(self, seconds: float) -> None:
        self.deadline = asyncio.get_running_loop().time() + seconds

    def left(self) -> float:
        return max(0.0, self.deadline - asyncio.get_running_loop().time())

    async def run(self, awaitable: Awaitable[_T]) -> _T:
        return await asyncio.wait_for(awaitable, self.left())


class _Unavailable(Exception):
    """Temporal did not answer in time, or could not be reached."""


async def _open_codes(client: Client, partner_id: str, budget: _Budget) -> list[str]:
    """Codes of the running referrals this partner is offered or serving, newest first."""
    query = (
        "WorkflowType = 'ReferralWorkflow' AND ExecutionStatus = 'Running' "
        f"AND ReferralPartners = '{partner_id}'"
    )
    try:
        rows = await budget.run(referrals.list_referrals(client, query, limit=50))
    except (TimeoutError, RPCError) as err:
        raise _Unavailable(type(err).__name__) from None
    codes: list[str] = []
    for row in rows:
        if row.code not in codes:
            codes.append(row.code)
    return codes


def _codes_text(codes: list[str], settings: Settings, language: str) -> str:
    if not codes:
        return reply_text(settings, language, "no_codes")
    shown = [f"R-{c}" for c in codes[:MAX_LISTED_CODES]]
    return ", ".join(shown) + (" …" if len(codes) > MAX_LISTED_CODES else "")


# --- applying a reply ----------------------------------------------------------------------

# Late confirmations still running in this process (only so that they are not collected).
_background: set[asyncio.Task] = set()


def _rejection_key(kind: str, action: str) -> str:
    if kind == "not_applicable":
        return "already_accepted" if action in ("accept", "decline") else "accept_first"
    if kind == "already_applied":
        return "nothing_to_confirm" if action == "ok" else "already_applied"
    if kind == "unknown_action":
        return "unknown_command"
    if kind in ("not_offered", "reassigned", "referral_closed"):
        return kind
    return "invalid"


async def _apply(client: Client, settings: Settings, partner: Partner, command: SmsCommand, code: str, sid: str) -> Answer:
    """Run the update; any outcome or rejection becomes the partner's answer."""
    lang = partner.language
    reply = PartnerReply(
        partner_id=partner.id, action=command.action, reason=command.text, decline_code=command.decline_code, channel="sms"
    )
    try:
        outcome = await asyncio.wait_for(
            referrals.partner_reply(client, code, reply, update_id=f"sms-{sid}"), LATE_UPDATE_TIMEOUT_SECONDS
        )
    except referrals.ReferralRejected as err:
        key = _rejection_key(err.kind, command.action)
        return Answer(err.kind, reply_text(settings, lang, key, code=code))
    except referrals.ReferralNotFound:
        return Answer("unknown_code", reply_text(settings, lang, "unknown_code", code=code))
    except (TimeoutError, RPCError) as err:
        # Not known to be applied; a redelivery (same update id) or a new message settles it.
        log.warning("sms reply outcome unknown", message_sid=sid, partner=partner.id, error=type(err).__name__)
        return Answer("unavailable", reply_text(settings, lang, "unavailable"), final=False)
    if outcome.outcome == "declined" and command.decline_code is not None:
        # The answer confirms the reason code's meaning (never the partner's own words).
        text = reply_text(settings, lang, "declined_with_code", code=code, services=outcome.services, reason=command.decline_code)
        return Answer(outcome.outcome, text)
    return Answer(outcome.outcome, reply_text(settings, lang, outcome.outcome, code=code, services=outcome.services))


async def _apply_within(client: Client, settings: Settings, partner: Partner, number: str, command: SmsCommand, code: str, sid: str, budget: _Budget) -> Answer:
    task = asyncio.create_task(_apply(client, settings, partner, command, code, sid))
    try:
        return await asyncio.wait_for(asyncio.shield(task), budget.left())
    except TimeoutError:
        _keep(asyncio.create_task(_finish_late(settings, sid, number, partner.id, task)))
        return Answer("received", reply_text(settings, partner.language, "received", code=code), final=False)


async def _finish_late(settings: Settings, sid: str, number: str, partner_id: str, task: asyncio.Task[Answer]) -> None:
    """The update outlived the webhook request: keep its answer and send it as an SMS, unless
    an answer was kept first (a redelivery answered it, or another late task sent it)."""
    try:
        answer = await task
    except Exception as err:
        log.error("late sms reply failed", message_sid=sid, partner=partner_id, error=type(err).__name__)
        return
    log.info("sms inbound applied late", message_sid=sid, partner=partner_id, outcome=answer.kind)
    if not answer.final:
        return
    _, first = await asyncio.to_thread(keep_reply, settings, sid, answer.text)
    if not first or await asyncio.to_thread(is_opted_out, settings, number):
        return
    backend = build_sms_backend(settings)
    try:
        await backend.send(number, answer.text, f"sms-reply/{sid}")
    except Exception as err:
        log.warning("late sms confirmation not sent", message_sid=sid, partner=partner_id, error=type(err).__name__)
    finally:
        close = getattr(backend, "aclose", None)
        if close is not None:
            await close()


def _keep(task: asyncio.Task) -> None:
    _background.add(task)
    task.add_done_callback(_background.discard)


# --- inbound -------------------------------------------------------------------------------


def _is_bare_yes(body: str) -> bool:
    return re.sub(r"[\W_]+", "", body).upper() == "YES"


async def _opt_out(client: Client, settings: Settings, number: str, partner: Partner | None, sid: str, budget: _Budget) -> Answer:
    await asyncio.to_thread(record_opt_out, settings, number, partner.id if partner else None)
    if partner is None:
        return Answer("opted_out", "")
    report = ChannelReport(partner_id=partner.id, channel="sms", problem="OptedOut", message_sid=sid)
    try:
        codes = await _open_codes(client, partner.id, budget)
        for code in codes:
            handle = client.get_workflow_handle_for(ReferralWorkflow.run, referrals.workflow_id(code))
            try:
                await budget.run(handle.signal(ReferralWorkflow.report_channel_problem, report))
            except RPCError as err:
                if err.status != RPCStatusCode.NOT_FOUND:  # closed since it was listed: nothing to tell
                    raise
    except (TimeoutError, _Unavailable, RPCError) as err:
        # The opt-out is recorded; a redelivery tells the referrals again (they dedupe by sid).
        log.warning("opt-out not reported to every referral", message_sid=sid, partner=partner.id, error=type(err).__name__)
        return Answer("opted_out", "", final=False)
    return Answer("opted_out", "")


async def _inbound(request: Request, form: dict[str, str], sid: str) -> tuple[Answer, str | None]:
    settings: Settings = request.app.state.settings
    client: Client = request.app.state.client
    budget = _Budget(TEMPORAL_TIMEOUT_SECONDS)
    body = form.get("Body") or ""
    try:
        number = normalise_phone(form.get("From") or "")
    except ValueError:
        number = None
    try:
        directory = load_directory(settings.referral_partners_file)
    except ConfigError as err:
        log.error("partner directory unreadable", message_sid=sid, error=str(err))
        return Answer("unavailable", neutral_text(settings), final=False), None
    partner = directory.partner_by_sms(number) if number else None

    command = parse_sms(body)
    action: str = command.action
    opt_out_type = (form.get("OptOutType") or "").upper()
    if opt_out_type in ("STOP", "START", "HELP"):
        action = opt_out_type.lower()

    if action == "stop" and number:
        return await _opt_out(client, settings, number, partner, sid, budget), partner.id if partner else None
    if action == "start" and number:
        was_opted_out = await asyncio.to_thread(clear_opt_out, settings, number)
        if partner is not None and not was_opted_out and _is_bare_yes(body):
            # A bare YES is Twilio's opt-in keyword, but from a partner who never opted out
            # it answers an offer: an accept without a code.
            action = "accept"
            command = SmsCommand("accept")
        elif partner is not None:
            return Answer("opted_in", reply_text(settings, partner.language, "opted_in")), partner.id
    if partner is None:
        return Answer("unknown_sender", neutral_text(settings)), None

    lang = partner.language
    if isinstance(command, CapacityCommand):  # FULL, OPEN, LINK (starter/capacity.py)
        kind, key, values = await capacity.on_sms(client, settings, partner, command, sid)
        return Answer(kind, reply_text(settings, lang, key, **values), final=kind != "unavailable"), partner.id
    try:
        if action == "help":
            codes = await _open_codes(client, partner.id, budget)
            text = reply_text(settings, lang, "help", codes=_codes_text(codes, settings, lang), reasons=DECLINE_CODES)
            text += "\n" + reply_text(settings, lang, "capacity_help")
            return Answer("help", text), partner.id
        if action not in _KEYWORD:
            return Answer("unknown_command", reply_text(settings, lang, "unknown_command")), partner.id
        if action == "decline" and command.unknown_decline_code:
            # `D 7K3Q9 5`: the partner meant a reason code; record nothing rather than a decline
            # without its reason, and list the codes.
            example = f"D {command.code or 'CODE'} 1"
            text = reply_text(settings, lang, "unknown_decline_code", reasons=DECLINE_CODES, example=example)
            return Answer("unknown_decline_code", text), partner.id
        code = command.code
        if code is None:
            codes = await _open_codes(client, partner.id, budget)
            if not codes:
                return Answer("nothing_pending", reply_text(settings, lang, "nothing_pending")), partner.id
            if len(codes) > 1:
                text = reply_text(
                    settings, lang, "choose",
                    codes=_codes_text(codes, settings, lang),
                    example=f"{_KEYWORD[action]} {codes[0]}" + (f" {command.decline_code}" if command.decline_code else ""),
                )
                return Answer("ambiguous", text), partner.id
            code = codes[0]
        command = dataclasses.replace(command, action=action, code=code)  # type: ignore[arg-type]
        return await _apply_within(client, settings, partner, number or "", command, code, sid, budget), partner.id
    except _Unavailable as err:
        log.warning("temporal unavailable", message_sid=sid, partner=partner.id, error=str(err))
        return Answer("unavailable", reply_text(settings, lang, "unavailable"), final=False), partner.id


@router.post(INBOUND_PATH, include_in_schema=False)
async def sms_inbound(request: Request) -> Response:
    form = await _signed_form(request, INBOUND_PATH)
    if form is None:
        log.warning("sms inbound refused: bad signature")
        return _FORBIDDEN
    settings: Settings = request.app.state.settings
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    if not _SID.match(sid):
        return Response(status_code=400, content="MessageSid missing", media_type="text/plain")

    async with one_delivery_at_a_time(settings, sid) as stored:
        if stored is not None:
            # Answered before, or by a delivery that raced this one (in any web process).
            log.info("sms inbound replayed", message_sid=sid)
            return twiml(stored)
        answer, partner_id = await _inbound(request, form, sid)
        text = answer.text
        if answer.final:
            text = await asyncio.to_thread(remember_reply, settings, sid, text)
    log.info("sms inbound", message_sid=sid, partner=partner_id, outcome=answer.kind)
    return twiml(text)


# --- delivery status callbacks -------------------------------------------------------------


@router.post(STATUS_PATH, include_in_schema=False)
async def sms_status(request: Request) -> Response:
    form = await _signed_form(request, STATUS_PATH)
    if form is None:
        log.warning("sms status refused: bad signature")
        return _FORBIDDEN
    done = Response(status_code=204)
    message_status = (form.get("MessageStatus") or form.get("SmsStatus") or "").lower()
    sid = form.get("MessageSid") or form.get("SmsSid") or ""
    if message_status not in FAILED_STATUSES:
        return done
    raw_code = request.query_params.get("code") or ""
    partner_id = request.query_params.get("partner") or ""
    if not _SID.match(sid) or not _PARTNER_ID.match(partner_id):
        log.info("sms status without referral", message_sid=sid[:64], status=message_status)
        return done
    try:
        code = referrals.normalise_code(raw_code)
    except ValueError:
        log.info("sms status without referral", message_sid=sid, status=message_status)
        return done
    client: Client = request.app.state.client
    report = ChannelReport(partner_id=partner_id, channel="sms", problem=message_status, message_sid=sid)
    try:
        await asyncio.wait_for(
            client.get_workflow_handle_for(ReferralWorkflow.run, referrals.workflow_id(code)).signal(
                ReferralWorkflow.report_channel_problem, report
            ),
            TEMPORAL_TIMEOUT_SECONDS,
        )
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            log.info("sms status for no open referral", message_sid=sid, partner=partner_id, status=message_status)
            return done
        log.warning("sms status not recorded", message_sid=sid, partner=partner_id, error=type(err).__name__)
        return Response(status_code=503)
    except TimeoutError:
        log.warning("sms status not recorded", message_sid=sid, partner=partner_id, error="timeout")
        return Response(status_code=503)
    log.info("sms status recorded", message_sid=sid, partner=partner_id, code=code, status=message_status)
    return done
