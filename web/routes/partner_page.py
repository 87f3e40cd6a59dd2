"""The partner details page: `GET /p/<token>`, with accept / decline buttons.

The token (activities/partner_links.py) names one referral and one partner, is signed and
expires. The page shows the offer (nothing identifying) to that partner, and the person's details
only while that partner holds a service of the referral: the workflow's `person_details` query
decides, so there is one rule for who may see them. An expired or tampered token gets a 403 page
that says nothing about the referral.

Accept / decline are POSTs to `/p/<token>/accept|decline` that apply the same update as an SMS
reply (`partner_reply`, channel "web"), then redirect (303) back to the page.

CSRF: besides the capability in the path, each POST must carry a form nonce that matches a
cookie: the page sets a random cookie (HttpOnly, SameSite=Strict, path /p/, Secure over https) and puts
HMAC(PARTNER_LINK_SECRET, cookie | token) in a hidden field. A cross-site form cannot send the
cookie (SameSite=Strict) nor compute the field. A POST whose `Origin` is another origin, or whose
`Sec-Fetch-Site` is `cross-site`, is refused too. (Origin alone is not enough: with
`Referrer-Policy: no-referrer` browsers send `Origin: null` on form posts.)

Every response sends `Cache-Control: no-store`, `Referrer-Policy: no-referrer` (the token must
not leak to other sites), `X-Robots-Tag: noindex`, a strict CSP and `frame-ancestors 'none'`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from datetime import datetime
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import DictLoader, Environment, select_autoescape
from pydantic import ValidationError
from temporalio.client import Client
from temporalio.service import RPCError

from activities.messages import catalogue
from activities.partner_links import PartnerLinkError, PartnerLinkExpired, verify_partner_link
from config.settings import Settings
from starter import referrals
from web import deps
from workflows.intake import SERVICES
from workflows.models import PartnerReply, PersonDetails, ReferralStatus
from workflows.projection import PartnerStanding, involves, offered_to, partner_standing
from workflows.referral import ReferralWorkflow

router = APIRouter(include_in_schema=False)

LANGS = ("fr", "ar", "en")
CSRF_COOKIE = "nrm_partner_form"
MAX_FORM_BYTES = 16 * 1024
MAX_REASON = 500

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
}

TEXT: dict[str, dict[str, object]] = {
    "fr": {
        "title": "Orientation",
        "offer": "La demande",
        "services": "Service demandé",
        "urgency": "Urgence",
        "region": "Région",
        "age_group": "Tranche d'âge",
        "languages": "Langues",
        "interpreter": "Interprète nécessaire",
        "reply_by": "Réponse attendue avant le",
        "accept": "Accepter",
        "decline": "Refuser",
        "reason": "Motif du refus (facultatif)",
        "person": "La personne",
        "pseudonym": "Pseudonyme",
        "sex": "Sexe",
        "nationality": "Nationalité",
        "contact_phone": "Téléphone de contact",
        "notes": "Notes",
        "none": "—",
        "sexes": {"female": "femme", "male": "homme", "other": "autre", "unknown": "non précisé"},
        "state": {
            "offered": "Cette orientation vous est proposée. Les informations sur la personne s'afficheront ici après votre acceptation.",
            "held": "Vous avez accepté ce dossier. Ces informations sont confidentielles : ne les transmettez à personne.",
            "completed": "Vous avez indiqué que le service est terminé.",
            "passed": "Cette orientation ne vous est plus proposée.",
            "not_offered": "Cette orientation ne vous est pas proposée.",
            "closed": "Ce dossier est clos.",
        },
        "result": {
            "accepted": "Merci : votre acceptation est enregistrée.",
            "declined": "Merci : votre refus est enregistré. L'orientation sera proposée à un autre partenaire.",
            "already_applied": "Cette réponse était déjà enregistrée.",
            "reassigned": "Cette orientation a été confiée à un autre partenaire.",
            "not_offered": "Cette orientation ne vous est pas proposée.",
            "referral_closed": "Ce dossier est clos.",
            "not_applicable": "Cette réponse ne s'applique pas à ce dossier pour le moment.",
            "invalid": "Votre réponse n'a pas pu être enregistrée.",
        },
        "invalid_link": "Ce lien n'est pas valide. Demandez un nouveau lien à la coordination.",
        "expired_link": "Ce lien a expiré. Demandez un nouveau lien à la coordination.",
        "csrf": "La demande n'a pas pu être vérifiée. Rouvrez le lien reçu par e-mail et réessayez.",
        "not_found": "Dossier introuvable.",
        "unavailable": "Service momentanément indisponible. Réessayez dans quelques minutes.",
        "footer": "Mécanisme national de référencement. Page confidentielle : ne la transférez pas.",
    },
    "ar": {
        "title": "الإحالة",
        "offer": "الطلب",
        "services": "الخدمة المطلوبة",
        "urgency": "درجة الاستعجال",
        "region": "الجهة",
        "age_group": "الفئة العمرية",
        "languages": "اللغات",
        "interpreter": "الحاجة إلى مترجم",
        "reply_by": "الرد قبل",
        "accept": "قبول",
        "decline": "رفض",
        "reason": "سبب الرفض (اختياري)",
        "person": "الشخص المعني",
        "pseudonym": "الاسم المستعار",
        "sex": "الجنس",
        "nationality": "الجنسية",
        "contact_phone": "هاتف الاتصال",
        "notes": "ملاحظات",
        "none": "—",
        "sexes": {"female": "أنثى", "male": "ذكر", "other": "آخر", "unknown": "غير محدد"},
        "state": {
            "offered": "هذه الإحالة معروضة عليكم. ستظهر المعلومات المتعلقة بالشخص هنا بعد قبولكم.",
            "held": "لقد قبلتم هذا الملف. هذه المعلومات سرية: لا تشاركوها مع أي أحد.",
            "completed": "لقد أكدتم انتهاء الخدمة.",
            "passed": "لم تعد هذه الإحالة معروضة عليكم.",
            "not_offered": "هذه الإحالة غير معروضة عليكم.",
            "closed": "هذا الملف مغلق.",
        },
        "result": {
            "accepted": "شكرا، تم تسجيل قبولكم.",
            "declined": "شكرا، تم تسجيل رفضكم. ستُعرض الإحالة على شريك آخر.",
            "already_applied": "هذا الرد مسجل من قبل.",
            "reassigned": "أُسندت هذه الإحالة إلى شريك آخر.",
            "not_offered": "هذه الإحالة غير معروضة عليكم.",
            "referral_closed": "هذا الملف مغلق.",
            "not_applicable": "لا ينطبق هذا الرد على هذا الملف حاليا.",
            "invalid": "تعذر تسجيل ردكم.",
        },
        "invalid_link": "هذا الرابط غير صالح. اطلبوا رابطا جديدا من جهة التنسيق.",
        "expired_link": "انتهت صلاحية هذا الرابط. اطلبوا رابطا جديدا من جهة التنسيق.",
        "csrf": "تعذر التحقق من الطلب. أعيدوا فتح الرابط الوارد في البريد الإلكتروني وحاولوا مرة أخرى.",
        "not_found": "الملف غير موجود.",
        "unavailable": "الخدمة غير متاحة مؤقتا. يرجى إعادة المحاولة بعد دقائق.",
        "footer": "الآلية الوطنية للإحالة. صفحة سرية: لا تعيدوا توجيهها.",
    },
    "en": {
        "title": "Referral",
        "offer": "The request",
        "services": "Service requested",
        "urgency": "Urgency",
        "region": "Region",
        "age_group": "Age group",
        "languages": "Languages",
        "interpreter": "Interpreter needed",
        "reply_by": "Please answer by",
        "accept": "Accept",
        "decline": "Decline",
        "reason": "Reason for declining (optional)",
        "person": "The person",
        "pseudonym": "Pseudonym",
        "sex": "Sex",
        "nationality": "Nationality",
        "contact_phone": "Contact phone",
        "notes": "Notes",
        "none": "—",
        "sexes": {"female": "female", "male": "male", "other": "other", "unknown": "not stated"},
        "state": {
            "offered": "This referral is offered to you. Details about the person appear here once you accept.",
            "held": "You accepted this referral. These details are confidential: do not pass them on.",
            "completed": "You reported the service as completed.",
            "passed": "This referral is no longer offered to you.",
            "not_offered": "This referral is not offered to you.",
            "closed": "This referral is closed.",
        },
        "result": {
            "accepted": "Thank you: your acceptance is recorded.",
            "declined": "Thank you: your decline is recorded. The referral goes to another partner.",
            "already_applied": "This answer was already recorded.",
            "reassigned": "This referral was given to another partner.",
            "not_offered": "This referral is not offered to you.",
            "referral_closed": "This referral is closed.",
            "not_applicable": "This answer does not apply to this referral now.",
            "invalid": "Your answer could not be recorded.",
        },
        "invalid_link": "This link is not valid. Ask the coordination for a new one.",
        "expired_link": "This link has expired. Ask the coordination for a new one.",
        "csrf": "The request could not be verified. Open the link from your email again and retry.",
        "not_found": "Referral not found.",
        "unavailable": "Temporarily unavailable. Please try again in a few minutes.",
        "footer": "National Referral Mechanism. Confidential page: do not forward it.",
    },
}

_LAYOUT = """<!doctype html>
<html lang="{{ lang }}" dir="{{ 'rtl' if lang == 'ar' else 'ltr' }}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow">
<meta name="referrer" content="no-referrer">
<title>{{ title }}</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 42rem; padding: 1rem; line-height: 1.5; color: #1a1a1a; }
 nav { text-align: end; font-size: .9rem; } nav a { margin-inline-start: .75rem; }
 dl { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1rem; }
 dt { font-weight: 600; } dd { margin: 0; white-space: pre-wrap; }
 .notice { background: #eef6ee; border: 1px solid #9c9; padding: .5rem .75rem; }
 .error { background: #fbeeee; border: 1px solid #c99; padding: .5rem .75rem; }
 section.person { border: 2px solid #c60; padding: .5rem 1rem; margin-top: 1rem; }
 form { margin: .75rem 0; } button { font-size: 1rem; padding: .5rem 1.25rem; }
 textarea { width: 100%; box-sizing: border-box; }
 footer { margin-top: 2rem; font-size: .85rem; color: #555; }
</style>
</head>
<body>
<nav>{% for code, name in languages %}<a href="?lang={{ code }}" lang="{{ code }}">{{ name }}</a>{% endfor %}</nav>
{% block body %}{% endblock %}
<footer>{{ t.footer }}</footer>
</body>
</html>
"""

_MESSAGE = """{% extends "layout" %}{% block body %}
<h1>{{ t.title }}</h1>
<p class="error" role="alert">{{ message }}</p>
{% endblock %}"""

_PAGE = """{% extends "layout" %}{% block body %}
<h1>{{ t.title }} R-{{ code }}</h1>
{% if result %}<p class="notice" role="status">{{ result }}</p>{% endif %}
<p>{{ state }}</p>
{% if offer %}
<section class="offer">
<h2>{{ t.offer }}</h2>
<dl>
 <dt>{{ t.services }}</dt><dd>{{ offer.services }}</dd>
 <dt>{{ t.urgency }}</dt><dd>{{ offer.urgency }}</dd>
 <dt>{{ t.region }}</dt><dd>{{ offer.region }}</dd>
 <dt>{{ t.age_group }}</dt><dd>{{ offer.age_group }}</dd>
 <dt>{{ t.languages }}</dt><dd>{{ offer.languages }}</dd>
 <dt>{{ t.interpreter }}</dt><dd>{{ offer.interpreter }}</dd>
 {% if offer.reply_by %}<dt>{{ t.reply_by }}</dt><dd>{{ offer.reply_by }}</dd>{% endif %}
</dl>
</section>
{% endif %}
{% for service, label in pending %}
<section class="answer">
 {% if pending|length > 1 %}<h3>{{ label }}</h3>{% endif %}
 <form method="post" action="/p/{{ token }}/accept">
  <input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="service" value="{{ service }}"><input type="hidden" name="lang" value="{{ lang }}">
  <button type="submit" name="action" value="accept">{{ t.accept }}</button>
 </form>
 <form method="post" action="/p/{{ token }}/decline">
  <input type="hidden" name="csrf" value="{{ csrf }}"><input type="hidden" name="service" value="{{ service }}"><input type="hidden" name="lang" value="{{ lang }}">
  <label>{{ t.reason }}<br><textarea name="reason" rows="2" maxlength="{{ max_reason }}"></textarea></label><br>
  <button type="submit" name="action" value="decline">{{ t.decline }}</button>
 </form>
</section>
{% endfor %}
{% if person %}
<section class="person">
<h2>{{ t.person }}</h2>
<dl>
 <dt>{{ t.pseudonym }}</dt><dd>{{ person.pseudonym }}</dd>
 <dt>{{ t.age_group }}</dt><dd>{{ person.age_group }}</dd>
 <dt>{{ t.sex }}</dt><dd>{{ person.sex }}</dd>
 <dt>{{ t.nationality }}</dt><dd>{{ person.nationality }}</dd>
 <dt>{{ t.languages }}</dt><dd>{{ person.languages }}</dd>
 <dt>{{ t.contact_phone }}</dt><dd dir="ltr">{{ person.contact_phone }}</dd>
 <dt>{{ t.notes }}</dt><dd>{{ person.notes }}</dd>
</dl>
</section>
{% endif %}
{% endblock %}"""

_env = Environment(
    loader=DictLoader({"layout": _LAYOUT, "message": _MESSAGE, "page": _PAGE}),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_LANGUAGE_NAMES = (("fr", "Français"), ("ar", "العربية"), ("en", "English"))


def _lang(value: str | None) -> str:
    return value if value in LANGS else "fr"


def _secure(response: Response) -> Response:
    response.headers.update(SECURITY_HEADERS)
    return response


def _html(template: str, lang: str, status: int = 200, **values: object) -> HTMLResponse:
    t = TEXT[lang]
    body = _env.get_template(template).render(lang=lang, t=t, languages=_LANGUAGE_NAMES, title=values.pop("title", t["title"]), **values)
    return _secure(HTMLResponse(body, status_code=status))  # type: ignore[return-value]


def _message(lang: str, status: int, key: str) -> HTMLResponse:
    return _html("message", lang, status, message=TEXT[lang][key])


def _verify(settings: Settings, token: str, lang: str) -> tuple[str, str] | HTMLResponse:
    try:
        return verify_partner_link(settings.partner_link_secret, token)
    except PartnerLinkExpired:
        return _message(lang, 403, "expired_link")
    except PartnerLinkError:
        return _message(lang, 403, "invalid_link")


# --- CSRF: a cookie and a field bound to it and to the token --------------------------------


def _form_nonce(secret: str, cookie: str, token: str) -> str:
    mac = hmac.new(secret.encode(), f"partner-form|{cookie}|{token}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def _valid_cookie(value: str | None) -> bool:
    return bool(value) and re.fullmatch(r"[A-Za-z0-9_-]{32,64}", value or "") is not None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _csrf_ok(settings: Settings, request: Request, token: str, field: str | None) -> bool:
    origin = request.headers.get("origin")
    if origin and origin != "null" and origin.lower().rstrip("/") != _origin(settings.public_base_url):
        return False
    if request.headers.get("sec-fetch-site") == "cross-site":
        return False
    cookie = request.cookies.get(CSRF_COOKIE)
    if not _valid_cookie(cookie) or not field or not settings.partner_link_secret:
        return False
    return hmac.compare_digest(field.encode(), _form_nonce(settings.partner_link_secret, cookie, token).encode())  # type: ignore[arg-type]


# --- what this partner may see ------------------------------------------------------------


async def _person_details(client: Client, code: str, partner_id: str) -> PersonDetails | None:
    handle = client.get_workflow_handle_for(ReferralWorkflow.run, referrals.workflow_id(code))
    return await handle.query(ReferralWorkflow.person_details, partner_id)


def _standing(status: ReferralStatus, partner_id: str) -> PartnerStanding:
    return partner_standing(status.services, partner_id, closed=status.closed_at is not None or status.stage == "closed")


@router.get("/p/{token}", response_class=HTMLResponse)
async def page(token: str, request: Request, lang: str | None = None, result: str | None = None) -> Response:
    settings = deps.settings_of(request)
    lang = _lang(lang)
    verified = _verify(settings, token, lang)
    if isinstance(verified, Response):
        return verified
    code, partner_id = verified
    client = deps.client_of(request)
    try:
        status = await referrals.get_status(client, code)
        state = _standing(status, partner_id)
        person = None if state == "closed" else await _person_details(client, code, partner_id)
    except referrals.ReferralNotFound:
        return _message(lang, 404, "not_found")
    except RPCError:
        return _message(lang, 503, "unavailable")

    t = TEXT[lang]
    labels = catalogue(settings.referral_messages_dir, lang)["labels"]
    time_format = catalogue(settings.referral_messages_dir, lang)["time_format"]
    mine = [s for s in status.services if involves(s, partner_id)]
    offer = None
    if mine:
        pending = [s for s in mine if offered_to(s, partner_id)]
        due = min((s.attempts[-1].deadline for s in pending), default=None)
        offer = {
            "services": ", ".join(labels["services"].get(s.service, s.service) for s in mine),
            "urgency": labels["urgency"].get(status.urgency, status.urgency),
            "region": labels["regions"].get(status.region, status.region),
            "age_group": labels["age_group"].get(status.age_group or "", t["none"]),
            "languages": ", ".join(status.languages) or t["none"],
            "interpreter": labels["yes"] if status.assessment.interpreter_needed else labels["no"],
            "reply_by": _when(due, settings.referral_timezone, time_format),
        }
    pending_services = [
        (s.service, labels["services"].get(s.service, s.service)) for s in status.services if offered_to(s, partner_id)
    ]
    person_view = None
    if person is not None:
        p = person.person
        person_view = {
            "pseudonym": p.pseudonym,
            "age_group": labels["age_group"].get(p.age_group, p.age_group),
            "sex": t["sexes"].get(p.sex, p.sex),  # type: ignore[union-attr]
            "nationality": p.nationality or t["none"],
            "languages": ", ".join(p.languages) or t["none"],
            "contact_phone": p.contact_phone or t["none"],
            "notes": person.notes or t["none"],
        }

    cookie = request.cookies.get(CSRF_COOKIE)
    new_cookie = None
    if not _valid_cookie(cookie):
        cookie = new_cookie = secrets.token_urlsafe(32)
    csrf = _form_nonce(settings.partner_link_secret or "", cookie or "", token)
    response = _html(
        "page",
        lang,
        title=f"{t['title']} R-{code}",
        code=code,
        token=token,
        csrf=csrf,
        state=t["state"][state],  # type: ignore[index]
        result=t["result"].get(result) if result else None,  # type: ignore[union-attr]
        offer=offer,
        pending=pending_services,
        person=person_view,
        max_reason=MAX_REASON,
    )
    if new_cookie:
        response.set_cookie(
            CSRF_COOKIE,
            new_cookie,
            path="/p/",
            httponly=True,
            samesite="strict",
            secure=settings.public_base_url.lower().startswith("https://"),
        )
    return response


def _when(value: datetime | None, timezone: str, time_format: str) -> str | None:
    return value.astimezone(ZoneInfo(timezone)).strftime(time_format) if value else None


async def _read_form(request: Request) -> dict[str, str] | None:
    """The urlencoded form, or None when it is too big or not a form."""
    content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_FORM_BYTES:
            return None
        chunks.append(chunk)
    try:
        fields = parse_qs(b"".join(chunks).decode("utf-8"), max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        return None
    return {key: values[0] for key, values in fields.items()}


async def _answer(token: str, request: Request, action: str) -> Response:
    settings = deps.settings_of(request)
    lang = _lang(request.query_params.get("lang"))
    verified = _verify(settings, token, lang)
    if isinstance(verified, Response):
        return verified
    code, partner_id = verified
    form = await _read_form(request)
    if form is None:
        return _message(lang, 400, "csrf")
    lang = _lang(form.get("lang") or lang)
    if not _csrf_ok(settings, request, token, form.get("csrf")):
        return _message(lang, 403, "csrf")

    service = form.get("service") or None
    reason = ((form.get("reason") or "").strip()[:MAX_REASON] or None) if action == "decline" else None
    try:
        if service is not None and service not in SERVICES:
            raise ValueError("service")
        reply = PartnerReply(partner_id=partner_id, action=action, reason=reason, service=service, channel="web")
        outcome = await referrals.partner_reply(deps.client_of(request), code, reply)
        result = outcome.outcome
    except (ValueError, ValidationError):
        result = "invalid"
    except referrals.ReferralRejected as err:
        result = err.kind
    except referrals.ReferralNotFound:
        return _message(lang, 404, "not_found")
    except RPCError:
        return _message(lang, 503, "unavailable")
    if result not in TEXT[lang]["result"]:  # type: ignore[operator]
        result = "invalid"
    return _secure(RedirectResponse(f"/p/{token}?lang={lang}&result={result}", status_code=303))


@router.post("/p/{token}/accept")
async def accept(token: str, request: Request) -> Response:
    return await _answer(token, request, "accept")


@router.post("/p/{token}/decline")
async def decline(token: str, request: Request) -> Response:
    return await _answer(token, request, "decline")
