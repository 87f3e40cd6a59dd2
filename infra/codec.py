"""Payload encryption: what the Temporal server stores is AES-256-GCM ciphertext.

Every payload a client or worker sends (workflow and activity inputs and results, update
arguments, the memo, the static summary and current details, failure messages) goes through
`EncryptionCodec` (wired into the data converter by `infra.temporal.data_converter`). Search
attributes are not payloads and stay readable: they hold no personal data by design.

Keys come from REFERRAL_ENCRYPTION_KEYS, comma-separated `kid:base64-of-32-random-bytes`:

    REFERRAL_ENCRYPTION_KEYS=2027-01:q3L...=,2026-06:Zx9...=

The FIRST key encrypts; every listed key decrypts. Rotation: put a new key first and keep the
old ones after it for as long as histories written under them are retained. `python -m
infra.codec new-key [KID]` prints a fresh entry.

An encrypted payload is `Payload(metadata={"encoding": "binary/encrypted",
"encryption-key-id": kid}, data=nonce(12 bytes) + ciphertext + tag)`, where the plaintext is
the serialised original Payload (its own metadata included) and the key id is authenticated
as associated data. Payloads that are not `binary/encrypted` are passed through on decode
(histories written before encryption was switched on still read).

Errors never contain payload data or key material: an unknown key id names the key id; a
payload that fails authentication names the key id and says so.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

SETTING = "REFERRAL_ENCRYPTION_KEYS"
ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
NONCE_BYTES = 12
KEY_BYTES = 32
_KID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_AAD_PREFIX = b"referral-orchestrator/payload/v1:"


class EncryptionKeyFormatError(ValueError):
    """REFERRAL_ENCRYPTION_KEYS is malformed. The message names the setting and the entry's
    position, never the key."""


class PayloadDecryptionError(Exception):
    """A payload could not be decrypted. The message names the key id, never the payload."""

    def __init__(self, message: str, key_id: str) -> None:
        super().__init__(message)
        self.key_id = key_id


class UnknownEncryptionKeyError(PayloadDecryptionError):
    """The payload was encrypted under a key id this process does not have."""


def parse_keys(text: str) -> list[tuple[str, bytes]]:
    """`kid:base64,kid:base64` -> [(kid, 32-byte key), ...], the encrypting key first."""
    entries = [e.strip() for e in text.split(",") if e.strip()]
    if not entries:
        raise EncryptionKeyFormatError(f"{SETTING}: no key given (expected kid:base64-of-32-bytes, comma-separated)")
    keys: list[tuple[str, bytes]] = []
    seen: set[str] = set()
    for number, entry in enumerate(entries, start=1):
        kid, sep, encoded = entry.partition(":")
        kid = kid.strip()
        where = f"{SETTING}: entry {number}"
        if not sep:
            raise EncryptionKeyFormatError(f"{where} is not kid:base64-key")
        if not _KID.match(kid):
            raise EncryptionKeyFormatError(f"{where}: the key id must be 1-64 letters, digits, '.', '_' or '-'")
        if kid in seen:
            raise EncryptionKeyFormatError(f"{where}: key id {kid!r} is listed twice")
        try:
            key = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            try:
                key = base64.urlsafe_b64decode(encoded.strip())
            except (binascii.Error, ValueError):
                raise EncryptionKeyFormatError(f"{where} (key id {kid!r}): the key is not valid base64") from None
        if len(key) != KEY_BYTES:
            raise EncryptionKeyFormatError(
                f"{where} (key id {kid!r}): the key must be {KEY_BYTES} bytes (AES-256), got {len(key)}"
            )
        seen.add(kid)
        keys.append((kid, key))
    return keys


def new_key_entry(kid: str | None = None) -> str:
    """A fresh `kid:base64` entry for REFERRAL_ENCRYPTION_KEYS."""
    kid = kid or datetime.now(UTC).strftime("k%Y%m%d%H%M")
    if not _KID.match(kid):
        raise EncryptionKeyFormatError(f"{SETTING}: the key id must be 1-64 letters, digits, '.', '_' or '-'")
    return f"{kid}:{base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode()}"


def _aad(kid: str) -> bytes:
    return _AAD_PREFIX + kid.encode()


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM, a random 12-byte nonce per payload, the key id in the payload's metadata."""

    def __init__(self, keys: Sequence[tuple[str, bytes]]) -> None:
        if not keys:
            raise EncryptionKeyFormatError(f"{SETTING}: no key given")
        self.key_ids = [kid for kid, _ in keys]
        self.encrypt_key_id = self.key_ids[0]
        self._ciphers = {kid: AESGCM(key) for kid, key in keys}

    @classmethod
    def from_setting(cls, text: str) -> EncryptionCodec:
        return cls(parse_keys(text))

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        kid = self.encrypt_key_id
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._ciphers[kid].encrypt(nonce, payload.SerializeToString(), _aad(kid))
        return Payload(metadata={"encoding": ENCODING, KEY_ID: kid.encode()}, data=nonce + sealed)

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload  # not ours: written before encryption was switched on
        kid = payload.metadata.get(KEY_ID, b"").decode("utf-8", "replace")
        cipher = self._ciphers.get(kid)
        if cipher is None:
            shown = kid if _KID.match(kid) else "(malformed)"
            raise UnknownEncryptionKeyError(
                f"payload encrypted with key id {shown!r}, which is not in {SETTING} "
                f"(this process knows: {', '.join(self.key_ids)}); add that key after the current one",
                shown,
            )
        data = payload.data
        if len(data) < NONCE_BYTES + 16:
            raise PayloadDecryptionError(f"payload under key id {kid!r} is truncated", kid)
        try:
            plain = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], _aad(kid))
        except InvalidTag:
            raise PayloadDecryptionError(
                f"payload under key id {kid!r} failed authentication: a different key with the same id, "
                "or the payload was altered",
                kid,
            ) from None
        return Payload.FromString(plain)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "new-key" or len(args) > 2:
        print("usage: python -m infra.codec new-key [KID]", file=sys.stderr)
        return 2
    try:
        print(new_key_entry(args[1] if len(args) > 1 else None))
    except EncryptionKeyFormatError as err:
        print(err, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
