"""The real TwilioSms against the fake Twilio on loopback: fields sent, refusals, timeouts, duplicates."""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from urllib.parse import parse_qsl

import pytest
import structlog
from twilio.request_validator import RequestValidator

from activities import twilio_sms
from activities.sms import SmsRefused
from activities.sms_channel import build_sms_backend
from activities.twilio_sms import (
    TwilioConfigError,
    TwilioOutcomeUnknown,
    TwilioRejected,
    TwilioSms,
    TwilioUnavailable,
)
from config.settings import Settings
from standins.twilio import (
    DEFAULT_FROM_NUMBER,
    DEFAULT_MESSAGING_SERVICE_SID,
    FakeTwilio,
    error,
    fail_after_create,
    hang,
    status,
)

# twilio 9.13's async client passes aiohttp's deprecated BasicAuth; nothing to do on our side.
pytestmark = [
    pytest.mark.filterwarnings("ignore:BasicAuth is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The 'auth' parameter is deprecated:DeprecationWarning"),
]

TO = "+212612345678"
BODY = "R-7K3Q9 · hébergement · URGENT · Tanger. Répondez A 7K3Q9 pour accepter, D 7K3Q9 pour refuser."
CALLBACK = "https://referrals.example.org/sms/status"


@pytest.fixture(scope="module")
def fake_server() -> Iterator[FakeTwilio]:
    with FakeTwilio() as server:
        yield server


@pytest.fixture
def fake(fake_server: FakeTwilio) -> FakeTwilio:
    fake_server.reset()
    return fake_server


