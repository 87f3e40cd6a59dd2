"""The coordinators' web form over plain HTTP (httpx against the ASGI app): logins, sessions,
CSRF, validation, the referral page and the coordinator actions. The browser tests are in
test_browser.py."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC
from html import unescape
from typing import Any, get_args

import httpx
import pytest
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher
from structlog.testing import capture_logs
from temporalio.service import RPCError, RPCStatusCode

from activities.directory import load_directory
from config.settings import Settings
from infra.translations import PACKAGED_MESSAGES_DIR, translations
from starter import referrals
from tests.cases import NOTES, PHONE, PSEUDONYM, adult_case, adult_intake
from tests.conftest import running_worker, wait_for
from tests.fixtures import PARTNERS_FILE
from web import i18n, rendering, security, session_store
from web.app import create_app
from web.routes import intake_form, referral_pages
from workflows.intake import INDICATORS, REGIONS, SERVICES
from workflows.models import CoordinatorAction, PartnerReply
from workflows.projection import TimelineKind

PASSWORD = "correct horse battery staple"
# Cheap argon2 parameters keep the tests fast; a hash records its own parameters.
FAST_HASHER = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=1024, parallelism=1),))
HASH = FAST_HASHER.hash(PASSWORD)
OTHER_HASH = FAST_HASHER.hash("another one")
OLD_PBKDF2_HASH = "pbkdf2_sha256$600000$" + "ab" * 16 + "$" + "0" * 64
TOKENS = "tok-first-123,tok-second-456"
SECRET = "test-session-secret-" + "x" * 24
DIRECTORY = load_directory(PARTNERS_FILE)


def web_settings(make_settings, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        coordinator_logins=f"amina:{HASH}, karim:{OTHER_HASH}",
        referral_api_tokens=TOKENS,
        web_session_secret=SECRET,
    )
    values.update(overrides)
    return make_settings(**values)


@asynccontextmanager
async def browser_like(settings: Settings, client=None) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client with a cookie jar, like a browser, against the app in-process."""
    app = create_app(settings, client=client)
    base = settings.public_base_url if settings.public_base_url.startswith("https") else "http://testserver"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base) as http:
        yield http


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match[1]


async def log_in(http: httpx.AsyncClient, login: str = "amina", password: str = PASSWORD, next_url: str = "/referrals/new") -> httpx.Response:
    page = await http.get("/login")
    return await http.post("/login", data={"login": login, "password": password, "csrf": csrf_of(page.text), "next": next_url})


def form_data(case: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """The intake form as a browser posts it, from an intake case (tests/cases.py)."""
    case = case or adult_case()
    data: dict[str, Any] = {
        "external_ref": case["external_ref"],
        "identified_by.agency": case["identified_by"]["agency"],
        "identified_by.officer_id": case["identified_by"]["officer_id"],
        "identified_by.region": case["identified_by"]["region"],
        "identified_at": case["identified_at"][:16],
        "timezone": case["identified_at"][-6:],
        "sector": case["sector"],
        "indicators": case["indicators"],
        "person.pseudonym": case["person"]["pseudonym"],
        "person.age_group": case["person"]["age_group"],
        "person.sex": case["person"]["sex"],
        "person.nationality": case["person"]["nationality"],
        "person.languages": ", ".join(case["person"]["languages"]),
        "person.contact_phone": case["person"]["contact_phone"],
        "needs": case["needs"],
        "consent.given": "yes" if case["consent"]["given"] else "no",
        "consent.recorded_by": case["consent"]["recorded_by"],
        "consent.recorded_at": case["consent"]["recorded_at"][:16],
        "urgency": case["urgency"] or "",
        "notes": case["notes"],
    }
    data.update(overrides)
    return data


async def not_started(client, external_ref: str) -> bool:
    try:
        await client.get_workflow_handle(referrals.workflow_id(referrals.referral_code(external_ref))).describe()
    except RPCError as err:
        return err.status == RPCStatusCode.NOT_FOUND
    return False


def field_block(html: str, field_id: str) -> str:
    """The `.field` container holding the control with this id: label, hint, errors, control."""
    at = html.index(f'id="{field_id}"')
    div = html.rfind('<div class="field', 0, at)
    fieldset = html.rfind('<fieldset class="field', 0, at)
    if fieldset > div:
        return html[fieldset : html.index("</fieldset>", at)]
    return html[div : html.index("</div>", at)]


# --- passwords -----------------------------------------------------------------------------


def test_hash_and_verify() -> None:
    encoded = security.hash_password("s3cret")
    assert re.fullmatch(r"\$argon2id\$v=19\$m=65536,t=3,p=4\$[A-Za-z0-9+/]{22}\$[A-Za-z0-9+/]{43}", encoded)
    assert security.verify_password("s3cret", encoded)
    assert not security.verify_password("s3cret ", encoded)
    assert not security.verify_password("", encoded)
    assert security.hash_password("s3cret") != encoded  # a new salt each time
    for broken in ("", "s3cret", "md5$1$a$b", encoded.replace("argon2id", "argon2i"), encoded[:-1], OLD_PBKDF2_HASH):
        assert not security.verify_password("s3cret", broken)
    with pytest.raises(ValueError, match="password"):
        security.hash_password("")


def test_hash_password_command_prints_a_usable_hash() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "web.security", "hash-password"],
        input="pass phrase\n", capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    encoded = done.stdout.strip()
    assert security.verify_password("pass phrase", encoded)
    assert security.parse_logins(f"someone:{encoded}") == {"someone": encoded}


