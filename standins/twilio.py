"""A Twilio-compatible Messages API on loopback, for the tests and the bench: no network, no account.

    with FakeTwilio() as fake:                       # uvicorn in a background thread
        settings = make_settings(sms_backend="twilio", **fake.settings_overrides())
        fake.script(status(429, code=20429), ok())   # what the next POSTs do, in order
        ...
        fake.messages                                # every message created (Twilio's JSON)
        fake.posts, fake.requests                    # every request received
        fake.send_status(sid, "delivered")           # a signed status callback to its URL

Endpoints (both check HTTP Basic auth against `account_sid`/`auth_token` and answer Twilio's
error JSON otherwise):

- `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`, form-encoded: 201 with a Message
  (`sid` "SM" + 32 hex, status `queued`, or `accepted` for a Messaging Service without From).
- `GET  /2010-04-01/Accounts/{AccountSid}/Messages.json`: Twilio's paging JSON, newest first
  (unsent messages, whose `date_sent` is null, first), honouring `To`, `From`, `DateSent`,
  `DateSent<`, `DateSent>` (which, as at Twilio, never match an unsent message), `PageSize`,
  `Page`.

Behaviours are consumed one per request from a per-method queue (`script(..., method=)`); an
empty queue means `ok()`:

- `ok()`: normal answer.
- `status(429, code=20429)` / `error(400, code=21211)`: that HTTP status with Twilio's error
  JSON; nothing is created. Error messages repeat the number, as Twilio's do.
- `hang(seconds, create=False)`: accept the request and answer nothing for `seconds` (a 504
  after that); with `create=True` the message is created first.
- `fail_after_create(mode="500")`: create the message, then answer 500 (`mode="500"`) or send
  the response head and a few bytes and drop the connection (`mode="drop"`).

`sign_and_post(url, params)` (also a method, using the fake's token) posts a form signed with
`twilio.request_validator.RequestValidator` exactly as Twilio signs webhooks; `signed_headers`
gives the headers alone for use with any client (e.g. an ASGI test client).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import secrets
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Literal
from urllib.parse import urlencode

import httpx
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse
from twilio.request_validator import RequestValidator

DEFAULT_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
DEFAULT_AUTH_TOKEN = "fake-twilio-auth-token-0123456789"
DEFAULT_FROM_NUMBER = "+15005550006"
DEFAULT_MESSAGING_SERVICE_SID = "MG" + "fedcba9876543210" * 2
API_VERSION = "2010-04-01"

ERROR_MESSAGES = {
    20003: "Authenticate",
    20404: "The requested resource {path} was not found",
    20429: "Too Many Requests",
    20500: "Internal Server Error",
    21211: "Invalid 'To' Phone Number: {to}",
    21602: "Message body is required.",
    21603: "The 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21606: "The 'From' phone number provided is not a valid message-capable Twilio phone number for this destination/account.",
    21610: "Attempt to send to unsubscribed recipient",
    21614: "'To' number {to} is not a valid mobile number",
    21635: "'To' number {to} cannot be a landline",
}


# -- behaviours -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Behaviour:
    kind: Literal["ok", "status", "hang", "fail_after_create"]
    http_status: int = 0
    code: int | None = None
    message: str | None = None
    seconds: float = 0.0
    create: bool = False
    mode: Literal["500", "drop"] = "500"


def ok() -> Behaviour:
    return Behaviour("ok")


def status(http_status: int, code: int | None = None, message: str | None = None) -> Behaviour:
    return Behaviour("status", http_status=http_status, code=code if code is not None else http_status, message=message)


def error(http_status: int, code: int, message: str | None = None) -> Behaviour:
    return status(http_status, code=code, message=message)


def hang(seconds: float, create: bool = False) -> Behaviour:
    return Behaviour("hang", seconds=seconds, create=create)


def fail_after_create(mode: Literal["500", "drop"] = "500") -> Behaviour:
    return Behaviour("fail_after_create", mode=mode)


# -- webhook signing ----------------------------------------------------------------------------


def signature(auth_token: str, url: str, params: dict[str, str]) -> str:
    """X-Twilio-Signature: HMAC-SHA1 over the full URL + the sorted POST params, base64."""
    return RequestValidator(auth_token).compute_signature(url, params)


def signed_headers(auth_token: str, url: str, params: dict[str, str]) -> dict[str, str]:
    return {
        "X-Twilio-Signature": signature(auth_token, url, params),
        "Content-Type": "application/x-www-form-urlencoded",
        "User-Agent": "TwilioProxy/1.1",
    }


def sign_and_post(url: str, params: dict[str, str], auth_token: str = DEFAULT_AUTH_TOKEN, timeout: float = 10.0) -> httpx.Response:
    """POST `params` form-encoded to `url`, signed as Twilio signs its webhooks."""
    return httpx.post(url, content=urlencode(params), headers=signed_headers(auth_token, url, params), timeout=timeout)


async def sign_and_post_async(url: str, params: dict[str, str], auth_token: str = DEFAULT_AUTH_TOKEN, timeout: float = 10.0) -> httpx.Response:
    async with httpx.AsyncClient(timeout=timeout) as client:
        return await client.post(url, content=urlencode(params), headers=signed_headers(auth_token, url, params))


# -- the server ---------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]
    headers: dict[str, str]
    behaviour: Behaviour | None
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


def _rfc2822(dt: datetime | None) -> str | None:
    return email.utils.format_datetime(dt.astimezone(UTC)) if dt else None


def _parse_date_filter(value: str) -> tuple[date | datetime, bool]:
    """A DateSent filter value: (a date or an aware datetime, whether it is a whole day)."""
    value = value.strip()
    if len(value) == 10:
        return date.fromisoformat(value), True
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)), False


class FakeTwilio:
    def __init__(self, account_sid: str = DEFAULT_ACCOUNT_SID, auth_token: str = DEFAULT_AUTH_TOKEN) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.requests: list[RecordedRequest] = []
        # Twilio's JSON for each created message, in creation order (plus private fields).
        self._messages: list[dict[str, Any]] = []
        self._scripts: dict[str, deque[Behaviour]] = {"POST": deque(), "GET": deque()}
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._released: asyncio.Event | None = None
        self.port = 0

    # -- lifecycle

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def messages_path(self) -> str:
        return f"/{API_VERSION}/Accounts/{self.account_sid}/Messages.json"

    def start(self) -> FakeTwilio:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # so asyncio sets TCP_NODELAY
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(self, log_level="critical", access_log=False, lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="fake-twilio", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the fake Twilio server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        if self._loop is not None and self._released is not None:
            self._loop.call_soon_threadsafe(self._released.set)
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None

    def __enter__(self) -> FakeTwilio:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def settings_overrides(self, from_number: str | None = DEFAULT_FROM_NUMBER, messaging_service_sid: str | None = None, **extra: Any) -> dict[str, Any]:
        """The Settings fields that point TwilioSms at this server."""
        return {
            "twilio_account_sid": self.account_sid,
            "twilio_auth_token": self.auth_token,
            "twilio_from_number": from_number,
            "twilio_messaging_service_sid": messaging_service_sid,
            "twilio_api_base_url": self.base_url,
            **extra,
        }

    # -- scripting and inspection

    def script(self, *behaviours: Behaviour, method: Literal["POST", "GET"] = "POST") -> None:
        """Append behaviours for the next requests of `method` to Messages.json."""
        with self._lock:
            self._scripts[method].extend(behaviours)

    def pending(self, method: Literal["POST", "GET"] = "POST") -> list[Behaviour]:
        with self._lock:
            return list(self._scripts[method])

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self._messages.clear()
            for queue in self._scripts.values():
                queue.clear()

    @property
    def messages(self) -> list[dict[str, Any]]:
        with self._lock:
            return [self._public(m) for m in self._messages]

    @property
    def posts(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "POST"]

    @property
    def lists(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == "GET"]

    def message(self, sid: str) -> dict[str, Any]:
        with self._lock:
            for m in self._messages:
                if m["sid"] == sid:
                    return self._public(m)
        raise KeyError(sid)

    # -- status callbacks

    def status_callback_params(self, sid: str, message_status: str, error_code: int | str | None = None) -> dict[str, str]:
        m = self.message(sid)
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": API_VERSION,
            "From": m["from"] or DEFAULT_FROM_NUMBER,
            "MessageSid": sid,
            "MessageStatus": message_status,
            "SmsSid": sid,
            "SmsStatus": message_status,
            "To": m["to"],
        }
        if m.get("messaging_service_sid"):
            params["MessagingServiceSid"] = m["messaging_service_sid"]
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        return params

    def set_status(self, sid: str, message_status: str, error_code: int | str | None = None) -> None:
        now = datetime.now(UTC)
        with self._lock:
            for m in self._messages:
                if m["sid"] == sid:
                    m["status"] = message_status
                    m["_updated"] = now
                    if message_status in ("sent", "delivered", "undelivered") and m["_sent"] is None:
                        m["_sent"] = now
                    if error_code is not None:
                        m["error_code"] = int(error_code)
                    return
        raise KeyError(sid)

    def send_status(self, sid: str, message_status: str, error_code: int | str | None = None, url: str | None = None) -> httpx.Response:
        """Move the message to `message_status` and POST Twilio's signed status callback."""
        with self._lock:
            stored = next((m for m in self._messages if m["sid"] == sid), None)
        if stored is None:
            raise KeyError(sid)
        target = url or stored["_status_callback"]
        if not target:
            raise ValueError(f"message {sid} has no StatusCallback and no url was given")
        self.set_status(sid, message_status, error_code)
        return self.sign_and_post(target, self.status_callback_params(sid, message_status, error_code))

    def sign_and_post(self, url: str, params: dict[str, str]) -> httpx.Response:
        return sign_and_post(url, params, self.auth_token)

    async def sign_and_post_async(self, url: str, params: dict[str, str]) -> httpx.Response:
        return await sign_and_post_async(url, params, self.auth_token)

    def signed_headers(self, url: str, params: dict[str, str]) -> dict[str, str]:
        return signed_headers(self.auth_token, url, params)

    # -- ASGI

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._released = asyncio.Event()
        request = Request(scope, receive)
        form = {k: str(v) for k, v in (await request.form()).items()} if request.method == "POST" else {}
        behaviour = None
        if request.url.path.endswith("/Messages.json") and request.method in self._scripts:
            with self._lock:
                queue = self._scripts[request.method]
                behaviour = queue.popleft() if queue else ok()
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.url.path,
                query=dict(request.query_params),
                form=form,
                headers={k.lower(): v for k, v in request.headers.items()},
                behaviour=behaviour,
            )
        )
        response = await self._handle(request, form, behaviour, scope, receive, send)
        if response is not None:
            await response(scope, receive, send)

    def _error(self, http_status: int, code: int, message: str | None = None, **fmt: str) -> JSONResponse:
        text = message or ERROR_MESSAGES.get(code, "Error").format_map({"to": "", "path": "", **fmt})
        return JSONResponse(
            {"code": code, "message": text, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": http_status},
            status_code=http_status,
        )

    def _authorised(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return secrets.compare_digest(header.encode(), expected.encode())

    async def _handle(self, request: Request, form: dict[str, str], behaviour: Behaviour | None, scope, receive, send) -> JSONResponse | None:
        path = request.url.path
        if not self._authorised(request):
            return self._error(401, 20003)
        if path != self.messages_path or request.method not in ("POST", "GET"):
            return self._error(404, 20404, path=path)
        assert behaviour is not None
        if behaviour.kind == "status":
            return self._error(behaviour.http_status, behaviour.code or behaviour.http_status, behaviour.message, to=form.get("To", ""))
        if request.method == "GET":
            if behaviour.kind == "hang":
                await self._hang(behaviour.seconds)
                return self._error(504, 20504, "Gateway timeout")
            if behaviour.kind == "fail_after_create":
                return self._error(500, 20500)
            return JSONResponse(self._list(request))

        invalid = self._validate(form)
        if invalid is not None:
            return invalid
        if behaviour.kind == "hang":
            if behaviour.create:
                self._create(form)
            await self._hang(behaviour.seconds)
            return self._error(504, 20504, "Gateway timeout")
        message = self._create(form)
        if behaviour.kind == "fail_after_create":
            if behaviour.mode == "drop":
                await send({"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")]})
                await send({"type": "http.response.body", "body": b'{"sid": "', "more_body": True})
                raise ConnectionAbortedError("fake Twilio drops the connection after creating the message")
            return self._error(500, 20500)
        return JSONResponse(message, status_code=201)

    async def _hang(self, seconds: float) -> None:
        assert self._released is not None
        try:
            await asyncio.wait_for(self._released.wait(), seconds)
        except TimeoutError:
            pass

    def _validate(self, form: dict[str, str]) -> JSONResponse | None:
        if not form.get("To"):
            return self._error(400, 21604)
        if not form.get("From") and not form.get("MessagingServiceSid"):
            return self._error(400, 21603)
        if not form.get("Body") and not form.get("MediaUrl") and not form.get("ContentSid"):
            return self._error(400, 21602)
        return None

    def _create(self, form: dict[str, str]) -> dict[str, Any]:
        now = datetime.now(UTC)
        sid = "SM" + secrets.token_hex(16)
        msid = form.get("MessagingServiceSid") or None
        message = {
            "sid": sid,
            "to": form["To"],
            "from": form.get("From") or None,
            "body": form.get("Body", ""),
            "messaging_service_sid": msid,
            "status": "accepted" if msid and not form.get("From") else "queued",
            "error_code": None,
            "error_message": None,
            "num_segments": "1",
            "num_media": "0",
            "direction": "outbound-api",
            "price": None,
            "price_unit": "USD",
            "_created": now,
            "_updated": now,
            "_sent": None,
            "_status_callback": form.get("StatusCallback") or None,
        }
        with self._lock:
            self._messages.append(message)
        return self._public(message)

    def _public(self, m: dict[str, Any]) -> dict[str, Any]:
        base = f"/{API_VERSION}/Accounts/{self.account_sid}/Messages/{m['sid']}"
        public = {k: v for k, v in m.items() if not k.startswith("_")}
        public.update(
            account_sid=self.account_sid,
            api_version=API_VERSION,
            date_created=_rfc2822(m["_created"]),
            date_updated=_rfc2822(m["_updated"]),
            date_sent=_rfc2822(m["_sent"]),
            uri=base + ".json",
            subresource_uris={"media": base + "/Media.json", "feedback": base + "/Feedback.json"},
        )
        return public

    def _list(self, request: Request) -> dict[str, Any]:
        q = request.query_params
        with self._lock:
            selected = list(self._messages)
        if q.get("To"):
            selected = [m for m in selected if m["to"] == q["To"]]
        if q.get("From"):
            selected = [m for m in selected if m["from"] == q["From"]]
        for name, op in (("DateSent", "eq"), ("DateSent<", "le"), ("DateSent>", "ge")):
            if q.get(name):
                bound, whole_day = _parse_date_filter(q[name])
                kept = []
                for m in selected:
                    sent = m["_sent"]
                    if sent is None:
                        continue
                    value: date | datetime = sent.date() if whole_day else sent
                    if (op == "eq" and value == bound) or (op == "le" and value <= bound) or (op == "ge" and value >= bound):
                        kept.append(m)
                selected = kept
        # Newest first; unsent messages (no date_sent) first of all.
        ordered = sorted(
            enumerate(selected),
            key=lambda im: (im[1]["_sent"] is None, im[1]["_sent"] or im[1]["_created"], im[1]["_created"], im[0]),
            reverse=True,
        )
        page_size = int(q.get("PageSize", 50))
        page = int(q.get("Page", 0))
        start = page * page_size
        chunk = [self._public(m) for _, m in ordered[start : start + page_size]]
        params = [(k, v) for k, v in q.multi_items() if k not in ("Page", "PageToken", "PageSize")]

        def uri(p: int) -> str:
            extra = [("PageSize", str(page_size)), ("Page", str(p))]
            if p:
                extra.append(("PageToken", f"PA{p}"))
            return self.messages_path + "?" + urlencode(params + extra)

        has_next = start + page_size < len(ordered)
        return {
            "messages": chunk,
            "end": start + len(chunk) - 1 if chunk else start,
            "first_page_uri": uri(0),
            "next_page_uri": uri(page + 1) if has_next else None,
            "previous_page_uri": uri(page - 1) if page > 0 else None,
            "page": page,
            "page_size": page_size,
            "start": start,
            "uri": self.messages_path + "?" + urlencode(list(q.multi_items())),
        }
