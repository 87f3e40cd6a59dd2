"""Loopback stand-ins for the bench, in one process: an SMTP sink (aiosmtpd) that counts what
it receives, and the Twilio stand-in (standins/twilio.py) that also plays the
partners: for the numbers given with --auto, each SMS carrying a referral code is answered,
like a partner would, by a Twilio-signed `POST /sms/inbound` to the web app: an offer with
`A <code>`, the first check-in with `OK <code>`, the next with `DONE <code>` (told apart by the
commands the SMS asks for, so a late confirmation or a reminder is not mistaken for one).

    python -m bench.partners --smtp-port P --twilio-port P --webhook URL --auto +212..,+212..

`GET /bench/stats` on the fake answers JSON counts (messages, emails, replies, answers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import socket
import threading
import time
from collections import Counter
from urllib.parse import urlencode

import httpx
import uvicorn
from aiosmtpd.controller import Controller
from starlette.responses import JSONResponse

from standins.twilio import DEFAULT_AUTH_TOKEN, FakeTwilio, signed_headers
from starter.sms_reply import inbound_form

CODE = re.compile(r"R-([34679ACDEFGHJKMNPQRTUVWXY]{5})")


class _Sink:
    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        return "250 Message accepted"


class PartnerFake(FakeTwilio):
    """The fake Twilio, keeping no history (the bench sends tens of thousands of messages)."""

    def __init__(self, webhook: str, auto: set[str], sink: _Sink) -> None:
        super().__init__()
        self.webhook = webhook
        self.auto = auto
        self.sink = sink
        self.seen: Counter[tuple[str, str]] = Counter()
        self.stats: Counter[str] = Counter()
        self._http: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task] = set()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] == "/bench/stats":
            body = {**self.stats, "emails": self.sink.count}
            await JSONResponse(body)(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
        self.requests.clear()

    def _create(self, form):
        message = super()._create(form)
        with self._lock:
            self._messages.clear()
        self.stats["sms"] += 1
        to = form.get("To", "")
        match = CODE.search(form.get("Body", ""))
        if to in self.auto and match:
            body, code = form.get("Body", ""), match[1]
            if f"A {code}" in body and f"D {code}" in body:  # an offer (or a reminder)
                answer = f"A {code}"
            elif f"OK {code}" in body and f"DONE {code}" in body:  # a check-in: OK, then DONE
                self.seen[(to, code)] += 1
                answer = f"{'OK' if self.seen[(to, code)] == 1 else 'DONE'} {code}"
            else:  # e.g. a late confirmation after a provisional "received" answer
                self.stats["sms_not_answered"] += 1
                return message
            task = asyncio.get_running_loop().create_task(self._answer(to, answer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return message

    async def _answer(self, sender: str, body: str) -> None:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=30.0)
        sid = "SM" + "%032x" % (time.time_ns() ^ (hash(body) & 0xFFFFFFFF))
        params = inbound_form(self.account_sid, sender, "+15005550006", body, sid)
        try:
            r = await self._http.post(self.webhook, content=urlencode(params), headers=signed_headers(self.auth_token, self.webhook, params))
            self.stats[f"replies_http_{r.status_code}"] += 1
        except httpx.HTTPError as err:
            self.stats[f"replies_error_{type(err).__name__}"] += 1


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smtp-port", type=int, required=True)
    parser.add_argument("--twilio-port", type=int, required=True)
    parser.add_argument("--webhook", required=True)
    parser.add_argument("--auto", default="")
    args = parser.parse_args()

    sink = _Sink()
    smtp = Controller(sink, hostname="127.0.0.1", port=args.smtp_port)
    smtp.start()
    fake = PartnerFake(args.webhook, {n for n in args.auto.split(",") if n}, sink)
    assert fake.auth_token == DEFAULT_AUTH_TOKEN
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.twilio_port))
    fake.port = args.twilio_port
    server = uvicorn.Server(uvicorn.Config(fake, log_level="critical", access_log=False, lifespan="off", timeout_graceful_shutdown=1))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    print(json.dumps({"ready": True}), flush=True)
    try:
        while not done.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    server.should_exit = True
    thread.join(timeout=5)
    smtp.stop()


if __name__ == "__main__":
    main()