@pytest.fixture
def settings_for(fake: FakeTwilio, tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        values: dict[str, object] = dict(
            sms_backend="twilio",
            referral_data_dir=tmp_path / "data",
            public_base_url="https://referrals.example.org/",
            twilio_send_timeout_seconds=5.0,
            **fake.settings_overrides(),
        )
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[arg-type]

    return make


@pytest.fixture
async def sms(settings_for: Callable[..., Settings]) -> AsyncIterator[TwilioSms]:
    async with TwilioSms.from_settings(settings_for()) as backend:
        yield backend


async def test_sends_with_a_from_number(sms: TwilioSms, fake: FakeTwilio) -> None:
    sid = await sms.send(TO, BODY, "referral-R-7K3Q9/run/1/p1")

    assert re.fullmatch(r"SM[0-9a-f]{32}", sid)
    [post] = fake.posts
    assert post.path == f"/2010-04-01/Accounts/{fake.account_sid}/Messages.json"
    assert post.form == {"To": TO, "From": DEFAULT_FROM_NUMBER, "Body": BODY, "StatusCallback": CALLBACK}
    assert post.headers["authorization"].startswith("Basic ")
    assert post.headers["content-type"] == "application/x-www-form-urlencoded"
    assert [m["sid"] for m in fake.messages] == [sid]
    assert fake.message(sid)["status"] == "queued"


async def test_sends_with_a_messaging_service(settings_for: Callable[..., Settings], fake: FakeTwilio) -> None:
    settings = settings_for(twilio_from_number=None, twilio_messaging_service_sid=DEFAULT_MESSAGING_SERVICE_SID)
    async with TwilioSms.from_settings(settings) as sms:
        sid = await sms.send(TO, BODY, "k-ms")

    [post] = fake.posts
    assert post.form == {"To": TO, "MessagingServiceSid": DEFAULT_MESSAGING_SERVICE_SID, "Body": BODY, "StatusCallback": CALLBACK}
    assert fake.message(sid)["status"] == "accepted"


@pytest.mark.parametrize("public_base_url", ["", "not a url", "ftp://example.org"])
async def test_no_status_callback_without_an_http_base_url(settings_for: Callable[..., Settings], fake: FakeTwilio, public_base_url: str) -> None:
    async with TwilioSms.from_settings(settings_for(public_base_url=public_base_url)) as sms:
        await sms.send(TO, BODY, "k-nocb")
    assert "StatusCallback" not in fake.posts[0].form


async def test_throttled_then_retried_creates_one_message(sms: TwilioSms, fake: FakeTwilio) -> None:
    fake.script(status(429, code=20429))
    with pytest.raises(TwilioUnavailable) as raised:
        await sms.send(TO, BODY, "k-429")
    assert not isinstance(raised.value, SmsRefused)
    assert (raised.value.status, raised.value.code) == (429, 20429)

    # Temporal retries the activity: same key.
    sid = await sms.send(TO, BODY, "k-429")

    assert len(fake.posts) == 2
    assert [m["sid"] for m in fake.messages] == [sid]
    # A 429 created nothing, so the retry needed no look-up.
    assert fake.lists == []


@pytest.mark.parametrize(
    ("code", "kind"),
    [(21211, "InvalidPhoneNumber"), (21614, "InvalidPhoneNumber"), (21635, "InvalidPhoneNumber"), (21610, "OptedOut")],
)
async def test_refusals(sms: TwilioSms, fake: FakeTwilio, code: int, kind: str) -> None:
    fake.script(error(400, code=code))
    with pytest.raises(SmsRefused) as raised:
        await sms.send(TO, BODY, f"k-{code}")
    assert raised.value.kind == kind
    # Twilio's message repeats the number; nothing of it reaches the exception.
    assert TO not in str(raised.value) and raised.value.__cause__ is None and raised.value.__suppress_context__
    assert fake.messages == []


async def test_other_client_errors_are_retryable(sms: TwilioSms, fake: FakeTwilio) -> None:
    fake.script(error(400, code=21606))
    with pytest.raises(TwilioRejected) as raised:
        await sms.send(TO, BODY, "k-21606")
    assert not isinstance(raised.value, SmsRefused)
    assert raised.value.code == 21606


async def test_wrong_credentials_are_retryable(settings_for: Callable[..., Settings], fake: FakeTwilio) -> None:
    async with TwilioSms.from_settings(settings_for(twilio_auth_token="wrong")) as sms:
        with pytest.raises(TwilioRejected) as raised:
            await sms.send(TO, BODY, "k-401")
    assert (raised.value.status, raised.value.code) == (401, 20003)


async def test_a_hung_connection_is_bounded_by_the_timeout(settings_for: Callable[..., Settings], fake: FakeTwilio) -> None:
    fake.script(hang(30))
    async with TwilioSms.from_settings(settings_for(twilio_send_timeout_seconds=1)) as sms:
        started = time.monotonic()
        with pytest.raises(TwilioOutcomeUnknown):
            await sms.send(TO, BODY, "k-hang")
        assert time.monotonic() - started < 3

        # The retry looks first, finds nothing (the hung request created nothing) and sends.
        sid = await sms.send(TO, BODY, "k-hang")
    assert len(fake.lists) == 1 and len(fake.posts) == 2
    assert [m["sid"] for m in fake.messages] == [sid]


@pytest.mark.parametrize("mode", ["500", "drop"])
async def test_unknown_outcome_then_retry_finds_the_message(sms: TwilioSms, fake: FakeTwilio, mode: str) -> None:
    fake.script(fail_after_create(mode))  # type: ignore[arg-type]
    with pytest.raises(TwilioOutcomeUnknown):
        await sms.send(TO, BODY, "k-unknown")
    [created] = fake.messages

    sid = await sms.send(TO, BODY, "k-unknown")

    assert sid == created["sid"]
    assert len(fake.posts) == 1, "the retry must not send a second message"
    [lookup] = fake.lists
    assert lookup.query["To"] == TO and lookup.query["From"] == DEFAULT_FROM_NUMBER
    assert "DateSent>" not in lookup.query  # queued messages have no date_sent


async def test_unknown_outcome_survives_a_worker_restart(settings_for: Callable[..., Settings], fake: FakeTwilio) -> None:
    settings = settings_for()
    fake.script(fail_after_create())
    async with TwilioSms.from_settings(settings) as first:
        with pytest.raises(TwilioOutcomeUnknown):
            await first.send(TO, BODY, "k-restart")
    assert list((Path(settings.referral_data_dir) / "twilio_attempts").glob("*.json"))

    async with TwilioSms.from_settings(settings) as second:
        sid = await second.send(TO, BODY, "k-restart")

    assert [m["sid"] for m in fake.messages] == [sid]
    assert len(fake.posts) == 1


async def test_the_look_up_ignores_other_bodies_and_numbers(sms: TwilioSms, fake: FakeTwilio) -> None:
    # Another message to the same number, and the same text to another number.
    await sms.send(TO, "another notice", "k-other-1")
    await sms.send("+212698765432", BODY, "k-other-2")
    fake.script(status(503, code=20503))
    with pytest.raises(TwilioOutcomeUnknown):
        await sms.send(TO, BODY, "k-mine")

    sid = await sms.send(TO, BODY, "k-mine")

    assert len(fake.messages) == 3
    assert sid == fake.messages[-1]["sid"]


async def test_the_look_up_reads_past_the_first_page(sms: TwilioSms, fake: FakeTwilio) -> None:
    fake.script(fail_after_create())
    with pytest.raises(TwilioOutcomeUnknown):
        await sms.send(TO, BODY, "k-paged")
    [created] = fake.messages
    for i in range(55):  # newer messages to the same number push it to the second page
        await sms.send(TO, f"notice {i}", f"k-filler-{i}")

    sid = await sms.send(TO, BODY, "k-paged")

    assert sid == created["sid"]
    assert [r.query.get("Page", "0") for r in fake.lists] == ["0", "1"]
    assert len(fake.messages) == 56


async def test_the_same_key_after_success_sends_nothing(sms: TwilioSms, fake: FakeTwilio) -> None:
    first = await sms.send(TO, BODY, "k-twice")
    again = await sms.send(TO, BODY, "k-twice")
    assert first == again
    assert len(fake.requests) == 1


async def test_connection_refused_is_retryable_and_not_remembered(settings_for: Callable[..., Settings], fake: FakeTwilio) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    settings = settings_for(twilio_api_base_url=f"http://127.0.0.1:{closed_port}")
    async with TwilioSms.from_settings(settings) as sms:
        with pytest.raises(TwilioUnavailable):
            await sms.send(TO, BODY, "k-refused")
        assert sms.attempts.get("k-refused") is None


async def test_logs_carry_no_number_and_no_body(
    sms: TwilioSms, fake: FakeTwilio, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # the SDK's own stdlib logger writes request URLs at INFO
    fake.script(fail_after_create(), error(400, code=21211))
    with structlog.testing.capture_logs() as logs:
        # A fresh proxy, in case logging was configured with cache_logger_on_first_use earlier.
        monkeypatch.setattr(twilio_sms, "log", structlog.get_logger("twilio_sms"))
        with pytest.raises(TwilioOutcomeUnknown):
            await sms.send(TO, BODY, "k-logs")
        sid = await sms.send(TO, BODY, "k-logs")
        with pytest.raises(SmsRefused):
            await sms.send(TO, BODY, "k-logs-2")
    assert logs, "expected log entries"
    assert any(entry.get("sid") == sid for entry in logs)
    text = repr(logs) + caplog.text
    assert TO not in text and TO[1:] not in text and BODY not in text and "7K3Q9" not in text


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"twilio_account_sid": None}, "TWILIO_ACCOUNT_SID"),
        ({"twilio_auth_token": None}, "TWILIO_AUTH_TOKEN"),
        ({"twilio_from_number": None, "twilio_messaging_service_sid": None}, "TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID"),
        ({"twilio_account_sid": "SK" + "0" * 32}, "TWILIO_ACCOUNT_SID"),
        ({"twilio_api_base_url": "api.twilio.com"}, "TWILIO_API_BASE_URL"),
    ],
)
def test_incomplete_settings_are_refused_at_construction(settings_for: Callable[..., Settings], overrides: dict, named: str) -> None:
    settings = settings_for(**overrides)
    with pytest.raises(TwilioConfigError, match=re.escape(named)):
        TwilioSms.from_settings(settings)
    with pytest.raises(TwilioConfigError, match=re.escape(named)):
        build_sms_backend(settings)