def test_parse_logins_skips_malformed_entries() -> None:
    # argon2 hashes hold commas (`m=65536,t=3,p=4`): entries are still told apart
    assert "," in HASH
    text = f" amina:{HASH} , broken, :{HASH}, karim:plaintext, ,omar:{OTHER_HASH}, t=3, zoe:{HASH[:-3]},x"
    with capture_logs() as logs:
        parsed = security.parse_logins(text)
    assert parsed == {"amina": HASH, "omar": OTHER_HASH}
    assert sorted(e["login"] for e in logs if e["event"] == "coordinator_logins_entry_ignored") == ["(empty)", "broken", "karim", "t=3", "x", "zoe"]
    assert not any(HASH[-20:] in str(e) or OTHER_HASH[-20:] in str(e) for e in logs)  # never a hash in a log


def test_old_pbkdf2_hashes_are_refused_with_a_warning_naming_the_login() -> None:
    with capture_logs() as logs:
        parsed = security.parse_logins(f"amina:{HASH},karim:{OLD_PBKDF2_HASH}")
    assert parsed == {"amina": HASH}
    refused = [e for e in logs if e["event"] == "coordinator_login_refused"]
    assert [e["login"] for e in refused] == ["karim"] and "hash-password" in refused[0]["reason"]
    assert not any(OLD_PBKDF2_HASH[-20:] in str(e) for e in logs)


async def test_old_pbkdf2_login_cannot_log_in(make_settings) -> None:
    async with browser_like(web_settings(make_settings, coordinator_logins=f"karim:{OLD_PBKDF2_HASH}")) as http:
        assert (await log_in(http, "karim", PASSWORD)).status_code == 401


# --- logins and sessions -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/referrals", "/referrals/new", "/referrals/7K3Q9", "/referrals?stage=escalated"])
async def test_pages_without_login_redirect_to_login(make_settings, path: str) -> None:
    async with browser_like(web_settings(make_settings)) as http:
        response = await http.get(path)
        assert response.status_code == 303
        assert response.headers["location"].startswith("/login?next=")
        login = await http.get(response.headers["location"])
        assert login.status_code == 200
        assert "Connectez-vous pour continuer" in login.text


async def test_posts_without_login_redirect_and_do_nothing(make_settings) -> None:
    async with browser_like(web_settings(make_settings)) as http:
        for path in ("/referrals/new", "/referrals/7K3Q9/actions"):
            response = await http.post(path, data={"action": "cancel", "confirm": "yes"})
            assert response.status_code == 303
            assert response.headers["location"].startswith("/login")


async def test_login_failure_is_generic(make_settings) -> None:
    async with browser_like(web_settings(make_settings)) as http:
        wrong_password = await log_in(http, "amina", "not the password")
        unknown_login = await log_in(http, "nobody", PASSWORD)
        empty = await log_in(http, "amina", "")
        for response in (wrong_password, unknown_login, empty):
            assert response.status_code == 401
            assert "Identifiant ou mot de passe incorrect." in response.text
            assert PASSWORD not in response.text
        # Still not logged in
        assert (await http.get("/referrals/new")).status_code == 303


async def test_login_sets_a_hardened_session_cookie(make_settings) -> None:
    async with browser_like(web_settings(make_settings)) as http:
        response = await log_in(http, next_url="/referrals")
        assert response.status_code == 303
        assert response.headers["location"] == "/referrals"
        cookie = response.headers["set-cookie"]
        assert cookie.startswith(f"{security.SESSION_COOKIE}=")
        assert "HttpOnly" in cookie and "samesite=lax" in cookie.lower() and "Secure" not in cookie
        assert "Max-Age=43200" in cookie or "Max-Age=43199" in cookie
        assert (await http.get("/referrals/new")).status_code == 200

    async with browser_like(web_settings(make_settings, public_base_url="https://nrm.example.ma")) as http:
        response = await log_in(http)
        assert response.status_code == 303
        assert "Secure" in response.headers["set-cookie"]


