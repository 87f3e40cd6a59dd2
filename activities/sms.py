"""SMS backends, chosen by SMS_BACKEND: `outbox` (a local JSON-lines file) or `twilio`.

A backend sends one message and returns its id. A permanent refusal raises `SmsRefused` with
a kind from `SMS_REFUSALS`; the activity makes it non-retryable so the workflow falls back to
email at once. Anything else raised is retried by Temporal.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

# Kinds of permanent refusal, used as the activity's non-retryable error types.
SMS_REFUSALS = ("InvalidPhoneNumber", "OptedOut", "NoSmsNumber")


class SmsRefused(Exception):
    def __init__(self, kind: str, detail: str = "") -> None:
        assert kind in SMS_REFUSALS
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class SmsBackend(Protocol):
    async def send(self, to: str, body: str, key: str, callback_params: dict[str, str] | None = None) -> str:
        """Send `body` to the E.164 number `to`. `key` is stable across retries of one message;
        `callback_params` go on the delivery-status callback URL (referral code, partner id)."""
        ...

    async def aclose(self) -> None: ...


class OutboxSms:
    """Appends one JSON line per message to `<data dir>/outbox/sms.jsonl`.

    Idempotent by `key`: a retried activity finds its line already written and sends nothing.
    """

    def __init__(self, outbox_dir: Path) -> None:
        self.path = Path(outbox_dir) / "sms.jsonl"
        self._keys: set[str] | None = None
        self._lock = asyncio.Lock()

    def _load_keys(self) -> set[str]:
        keys: set[str] = set()
        if self.path.exists():
            with self.path.open(encoding="utf-8") as fh:
                for line in fh:
                    try:
                        keys.add(json.loads(line)["id"])
                    except (ValueError, KeyError):
                        continue
        return keys

    async def aclose(self) -> None:
        return None

    async def send(self, to: str, body: str, key: str, callback_params: dict[str, str] | None = None) -> str:
        async with self._lock:
            if self._keys is None:
                self._keys = self._load_keys()
            if key in self._keys:
                return key
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps(
                {"id": key, "at": datetime.now(UTC).isoformat(), "to": to, "body": body},
                ensure_ascii=False,
            )
            with self.path.open("a", encoding="utf-8") as fh:
                # Another worker process may append at the same time.
                fcntl.flock(fh, fcntl.LOCK_EX)
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            self._keys.add(key)
            return key


def read_outbox(outbox_dir: Path) -> list[dict]:
    path = Path(outbox_dir) / "sms.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