def test_api_base_url_is_the_domain_base_url(settings_for: Callable[..., Settings], fake: FakeTwilio) -> None:
    sms = TwilioSms.from_settings(settings_for(twilio_api_base_url=fake.base_url + "/"))
    assert sms.api_base_url == fake.base_url
    assert isinstance(build_sms_backend(settings_for()), TwilioSms)


# -- the fake's webhook signing, checked the way the web app will check it ---------------------


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[tuple[str, dict[str, str], dict[str, str]]]] = []

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        params = dict(parse_qsl(self.rfile.read(length).decode()))
        self.received.append((self.path, params, {k.lower(): v for k, v in self.headers.items()}))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


async def test_status_callbacks_are_signed_like_twilio(settings_for: Callable[..., Settings], fake: FakeTwilio) -> None:
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{receiver.server_address[1]}"
        async with TwilioSms.from_settings(settings_for(public_base_url=base)) as sms:
            sid = await sms.send(TO, BODY, "k-callback")
        assert fake.posts[0].form["StatusCallback"] == base + "/sms/status"

        _Receiver.received.clear()
        response = fake.send_status(sid, "undelivered", error_code=30003)
        assert response.status_code == 204
        [(path, params, headers)] = _Receiver.received
        assert path == "/sms/status"
        assert params["MessageSid"] == sid and params["MessageStatus"] == "undelivered" and params["ErrorCode"] == "30003"
        validator = RequestValidator(fake.auth_token)
        assert validator.validate(base + path, params, headers["x-twilio-signature"])
        assert not RequestValidator("another-token").validate(base + path, params, headers["x-twilio-signature"])
        assert fake.message(sid)["status"] == "undelivered"
    finally:
        receiver.shutdown()
        receiver.server_close()