async def test_login_redirects_only_within_the_site(make_settings) -> None:
    async with browser_like(web_settings(make_settings)) as http:
        for evil in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
            response = await log_in(http, next_url=evil)
            assert response.headers["location"] == "/referrals/new"
            await http.post("/logout", data={"csrf": csrf_of((await http.get("/referrals/new")).text)})


async def test_api_token_is_a_password_for_login_api_only(make_settings) -> None:
    async with browser_like(web_settings(make_settings)) as http:
        assert (await log_in(http, "api", "tok-second-456")).status_code == 303
    async with browser_like(web_settings(make_settings)) as http:
        assert (await log_in(http, "api", "tok-second")).status_code == 401
        assert (await log_in(http, "amina", "tok-first-123")).status_code == 401
        assert (await log_in(http, "API", "tok-first-123")).status_code == 401
    async with browser_like(web_settings(make_settings, referral_api_tokens="")) as http:
        assert (await log_in(http, "api", "")).status_code == 401


async def test_login_form_needs_its_csrf_token(make_settings) -> None:
    async with browser_like(web_settings(make_settings)) as http:
        await http.get("/login")
        response = await http.post("/login", data={"login": "amina", "password": PASSWORD})
        assert response.status_code == 403
        response = await http.post("/login", data={"login": "amina", "password": PASSWORD, "csrf": "guess"})
        assert response.status_code == 403
        assert (await http.get("/referrals/new")).status_code == 303


def _cookie(settings: Settings, **changes: Any) -> str:
    session = security.new_session(settings, "amina")
    fields = {**session.__dict__, **changes}
    return security.encode_session(settings, security.Session(**fields))


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def test_tampered_expired_or_foreign_sessions_are_refused(make_settings) -> None:
    settings = web_settings(make_settings)
    good = _cookie(settings)
    payload, mac = good.split(".")
    assert b'"amina"' in _unb64(payload)
    forged_payload = _b64(_unb64(payload).replace(b'"amina"', b'"admin"'))
    session = security.decode_session(settings, good)
    assert session is not None
    candidates = {
        "tampered payload": f"{forged_payload}.{mac}",
        "tampered mac": f"{payload}.{mac[:-2]}{'A' if mac[-2] != 'A' else 'B'}{mac[-1]}",
        "no mac": payload,
        "expired": _cookie(settings, expires=time.time() - 1),
        "other secret": _cookie(web_settings(make_settings, web_session_secret="another-secret-entirely")),
        "kept key, not the secret": _cookie(web_settings(make_settings, web_session_secret="")),
        "signed for another purpose (its CSRF token)": session.csrf,
        "garbage": "not a session at all",
    }
    async with browser_like(settings) as http:
        http.cookies.set(security.SESSION_COOKIE, good)
        assert (await http.get("/referrals/new")).status_code == 200
    for name, value in candidates.items():
        async with browser_like(settings) as http:
            http.cookies.set(security.SESSION_COOKIE, value)
            response = await http.get("/referrals/new")
            assert response.status_code == 303, name
            assert response.headers["location"].startswith("/login")


def test_session_expiry_is_twelve_hours(make_settings) -> None:
    settings = web_settings(make_settings)
    session = security.new_session(settings, "amina")
    assert 12 * 3600 - 5 < session.expires - time.time() <= 12 * 3600
    cookie = security.encode_session(settings, session)
    assert security.decode_session(settings, cookie) == session
    assert security.decode_session(settings, cookie, now=session.expires + 1) is None


def test_without_a_session_secret_the_key_is_kept_in_the_data_dir(make_settings) -> None:
    settings = web_settings(make_settings, web_session_secret="")
    cookie = security.encode_session(settings, security.new_session(settings, "amina"))
    key_file = settings.referral_data_dir.resolve() / session_store.KEY_FILE
    assert key_file.is_file() and os.stat(key_file).st_mode & 0o777 == 0o600
    # Another process (here: the same one, its memory forgotten) reads the same key.
    session_store._kept_key.cache_clear()
    assert security.decode_session(settings, cookie) is not None
    assert len(key_file.read_text().strip()) >= session_store.MIN_KEY_LENGTH


