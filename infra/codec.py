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

Envelope encryption (infra/data_keys.py): a payload that belongs to a referral (Temporal's
serialization context names the workflow `referral-<code>`: its inputs, results, memo, updates,
signals, its activities' inputs and results) is encrypted under that referral's own data key
instead, and its metadata names the data key (`encryption-key-id: dk:<hex>`, random, never
personal; master key ids cannot contain `:`). Decoding finds the key from that id alone, so a
process without the context (the codec server, `temporal workflow show`) decodes too. Payloads
of no referral (capacity notices, erasures) keep the first master key. Once a referral's data
key is destroyed its payloads fail to decode with a PayloadDecryptionError naming the key id.

Errors never contain payload data or key material: an unknown key id names the key id; a
payload that fails authentication names the key id and says so.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import os
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    ActivitySerializationContext,
    PayloadCodec,
    SerializationContext,
    WithSerializationContext,
    WorkflowSerializationContext,
)

from infra.data_keys import DATA_KEY_PREFIX, DataKeyStore, DataKeyUnavailable, referral_of

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


class ErasedPayloadError(PayloadDecryptionError):
    """The payload's referral was erased: its data key is destroyed, for good."""


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
            raise EncryptionKeyFormatError(f"{where} (key id {kid!r}): the key must be {KEY_BYTES} bytes (AES-256), got {len(key)}")
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


class EncryptionCodec(PayloadCodec, WithSerializationContext):
    """AES-256-GCM, a random 12-byte nonce per payload, the key id in the payload's metadata.

    With a `data_keys` store, a copy bound to a referral by `with_context` encrypts under that
    referral's data key; every copy decrypts both kinds."""

    def __init__(self, keys: Sequence[tuple[str, bytes]], data_keys: DataKeyStore | None = None) -> None:
        if not keys:
            raise EncryptionKeyFormatError(f"{SETTING}: no key given")
        self.key_ids = [kid for kid, _ in keys]
        self.encrypt_key_id = self.key_ids[0]
        self._ciphers = {kid: AESGCM(key) for kid, key in keys}
        self.data_keys = data_keys
        self.referral: str | None = None

    @classmethod
    def from_setting(cls, text: str, data_keys_url: str | None = None) -> EncryptionCodec:
        keys = parse_keys(text)
        return cls(keys, DataKeyStore(data_keys_url, keys) if data_keys_url else None)

    def with_context(self, context: SerializationContext) -> EncryptionCodec:
        workflow_id = None
        if isinstance(context, WorkflowSerializationContext | ActivitySerializationContext):
            workflow_id = context.workflow_id
        referral = referral_of(workflow_id) if self.data_keys is not None else None
        if referral == self.referral:
            return self
        bound = copy.copy(self)
        bound.referral = referral
        return bound

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        if self.referral is None or self.data_keys is None or not payloads:
            return [self.encrypt(p) for p in payloads]
        # A key read moments ago needs no thread and no query (a replay encodes at every activation).
        known = self.data_keys.cached_for_referral(self.referral)
        if known is None:
            known = await asyncio.to_thread(self.data_keys.key_for_referral, self.referral)
        key_id, key = known
        cipher = AESGCM(key)
        return [_seal(cipher, key_id, p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        wanted = {_key_id(p) for p in payloads if _key_id(p).startswith(DATA_KEY_PREFIX)}
        found: Mapping[str, bytes | DataKeyUnavailable] = {}
        if wanted:
            if self.data_keys is None:
                raise UnknownEncryptionKeyError(
                    "payload encrypted under a referral's data key, but this process has no key table (LEDGER_DATABASE_URL)",
                    sorted(wanted)[0],
                )
            found = self.data_keys.cached(wanted)
            if len(found) < len(wanted):
                found = await asyncio.to_thread(self.data_keys.keys, wanted)
        return [self.decrypt(p, found) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        kid = self.encrypt_key_id
        return _seal(self._ciphers[kid], kid, payload)

    def decrypt(self, payload: Payload, data_keys: Mapping[str, bytes | DataKeyUnavailable] | None = None) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            return payload  # not ours: written before encryption was switched on
        kid = _key_id(payload)
        if kid.startswith(DATA_KEY_PREFIX):
            key = (data_keys or {}).get(kid)
            if isinstance(key, DataKeyUnavailable):
                raise (ErasedPayloadError if key.erased else PayloadDecryptionError)(str(key), kid)
            if key is None:
                raise UnknownEncryptionKeyError(f"data key {kid} was not looked up", kid)
            return _open(AESGCM(key), kid, payload)
        cipher = self._ciphers.get(kid)
        if cipher is None:
            shown = kid if _KID.match(kid) else "(malformed)"
            raise UnknownEncryptionKeyError(
                f"payload encrypted with key id {shown!r}, which is not in {SETTING} "
                f"(this process knows: {', '.join(self.key_ids)}); add that key after the current one",
                shown,
            )
        return _open(cipher, kid, payload)


def _key_id(payload: Payload) -> str:
    return payload.metadata.get(KEY_ID, b"").decode("utf-8", "replace")


def _seal(cipher: AESGCM, kid: str, payload: Payload) -> Payload:
    nonce = os.urandom(NONCE_BYTES)
    sealed = cipher.encrypt(nonce, payload.SerializeToString(), _aad(kid))
    return Payload(metadata={"encoding": ENCODING, KEY_ID: kid.encode()}, data=nonce + sealed)


def _open(cipher: AESGCM, kid: str, payload: Payload) -> Payload:
    data = payload.data
    if len(data) < NONCE_BYTES + 16:
        raise PayloadDecryptionError(f"payload under key id {kid!r} is truncated", kid)
    try:
        plain = cipher.decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], _aad(kid))
    except InvalidTag:
        raise PayloadDecryptionError(
            f"payload under key id {kid!r} failed authentication: a different key with the same id, or the payload was altered",
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
