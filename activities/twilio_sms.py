"""The Twilio SMS backend (SMS_BACKEND=twilio), on the official `twilio` package's async client.

One `TwilioSms` holds one Twilio `Client` over one `AsyncTwilioHttpClient` whose aiohttp session
is opened on the first send (it needs a running event loop) and closed by `aclose()` or by
leaving `async with TwilioSms(...)`. `TWILIO_API_BASE_URL` replaces the API domain's base URL
(`client.api.base_url`, by default `https://api.twilio.com`), so tests and gateways see the same
`/2010-04-01/Accounts/{sid}/Messages.json` paths; edge and region are not applied then.

Timeouts and retries
--------------------
twilio 9.x's `AsyncTwilioHttpClient` never passes its own `timeout` to aiohttp, so every call to
Twilio (the send, and the look-up below) is bounded here by `asyncio.timeout(
TWILIO_SEND_TIMEOUT_SECONDS)`. The SDK retries nothing unless built with `max_retries` (then it
wraps the session in aiohttp_retry, which would repeat the POST): it is built without, and every
retry is Temporal's.

Duplicates
----------
Twilio has no idempotency key, so a POST whose outcome is unknown may have created the message.
Errors are sorted by what they say about the POST:

- not processed: HTTP 429 / error 20429, a connection that could not be opened, or any 4xx
  answer. Nothing was created; a plain retryable error (`TwilioUnavailable`, `TwilioRejected`)
  or `SmsRefused` is raised.
- unknown: a timeout, a 5xx, a connection reset or an unreadable answer after the request left.
  `TwilioOutcomeUnknown` (retryable) is raised and the attempt is remembered.

Before each POST the backend writes a record for the send's `key` (stable across Temporal
retries of one message): when the first attempt whose outcome is not known started, and a
SHA-256 of each body tried. The record is one small JSON file per key under
`<REFERRAL_DATA_DIR>/twilio_attempts/`, so a restarted worker (or another worker on the same
disk) keeps it; with no directory it lives in memory only. The next attempt of that key first
lists the messages sent to the same number (`GET Messages.json?To=..&From=..`, newest first)
and, if one with the same body was created since that first attempt (minus a clock-skew
margin), returns its SID instead of sending again. The list is not filtered by `DateSent>`
because `date_sent` stays empty while a message is queued, which is exactly the state of a
message created just before a timeout. Once a send succeeds its SID is kept in the record too,
so an activity retried for another reason (say a second recipient failed) sends nothing again.
Records are pruned after `ATTEMPT_RECORD_TTL`.

This makes duplicates rare, not impossible: a message Twilio created but does not list yet, or
whose body Twilio rewrote (smart encoding on the Messaging Service), is sent again.

Refusals
--------
Errors 21211 (invalid `To`), 21614 (not a mobile number) and 21635 (landline) raise
`SmsRefused("InvalidPhoneNumber")`; 21610 (recipient replied STOP) raises
`SmsRefused("OptedOut")`; the activity makes those non-retryable and the workflow falls back to
email. Every other 4xx (bad credentials 20003, sender not SMS-capable 21606, geographic
permission 21408, a suspended account, ...) is about our account or configuration rather than
the recipient, so it is raised as the retryable `TwilioRejected`: an operator can fix the
account while Temporal retries (as with ConfigError), instead of every referral silently
falling back to email until the give-up deadline.

Logs carry the message SID, its status, the HTTP status and Twilio's error code, never the
phone number or the body. Twilio's own error messages repeat the number, so they are neither
logged nor put into the exceptions raised here (which Temporal records in the history), and the
SDK's stdlib logger, which writes query strings, is silenced.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlencode, urlparse

import aiohttp
import structlog
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client

from activities.sms import SmsRefused
from config.settings import Settings

log = structlog.get_logger("twilio_sms")

INVALID_NUMBER_CODES = frozenset({21211, 21614, 21635})
OPTED_OUT_CODES = frozenset({21610})
TOO_MANY_REQUESTS_CODE = 20429

# Twilio's clock and ours may disagree; the look-up accepts messages created this much before
# the first attempt started.
LOOKUP_CLOCK_SKEW = timedelta(minutes=5)
# At most this many of the recipient's messages are read by one look-up.
LOOKUP_MAX_MESSAGES = 200
LOOKUP_PAGE_SIZE = 50
# Delivery is given up after 24 hours (workflows/referral.py); a week leaves room to spare.
ATTEMPT_RECORD_TTL = timedelta(days=7)


class TwilioConfigError(ValueError):
    """The Twilio settings are incomplete or malformed."""


class TwilioSendError(Exception):
    """A retryable failure to send; subclasses say whether Twilio may have created the message."""

    def __init__(self, message: str, status: int | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class TwilioUnavailable(TwilioSendError):
    """Twilio did not process the request (429 / 20429, connection not opened): nothing was created."""


class TwilioRejected(TwilioSendError):
    """Twilio refused the request with a 4xx that is not about the recipient (see the module docstring)."""


class TwilioOutcomeUnknown(TwilioSendError):
    """The message may have been created; the next attempt of the same key looks for it first."""


class TwilioLookupFailed(TwilioSendError):
    """The look-up for a message created by an earlier attempt failed; nothing was sent."""


def _now() -> datetime:
    return datetime.now(UTC)


def _normalise(body: str) -> str:
    return body.replace("\r\n", "\n").strip()


def body_digest(body: str) -> str:
    return hashlib.sha256(_normalise(body).encode("utf-8")).hexdigest()


def status_callback_url(public_base_url: str | None) -> str | None:
    """`<PUBLIC_BASE_URL>/sms/status`, or None when the base URL is not an http(s) URL."""
    if not public_base_url:
        return None
    parsed = urlparse(public_base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        return None
    return public_base_url.rstrip("/") + "/sms/status"


def _quiet_sdk_logger() -> logging.Logger:
    # The SDK logs every request URL with its query string (the `To` of a look-up) at INFO.
    # Not propagated to the root handlers, and only CRITICAL reaches its own null handler.
    logger = logging.getLogger("twilio_sms.sdk")
    logger.setLevel(logging.CRITICAL)
    logger.propagate = False
    if not logger.handlers:  # one handler however many clients are built
        logger.addHandler(logging.NullHandler())
    return logger


class AttemptStore:
    """Per-key records of sends whose outcome was not known, and of sends that succeeded.

    One JSON file per key (named by a hash of the key) under `directory`, written atomically;
    with `directory=None` the records live in this object only.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._memory: dict[str, dict[str, Any]] = {}
        self._pruned = False

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / (hashlib.sha256(key.encode("utf-8")).hexdigest()[:40] + ".json")

    def get(self, key: str) -> dict[str, Any] | None:
        if self.directory is None:
            record = self._memory.get(key)
            return dict(record) if record is not None else None
        try:
            record = json.loads(self._path(key).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except ValueError:
            # Unreadable (writes are atomic, so hardly ever): treat the outcome as unknown since
            # the file was last written, so the next send looks before sending.
            mtime = datetime.fromtimestamp(self._path(key).stat().st_mtime, UTC)
            return {"key": key, "since": mtime.isoformat(), "bodies": []}
        return record if isinstance(record, dict) and record.get("key") == key else None

    def put(self, key: str, record: dict[str, Any]) -> None:
        record = {**record, "key": key, "updated": _now().isoformat()}
        if self.directory is None:
            self._memory[key] = record
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(key)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
            json.dump(record, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def delete(self, key: str) -> None:
        if self.directory is None:
            self._memory.pop(key, None)
            return
        self._path(key).unlink(missing_ok=True)

    def prune(self, max_age: timedelta = ATTEMPT_RECORD_TTL) -> None:
        if self._pruned or self.directory is None or not self.directory.is_dir():
            self._pruned = True
            return
        self._pruned = True
        limit = time.time() - max_age.total_seconds()
        for path in self.directory.glob("*.json"):
            try:
                if path.stat().st_mtime < limit:
                    path.unlink(missing_ok=True)
            except OSError:
                continue


class TwilioSms:
    """Sends SMS through Twilio's Messages API. See the module docstring for retries and duplicates.

    Use `TwilioSms.from_settings(settings)`; close with `await sms.aclose()` or `async with`.
    """

    def __init__(
        self,
        account_sid: str,
        auth_token: str,
        *,
        from_number: str | None = None,
        messaging_service_sid: str | None = None,
        api_base_url: str | None = None,
        timeout_seconds: float = 10.0,
        status_callback: str | None = None,
        attempts_dir: Path | None = None,
    ) -> None:
        missing = [
            name
            for name, value in (("TWILIO_ACCOUNT_SID", account_sid), ("TWILIO_AUTH_TOKEN", auth_token))
            if not value
        ]
        if not from_number and not messaging_service_sid:
            missing.append("TWILIO_FROM_NUMBER or TWILIO_MESSAGING_SERVICE_SID")
        if missing:
            raise TwilioConfigError("SMS_BACKEND=twilio needs " + ", ".join(missing) + " to be set")
        if not account_sid.startswith("AC"):
            raise TwilioConfigError("TWILIO_ACCOUNT_SID must be an account SID (AC...), not an API key")
        if messaging_service_sid and not messaging_service_sid.startswith("MG"):
            raise TwilioConfigError("TWILIO_MESSAGING_SERVICE_SID must be a Messaging Service SID (MG...)")
        if api_base_url:
            parsed = urlparse(api_base_url)
            if parsed.scheme not in ("http", "https") or not parsed.netloc:
                raise TwilioConfigError(f"TWILIO_API_BASE_URL must be an http(s) URL, got {api_base_url!r}")
        if not timeout_seconds or timeout_seconds <= 0:
            raise TwilioConfigError("TWILIO_SEND_TIMEOUT_SECONDS must be positive")

        self.from_number = from_number or None
        self.messaging_service_sid = messaging_service_sid or None
        self.status_callback = status_callback
        self.timeout_seconds = float(timeout_seconds)
        self.attempts = AttemptStore(attempts_dir)

        # No session yet (aiohttp needs a running loop) and no max_retries: see _open().
        self._http = AsyncTwilioHttpClient(pool_connections=False, logger=_quiet_sdk_logger(), max_retries=None)
        self._client = Client(username=account_sid, password=auth_token, account_sid=account_sid, http_client=self._http)
        # Settings are the only configuration: ignore TWILIO_EDGE / TWILIO_REGION from the
        # environment (they would also rewrite an overridden host).
        self._client.edge = None
        self._client.region = None
        if api_base_url:
            self._client.api.base_url = api_base_url.rstrip("/")
        # One send per key at a time in this process; a lock lives while someone holds or awaits it.
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    @classmethod
    def from_settings(cls, settings: Settings) -> TwilioSms:
        return cls(
            settings.twilio_account_sid or "",
            settings.twilio_auth_token or "",
            from_number=settings.twilio_from_number,
            messaging_service_sid=settings.twilio_messaging_service_sid,
            api_base_url=settings.twilio_api_base_url,
            timeout_seconds=settings.twilio_send_timeout_seconds,
            status_callback=status_callback_url(settings.public_base_url),
            attempts_dir=Path(settings.referral_data_dir) / "twilio_attempts",
        )

    @property
    def api_base_url(self) -> str:
        return self._client.api.base_url

    # -- lifecycle -------------------------------------------------------------------------

    def _open(self) -> None:
        session = self._http.session
        if session is None or session.closed:
            # The SDK's own session would be built the same way; one per TwilioSms, reused.
            self._http.session = aiohttp.ClientSession()
            self.attempts.prune()

    async def aclose(self) -> None:
        session = self._http.session
        self._http.session = None
        if session is not None and not session.closed:
            await session.close()

    async def __aenter__(self) -> TwilioSms:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- sending ---------------------------------------------------------------------------

    @property
    def _messages(self):
        return self._client.api.v2010.account.messages

    async def send(self, to: str, body: str, key: str, callback_params: dict[str, str] | None = None) -> str:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock:
            return await self._send(to, body, key, callback_params)

    async def _send(self, to: str, body: str, key: str, callback_params: dict[str, str] | None = None) -> str:
        self._open()
        digest = body_digest(body)
        # The record store writes with fsync: off the event loop, which polls and completes every task.
        record = await asyncio.to_thread(self.attempts.get, key)
        if record and record.get("sid"):
            log.info("twilio message already sent", sid=record["sid"])
            return record["sid"]

        bodies = sorted(set(record.get("bodies", []) if record else []) | {digest})
        since_text = record.get("since") if record else None
        if since_text:
            since = datetime.fromisoformat(since_text)
            wanted = set(bodies)
            sid = await self._find(to, lambda b: body_digest(b) in wanted, since)
            if sid:
                await asyncio.to_thread(self.attempts.put, key, {"since": since_text, "bodies": bodies, "sid": sid})
                log.info("twilio message found from an earlier attempt", sid=sid)
                return sid

        # Written before the request leaves: a crash from here on also leaves the outcome unknown.
        await asyncio.to_thread(self.attempts.put, key, {"since": since_text or _now().isoformat(), "bodies": bodies, "sid": None})

        def processed_nothing() -> None:
            # This attempt created nothing; forget it unless an earlier one is still unknown.
            if since_text is None:
                self.attempts.delete(key)

        try:
            async with asyncio.timeout(self.timeout_seconds):
                message = await self._messages.create_async(**self._create_params(to, body, callback_params))
        except TwilioRestException as err:
            status, code = err.status, _code(err)
            if status == 429 or code == TOO_MANY_REQUESTS_CODE:
                processed_nothing()
                log.warning("twilio send throttled", http_status=status, error_code=code)
                raise TwilioUnavailable(f"Twilio throttled the send (HTTP {status}, error {code})", status, code) from None
            if status >= 500:
                log.warning("twilio send outcome unknown", http_status=status, error_code=code)
                raise TwilioOutcomeUnknown(f"Twilio answered HTTP {status} (error {code})", status, code) from None
            processed_nothing()
            if code in INVALID_NUMBER_CODES:
                log.warning("twilio refused the number", http_status=status, error_code=code)
                raise SmsRefused("InvalidPhoneNumber", f"Twilio error {code}") from None
            if code in OPTED_OUT_CODES:
                log.warning("twilio recipient opted out", http_status=status, error_code=code)
                raise SmsRefused("OptedOut", f"Twilio error {code}") from None
            log.error("twilio rejected the send", http_status=status, error_code=code)
            raise TwilioRejected(f"Twilio rejected the send (HTTP {status}, error {code})", status, code) from None
        except aiohttp.ClientConnectorError as err:
            # Raised while opening the connection: the request never left.
            processed_nothing()
            log.warning("twilio unreachable", error=type(err).__name__)
            raise TwilioUnavailable(f"Twilio unreachable ({type(err).__name__})") from None
        except TimeoutError:
            log.warning("twilio send timed out", timeout_seconds=self.timeout_seconds)
            raise TwilioOutcomeUnknown(f"no answer from Twilio within {self.timeout_seconds:g} s") from None
        except Exception as err:  # connection reset, truncated or unreadable answer, ...
            log.warning("twilio send outcome unknown", error=type(err).__name__)
            raise TwilioOutcomeUnknown(f"Twilio send failed after the request left ({type(err).__name__})") from None

        await asyncio.to_thread(self.attempts.put, key, {"since": since_text, "bodies": bodies, "sid": message.sid})
        log.info("twilio message created", sid=message.sid, status=message.status)
        return message.sid

    def _create_params(self, to: str, body: str, callback_params: dict[str, str] | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"to": to, "body": body}
        if self.from_number:
            params["from_"] = self.from_number
        if self.messaging_service_sid:
            params["messaging_service_sid"] = self.messaging_service_sid
        if self.status_callback:
            # `?code=&partner=` tells the status webhook which referral to tell; Twilio signs
            # the whole URL, query included, so these cannot be forged.
            query = f"?{urlencode(sorted(callback_params.items()))}" if callback_params else ""
            params["status_callback"] = self.status_callback + query
        return params

    # -- the duplicate look-up ---------------------------------------------------------------

    async def find_sent(self, to: str, body: str, since: datetime) -> str | None:
        """The SID of an outbound message to `to` with this body created since `since`, if any."""
        self._open()
        wanted = body_digest(body)
        return await self._find(to, lambda b: body_digest(b) == wanted, since)

    async def _find(self, to: str, matches: Callable[[str], bool], since: datetime) -> str | None:
        threshold = since - LOOKUP_CLOCK_SKEW
        filters: dict[str, Any] = {"to": to, "page_size": LOOKUP_PAGE_SIZE}
        if self.from_number:
            filters["from_"] = self.from_number
        try:
            async with asyncio.timeout(self.timeout_seconds):
                scanned = 0
                # Newest first; unsent (queued) messages have no date_sent and come first.
                async for message in await self._messages.stream_async(**filters):
                    scanned += 1
                    if scanned > LOOKUP_MAX_MESSAGES:
                        break
                    if message.date_sent is not None and message.date_sent < threshold:
                        break
                    if not str(message.direction or "").startswith("outbound"):
                        continue
                    if message.date_created is None or message.date_created < threshold:
                        continue
                    if self.messaging_service_sid and message.messaging_service_sid not in (None, self.messaging_service_sid):
                        continue
                    if message.body is not None and matches(message.body):
                        return message.sid
        except TwilioRestException as err:
            code = _code(err)
            log.warning("twilio look-up failed", http_status=err.status, error_code=code)
            raise TwilioLookupFailed(f"looking for an earlier message failed (HTTP {err.status}, error {code})", err.status, code) from None
        except TimeoutError:
            log.warning("twilio look-up timed out", timeout_seconds=self.timeout_seconds)
            raise TwilioLookupFailed(f"looking for an earlier message took over {self.timeout_seconds:g} s") from None
        except Exception as err:
            log.warning("twilio look-up failed", error=type(err).__name__)
            raise TwilioLookupFailed(f"looking for an earlier message failed ({type(err).__name__})") from None
        return None


def _code(err: TwilioRestException) -> int | None:
    try:
        return int(err.code) if err.code is not None else None
    except (TypeError, ValueError):
        return None