async def test_logout_ends_the_session_even_if_the_cookie_is_replayed(make_settings) -> None:
    async with browser_like(web_settings(make_settings)) as http:
        await log_in(http)
        page = await http.get("/referrals/new")
        old = http.cookies.get(security.SESSION_COOKIE)
        assert (await http.post("/logout", data={})).status_code == 403  # CSRF-protected too
        response = await http.post("/logout", data={"csrf": csrf_of(page.text)})
        assert response.status_code == 303 and response.headers["location"] == "/login?bye=1"
        assert (await http.get("/referrals/new")).status_code == 303
        http.cookies.set(security.SESSION_COOKIE, old)
        assert (await http.get("/referrals/new")).status_code == 303


# --- pages, headers, languages -------------------------------------------------------------


async def test_security_headers_and_no_script(make_settings) -> None:
    async with browser_like(web_settings(make_settings)) as http:
        pages = [await http.get("/login")]
        await log_in(http)
        pages.append(await http.get("/referrals/new"))
        pages.append(await http.get("/referrals/new?lang=ar"))
        for page in pages:
            h = page.headers
            assert h["cache-control"] == "no-store"
            assert h["x-frame-options"] == "DENY"
            assert h["referrer-policy"] == "no-referrer"
            csp = h["content-security-policy"]
            assert "default-src 'none'" in csp and "style-src 'self'" in csp and "frame-ancestors 'none'" in csp
            assert "unsafe-inline" not in csp and "script-src" not in csp
            assert "<script" not in page.text.lower()
            assert " style=" not in page.text  # no inline styles: the CSP would block them
            assert "http://" not in page.text and "https://" not in page.text  # nothing from elsewhere
        css = await http.get("/static/forms/forms.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
        assert (await http.get("/static/forms/../forms.py")).status_code == 404


async def test_language_by_parameter_then_cookie(make_settings) -> None:
    async with browser_like(web_settings(make_settings)) as http:
        page = await http.get("/login")
        assert '<html lang="fr" dir="ltr">' in page.text and "Connexion de la coordination" in page.text
        page = await http.get("/login?lang=ar")
        assert '<html lang="ar" dir="rtl">' in page.text and "دخول المنسقين" in page.text
        assert f"{i18n.LANG_COOKIE}=ar" in page.headers["set-cookie"]
        page = await http.get("/login")
        assert '<html lang="ar" dir="rtl">' in page.text
        page = await http.get("/login?lang=en")
        assert '<html lang="en" dir="ltr">' in page.text and "Coordinator sign-in" in page.text
        page = await http.get("/login?lang=xx")
        assert '<html lang="en" dir="ltr">' in page.text


def test_every_ui_string_in_three_languages(make_settings) -> None:
    catalogues = {lang: translations(PACKAGED_MESSAGES_DIR, lang) for lang in i18n.LANGS}
    fr = catalogues[i18n.DEFAULT_LANG]
    for lang, words in catalogues.items():
        assert set(words.texts) == set(fr.texts), (lang, set(words.texts) ^ set(fr.texts))
        for key, text in words.texts.items():
            assert isinstance(text, str) and text.strip(), (lang, key)
    page = set(fr.section("page"))
    assert set(fr.labels("indicators")) == set(INDICATORS)
    assert set(fr.labels("agencies")) == set(intake_form.AGENCIES)
    assert set(fr.labels("sectors")) == set(intake_form.SECTORS)
    assert set(fr.labels("sex")) == set(intake_form.SEXES)
    assert set(fr.labels("stages")) == set(referral_pages.STAGES)
    settings = web_settings(make_settings)
    for lang in i18n.LANGS:
        words = i18n.Words(lang, settings)
        for service in SERVICES:
            assert words.label("services", service) != service or lang == "en"
        for region in REGIONS:
            assert words.label("regions", region)
    # Every key a template asks for exists
    used, partner_used = set(), set()
    for path in rendering.TEMPLATES.glob("*.html"):
        asked = set(re.findall(r"t\('([a-z_]+)'[,)]", path.read_text()))
        if path.name.startswith("partner_"):
            partner_used |= asked
        else:
            used |= asked
    assert len(used) > 50
    assert len(partner_used) > 15 and partner_used <= set(fr.section("partner_page")), partner_used - set(fr.section("partner_page"))
    used |= {f"done_{a}" for a in ("assign", "close_service", *referral_pages.WHOLE_ACTIONS)}
    used |= {f"rej_{k}" for k in referral_pages._REJECTION_KEYS}
    used |= {f"ev_{kind}" for kind in get_args(TimelineKind)}
    used |= set(intake_form.FIELD_LABELS.values()) | {"reason_unreachable"}
    assert used <= page, used - page


async def test_the_form_has_every_intake_field_with_bound_labels(make_settings) -> None:
    async with browser_like(web_settings(make_settings)) as http:
        await log_in(http)
        page = await http.get("/referrals/new")
        html = page.text
    for name in intake_form.FORM_FIELDS:
        assert f'name="{name}"' in html, name
    for value in (*INDICATORS, *SERVICES):
        assert f'value="{value}"' in html
    ids = re.findall(r'<(?:input|select|textarea)[^>]* id="([^"]+)"', html)
    hidden = set(re.findall(r'<input type="hidden"[^>]* id="([^"]+)"', html))
    for control in set(ids) - hidden:
        assert f'<label for="{control}"' in html, control
    # Consent is an explicit answer: neither radio is ticked at first
    assert not re.search(r'name="consent\.given" value="(yes|no)" checked', html)
    assert 'value="+01:00"' in html or 'value="+00:00"' in html
    assert '<option value="">Décidée par les règles</option>' in html


# --- starting referrals --------------------------------------------------------------------


async def test_csrf_missing_or_wrong_starts_nothing(dev_env, make_settings) -> None:
    settings = web_settings(make_settings)
    async with browser_like(settings, dev_env.client) as http:
        await log_in(http)
        page = await http.get("/referrals/new")
        other = security.new_session(settings, "amina").csrf
        for csrf in (None, "", "wrong", other, csrf_of(page.text) + "x"):
            data = form_data()
            if csrf is not None:
                data["csrf"] = csrf
            response = await http.post("/referrals/new", data=data)
            assert response.status_code == 403
            assert "Formulaire expiré" in response.text
            assert await not_started(dev_env.client, data["external_ref"])


async def test_invalid_form_shows_each_error_beside_its_field_and_keeps_values(dev_env, make_settings) -> None:
    async with browser_like(web_settings(make_settings), dev_env.client) as http:
        await log_in(http)
        page = await http.get("/referrals/new")
        data = form_data(
            **{
                "csrf": csrf_of(page.text),
                "person.contact_phone": "12345",
                "consent.given": "no",
                "needs": [],
                "person.nationality": "XX",
                "person.languages": "fr, klingon",
                "timezone": "Morocco",
                "identified_by.officer_id": "LI 0231",
            }
        )
        response = await http.post("/referrals/new", data=data)
        assert response.status_code == 422
        html = response.text
        expected = {
            "f-person-contact_phone": "Numéro de téléphone invalide.",
            "f-consent-given": "Le consentement de la personne est requis",
            "f-needs": "Choisissez au moins un service.",
            "f-person-nationality": "Code pays à deux lettres",
            "f-person-languages": "Codes de langue à deux lettres",
            "f-timezone": "Décalage invalide",
            "f-identified_by-officer_id": "Lettres, chiffres et . _ / - uniquement.",
        }
        for field_id, message in expected.items():
            block = unescape(field_block(html, field_id))
            assert 'class="error"' in block and message in block, field_id
        # Fields without errors carry none
        assert 'class="error"' not in field_block(html, "f-person-pseudonym")
        # What was typed is still there
        for name in ("person.pseudonym", "person.contact_phone", "identified_by.officer_id", "external_ref", "timezone"):
            assert f'value="{data[name]}"' in unescape(html), name
        assert NOTES in unescape(html)
        assert re.search(r'name="consent\.given" value="no" checked', html)
        for indicator in data["indicators"]:
            assert re.search(rf'value="{indicator}" checked', html)
        assert await not_started(dev_env.client, data["external_ref"])

        # Missing answers are named too, in the page's language
        response = await http.post("/referrals/new?lang=en", data={"csrf": csrf_of(html), "timezone": "+01:00"})
        assert response.status_code == 422
        for field_id in ("f-external_ref", "f-identified_by-region", "f-person-pseudonym", "f-consent-given", "f-sector"):
            assert 'class="error"' in field_block(response.text, field_id), field_id
        assert "This field is required." in response.text and "Choose yes or no." in response.text

        # Consent given, but not who recorded it
        response = await http.post("/referrals/new?lang=fr", data=form_data(**{"csrf": csrf_of(html), "consent.recorded_by": ""}))
        assert response.status_code == 422
        assert "Indiquez qui a recueilli le consentement" in unescape(field_block(response.text, "f-consent-recorded_by"))


async def test_a_minor_without_consent_is_accepted(dev_env, make_settings) -> None:
    settings = web_settings(make_settings)
    async with browser_like(settings, dev_env.client) as http:
        await log_in(http)
        page = await http.get("/referrals/new")
        case = adult_case(person={"age_group": "minor"}, needs=[])
        data = form_data(case, **{"csrf": csrf_of(page.text), "consent.given": "no", "consent.recorded_by": ""})
        response = await http.post("/referrals/new", data=data)
        assert response.status_code == 303, response.text[:2000]
        code = referrals.referral_code(case["external_ref"])
        assert response.headers["location"] == f"/referrals/{code}?created=1"
        # No worker serves this test's task queue: end the referral without one.
        await dev_env.client.get_workflow_handle(referrals.workflow_id(code)).terminate("test over")


async def test_start_follow_and_act_on_a_referral(dev_env, make_settings, smtp) -> None:
    base = web_settings(make_settings)
    async with running_worker(dev_env.client, base) as tq:
        settings = base.model_copy(update={"referral_task_queue": tq})
        async with browser_like(settings, dev_env.client) as http:
            await log_in(http)
            page = await http.get("/referrals/new")
            csrf = csrf_of(page.text)
            data = form_data(csrf=csrf)
            response = await http.post("/referrals/new", data=data)
            assert response.status_code == 303
            location = response.headers["location"]
            code = referrals.referral_code(data["external_ref"])
            assert location == f"/referrals/{code}?created=1"

            # The same external_ref again lands on the same referral, with a note
            again = await http.post("/referrals/new", data=data)
            assert again.headers["location"] == f"/referrals/{code}?existing=1"
            page = await http.get(again.headers["location"])
            assert "avait déjà été enregistrée" in unescape(page.text)

            page = await http.get(location)
            assert page.status_code == 200
            assert f"R-{code}" in page.text and "Orientation créée" in unescape(page.text)
            for secret in (PSEUDONYM, PHONE, PHONE[4:], NOTES[:20]):
                assert secret not in unescape(page.text)

            status = await wait_for(lambda: _status_when(dev_env.client, code, lambda s: s.stage == "awaiting_acceptance"))
            page = await http.get(f"/referrals/{code}")
            assert 'data-stage="awaiting_acceptance"' in page.text
            for service in ("shelter", "medical", "legal"):
                assert f'id="service-{service}"' in page.text
            first = status.services[0].attempts[0].partner_id
            assert DIRECTORY.partner(first).name in unescape(page.text)
            csrf = csrf_of(page.text)

            async def act(**fields: str) -> str:
                response = await http.post(f"/referrals/{code}/actions", data={"csrf": csrf, **fields})
                assert response.status_code == 303, response.text[:500]
                return response.headers["location"]

            # Assign a partner by hand: any directory partner offering the service
            legal = next(s for s in status.services if s.service == "legal")
            chosen = next(p.id for p in DIRECTORY.partners if p.active and "legal" in p.services and p.id != legal.partner_id)
            assert f'value="{chosen}"' in page.text
            assert await act(action="assign", service="legal", partner_id=chosen, nonce="n" * 20) == f"/referrals/{code}?done=assign"
            status = await referrals.get_status(dev_env.client, code)
            legal = next(s for s in status.services if s.service == "legal")
            assert legal.partner_id == chosen and legal.assigned_by_coordinator
            page = await http.get(f"/referrals/{code}?done=assign")
            assert "Partenaire attribué." in page.text and "par la coordination" in page.text

            # A partner that does not offer the service, an unknown one: refused before the workflow
            not_legal = next(p.id for p in DIRECTORY.partners if "legal" not in p.services)
            assert await act(action="assign", service="legal", partner_id=not_legal) == f"/referrals/{code}?rejected=partner"
            assert await act(action="assign", service="legal", partner_id="nobody") == f"/referrals/{code}?rejected=partner"
            page = await http.get(f"/referrals/{code}?rejected=partner")
            assert "Action refusée" in unescape(page.text)
            # The same partner again: the workflow's own refusal, shown readably
            assert await act(action="assign", service="legal", partner_id=chosen) == f"/referrals/{code}?rejected=already_applied"
            page = await http.get(f"/referrals/{code}?rejected=already_applied")
            assert "ce partenaire a déjà ce service" in unescape(page.text)

            # Close one service, saying how it ended (a required choice, in the page's language)
            assert '<select id="outcome-choice-medical" name="outcome" required>' in page.text
            assert '<option value="transferred">orientée ailleurs</option>' in unescape(page.text)
            for missing in ({}, {"outcome": "finished"}):
                assert await act(action="close", service="medical", **missing) == f"/referrals/{code}?rejected=outcome"
            assert "indiquez comment le service s'est terminé" in unescape((await http.get(f"/referrals/{code}?rejected=outcome")).text)
            assert next(s for s in (await referrals.get_status(dev_env.client, code)).services if s.service == "medical").stage != "closed"
            assert await act(action="close", service="medical", outcome="transferred") == f"/referrals/{code}?done=close_service"
            status = await referrals.get_status(dev_env.client, code)
            medical = next(s for s in status.services if s.service == "medical")
            assert medical.stage == "closed" and medical.outcome == "transferred"
            assert await act(action="close", service="medical", outcome="transferred") == f"/referrals/{code}?rejected=not_applicable"
            # (French last: the language chosen is kept in a cookie for the pages that follow)
            for lang, words in (("en", "transferred elsewhere"), ("ar", "أحيل إلى جهة أخرى"), ("fr", "orientée ailleurs")):
                shown = unescape((await http.get(f"/referrals/{code}?lang={lang}")).text)
                assert f'id="outcome-medical" data-outcome="transferred">{words}</dd>' in shown, lang

            # Actions need the CSRF token: nothing changes without it
            for bad in ({}, {"csrf": "wrong"}):
                response = await http.post(f"/referrals/{code}/actions", data={**bad, "action": "cancel", "confirm": "yes"})
                assert response.status_code == 403
            assert (await referrals.get_status(dev_env.client, code)).closed_reason is None

            # Stopping the whole referral needs the confirmation box
            assert await act(action="cancel") == f"/referrals/{code}?rejected=confirm"
            assert await act(action="launch") == f"/referrals/{code}?rejected=unknown_action"
            # Stopping the whole referral: close needs its outcome, cancel takes one if given
            assert await act(action="close", confirm="yes") == f"/referrals/{code}?rejected=outcome"
            assert await act(action="cancel", confirm="yes", outcome="finished") == f"/referrals/{code}?rejected=outcome"
            assert await act(action="cancel", confirm="yes", reason="duplicate of another case") == f"/referrals/{code}?done=cancel"
            status = await referrals.get_status(dev_env.client, code)
            assert status.stage == "closed" and status.closed_reason == "cancelled"
            assert [s.outcome for s in status.services if s.service != "medical"] == [None, None]
            assert await act(action="close", confirm="yes", outcome="other") == f"/referrals/{code}?rejected=referral_closed"
            page = await http.get(f"/referrals/{code}")
            assert "Cette orientation est clôturée" in unescape(page.text)
            assert 'name="partner_id"' not in page.text


async def test_withdraw_consent_and_the_list(dev_env, make_settings, smtp) -> None:
    base = web_settings(make_settings)
    async with running_worker(dev_env.client, base) as tq:
        settings = base.model_copy(update={"referral_task_queue": tq})
        started = await referrals.start_referral(dev_env.client, adult_intake(needs=["shelter"]), tq)
        code = started.code
        async with browser_like(settings, dev_env.client) as http:
            await log_in(http, "api", "tok-first-123")
            await wait_for(lambda: _status_when(dev_env.client, code, lambda s: s.stage != "identification"))

            async def listed() -> bool:
                page = await http.get("/referrals")
                return f"/referrals/{code}" in page.text

            await wait_for(listed)
            assert (await http.get(f"/referrals?code=r-{code.lower()}")).headers["location"] == f"/referrals/{code}"
            page = await http.get(f"/referrals/{code}")
            # The form's outcome choice goes with close or cancel only: a withdrawal of consent is
            # the person declining, whatever was chosen (the buttons skip the required choice).
            assert 'value="withdraw_consent" class="danger" formnovalidate' in page.text
            response = await http.post(
                f"/referrals/{code}/actions",
                data={"csrf": csrf_of(page.text), "action": "withdraw_consent", "confirm": "yes", "outcome": "delivered"},
            )
            assert response.headers["location"] == f"/referrals/{code}?done=withdraw_consent"
            status = await referrals.get_status(dev_env.client, code)
            assert status.closed_reason == "consent_withdrawn" and status.services[0].outcome == "person_declined"
            page = await http.get(f"/referrals/{code}?lang=ar")
            assert 'dir="rtl"' in page.text and "سحب الموافقة" in page.text and "رفض الشخص" in page.text


async def test_the_page_shows_each_decline_code_and_outcome_in_three_languages(dev_env, make_settings, smtp) -> None:
    base = web_settings(make_settings)
    async with running_worker(dev_env.client, base) as tq:
        settings = base.model_copy(update={"referral_task_queue": tq})
        code = (await referrals.start_referral(dev_env.client, adult_intake(needs=["shelter", "legal"]), tq)).code
        first = await wait_for(lambda: _offered_to(dev_env.client, code, "shelter"))
        await referrals.partner_reply(dev_env.client, code, PartnerReply(partner_id=first, action="decline", decline_code=2))
        await wait_for(lambda: _status_when(dev_env.client, code, lambda s: len(s.services[0].attempts) > 1))
        await referrals.coordinator_action(dev_env.client, code, CoordinatorAction(action="close", service="legal", outcome="not_needed"))
        async with browser_like(settings, dev_env.client) as http:
            await log_in(http)
            for lang, declined, outcome in (
                ("en", "Reason code: 2 · not a service we offer", "no longer needed"),
                ("ar", "رمز السبب: \u20682 · خدمة لا نقدمها\u2069", "لم تعد ضرورية"),
                ("fr", "Code du motif : 2 · service que nous n'offrons pas", "plus nécessaire"),
            ):
                page = unescape((await http.get(f"/referrals/{code}?lang={lang}")).text)
                assert f'data-decline-code="2">{declined}</span>' in page, lang
                assert f'id="outcome-legal" data-outcome="not_needed">{outcome}</dd>' in page, lang
                assert 'id="outcome-shelter"' not in page  # still open: no outcome yet
        await referrals.coordinator_action(dev_env.client, code, CoordinatorAction(action="cancel"))


async def _offered_to(client, code: str, service: str) -> str | None:
    status = await referrals.get_status(client, code)
    s = next(s for s in status.services if s.service == service)
    return s.partner_id if s.stage == "awaiting_acceptance" else None


async def test_unknown_and_malformed_codes_are_not_found(dev_env, make_settings) -> None:
    async with browser_like(web_settings(make_settings), dev_env.client) as http:
        await log_in(http)
        unknown = await http.get("/referrals/33333")
        assert unknown.status_code == 404 and "Orientation introuvable" in unknown.text
        assert (await http.get("/referrals/not-a-code")).status_code == 404
        assert (await http.get("/referrals?code=nope")).status_code == 404
        page = await http.get("/referrals/new")
        response = await http.post("/referrals/33333/actions", data={"csrf": csrf_of(page.text), "action": "cancel", "confirm": "yes"})
        assert response.status_code == 404


async def _status_when(client, code, predicate):
    status = await referrals.get_status(client, code)
    return status if predicate(status) else None


def test_service_timeline_is_the_projection_worded_for_the_page() -> None:
    """The order and highlights are projection.service_timeline's (tests/workflows/test_projection.py);
    the page adds translation keys, partner names and formatted times."""
    from datetime import datetime, timedelta

    from workflows.models import Attempt, FollowUp, ServiceStatus

    t0 = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
    hour = timedelta(hours=1)
    service = ServiceStatus(
        service="shelter",
        stage="follow_up",
        partner_id="p2",
        accepted_at=t0 + 3 * hour,
        escalation_level=1,
        attempts=[
            Attempt(partner_id="p1", offered_at=t0, remind_at=t0 + hour, deadline=t0 + 2 * hour, reminded=True, outcome="timed_out", reason="unreachable"),
            Attempt(partner_id="p2", offered_at=t0 + 2 * hour, remind_at=t0 + 3 * hour, deadline=t0 + 4 * hour, outcome="accepted", replied_at=t0 + 3 * hour),
        ],
        follow_ups=[
            FollowUp(
                number=1, partner_id="p2", due_at=t0 + 27 * hour, sent_at=t0 + 27 * hour,
                answer_by=t0 + 51 * hour, answer="silence", answered_at=t0 + 51 * hour,
            ),
            FollowUp(number=2, partner_id="p2", due_at=t0 + 200 * hour),
        ],
    )
    events = referral_pages.service_timeline(service, lambda d: d.isoformat() if d else "", name=lambda p: p.upper())
    assert [e.key for e in events] == [
        "ev_offer", "ev_reminder", "ev_timed_out", "ev_offer", "ev_accepted", "ev_checkin_sent", "ev_checkin_silence", "ev_checkin_due",
    ]
    assert [e.key for e in events if e.highlight] == ["ev_timed_out", "ev_checkin_silence"]
    assert events[-1].future and not any(e.future for e in events[:-1])
    assert events[0].values == {"partner": "P1", "deadline": (t0 + 2 * hour).isoformat()}
    assert events[2].reason == "unreachable" and events[2].reason_key == "reason_unreachable"
    assert events[-1].values == {"partner": "P2", "n": 2, "answer_by": ""}
