"""The referrals' data keys (envelope encryption): one AES-256 key per referral, so that a
referral's payloads, wherever Temporal keeps them (histories, visibility, backups), become
unreadable for good once its key is destroyed (`referral erase`).

The table `data_keys` lives in the project's database (LEDGER_DATABASE_URL: the SQLite file
ledger.sqlite3 under REFERRAL_DATA_DIR by default, PostgreSQL in compose), created by the
ledger's migrations (revision 0003). One row per referral:

    referral       the referral's code (its workflow id is `referral-<code>`)
    key_id         `dk:<32 hex>`, random: what an encrypted payload's metadata names
    master_key_id  the REFERRAL_ENCRYPTION_KEYS entry the data key is wrapped under
    wrapped        nonce + AES-256-GCM(master key, data key); NULL once destroyed
    created_at, destroyed_at

A destroyed row stays as a tombstone: nothing can be encrypted for that referral again, so a
late signal or a re-submitted intake cannot bring a fresh key (and fresh data) back under the
erased code. On SQLite the database is opened with `secure_delete` and the write-ahead log is
truncated after a destruction, so the wrapped key's bytes do not linger in the file; on
PostgreSQL a VACUUM of the table follows (dead row versions, and WAL archives, keep it until
they are recycled: README "Erasure and backups").

A process keeps an unwrapped key in memory for CACHE_SECONDS at most (a worker replaying a long
history decodes and encodes hundreds of times a task). The erasure closes the referral first and
waits CACHE_SECONDS after destroying its key before it goes on, so when it reports done no
process can decode that referral, nor encode for it; starting a referral reads the table itself
(`state`), so an erased code is never started again.

The key id is random and the referral code is not personal, so neither reveals anything about
the person. Errors name codes and key ids, never key material.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Column, DateTime, Engine, LargeBinary, MetaData, String, Table, insert, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from infra.database import engine_for

REFERRAL_WORKFLOW_PREFIX = "referral-"
DATA_KEY_PREFIX = "dk:"
KEY_BYTES = 32
NONCE_BYTES = 12
_WRAP_AAD = b"referral-orchestrator/data-key/v1:"
CACHE_SECONDS = 2.0
_CACHE_LIMIT = 4096

metadata = MetaData()

data_keys = Table(
    "data_keys",
    metadata,
    Column("referral", String(16), primary_key=True),
    Column("key_id", String(40), nullable=False, unique=True),
    Column("master_key_id", String(64)),
    Column("wrapped", LargeBinary),
    # Aware UTC datetimes; SQLite keeps the UTC wall time (no ledger.schema import: infra is below it).
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("destroyed_at", DateTime(timezone=True)),
)


class DataKeysNotReady(RuntimeError):
    """The key table is missing (the database is not migrated) or cannot be opened."""


class ReferralDataErased(Exception):
    """Something tried to encrypt data for a referral whose data key was destroyed."""

    def __init__(self, code: str) -> None:
        super().__init__(f"R-{code} was erased: nothing can be written about it any more")
        self.code = code


@dataclass(frozen=True)
class DataKeyState:
    code: str
    key_id: str | None
    created_at: datetime | None
    destroyed_at: datetime | None

    @property
    def destroyed(self) -> bool:
        return self.destroyed_at is not None


def referral_of(workflow_id: str | None) -> str | None:
    """The referral code a workflow id belongs to (`referral-7K3Q9` -> `7K3Q9`), else None."""
    if workflow_id and workflow_id.startswith(REFERRAL_WORKFLOW_PREFIX):
        code = workflow_id[len(REFERRAL_WORKFLOW_PREFIX) :]
        return code or None
    return None


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class DataKeyStore:
    """Creates, unwraps, destroys and rewraps the data keys in the table at `url`.

    `masters`: the master keys, the wrapping one first (REFERRAL_ENCRYPTION_KEYS's order). Every
    read goes to the database (no cache), so a key destroyed by one process cannot be used by
    another a moment later."""

    def __init__(self, url: str, masters: list[tuple[str, bytes]]) -> None:
        self.url = url
        self.wrapping_key_id = masters[0][0]
        self._masters = {kid: AESGCM(key) for kid, key in masters}
        self._cache: dict[str, tuple[float, bytes]] = {}  # key id -> (when read, key)
        self._by_referral: dict[str, tuple[float, str, bytes]] = {}  # code -> (when read, key id, key)
        self._lock = threading.Lock()

    @property
    def _engine(self) -> Engine:
        return engine_for(self.url)

    def _aad(self, code: str, key_id: str) -> bytes:
        return _WRAP_AAD + code.encode() + b"/" + key_id.encode()

    def _wrap(self, code: str, key_id: str, key: bytes) -> tuple[str, bytes]:
        nonce = os.urandom(NONCE_BYTES)
        master = self._masters[self.wrapping_key_id]
        return self.wrapping_key_id, nonce + master.encrypt(nonce, key, self._aad(code, key_id))

    def _unwrap(self, code: str, key_id: str, master_key_id: str, wrapped: bytes) -> bytes:
        master = self._masters.get(master_key_id)
        if master is None:
            raise DataKeyUnavailable(
                key_id,
                f"data key {key_id} is wrapped under master key id {master_key_id!r}, which is not in "
                "REFERRAL_ENCRYPTION_KEYS; add that key after the current one",
            )
        try:
            return master.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], self._aad(code, key_id))
        except InvalidTag:
            raise DataKeyUnavailable(key_id, f"data key {key_id} failed authentication under master key id {master_key_id!r}") from None

    def _guard(self, err: Exception) -> DataKeysNotReady:
        return DataKeysNotReady(
            f"the data key table cannot be read ({type(err).__name__}): run `referral ledger upgrade` "
            "(the keys live in the ledger's database, LEDGER_DATABASE_URL)"
        )

    def cached_for_referral(self, code: str) -> tuple[str, bytes] | None:
        """The referral's key if this process read it less than CACHE_SECONDS ago (no I/O)."""
        with self._lock:
            cached = self._by_referral.get(code)
        if cached is None or cached[0] < time.monotonic() - CACHE_SECONDS:
            return None
        return cached[1], cached[2]

    def cached(self, key_ids: Iterable[str]) -> dict[str, bytes]:
        """The keys among these that this process read less than CACHE_SECONDS ago (no I/O)."""
        fresh_since = time.monotonic() - CACHE_SECONDS
        found: dict[str, bytes] = {}
        with self._lock:
            for key_id in key_ids:
                hit = self._cache.get(key_id)
                if hit is not None and hit[0] >= fresh_since:
                    found[key_id] = hit[1]
        return found

    def _remember(self, code: str, key_id: str, key: bytes, at: float) -> None:
        with self._lock:
            if len(self._cache) >= _CACHE_LIMIT:  # drop the stale ones: memory stays bounded
                fresh_since = time.monotonic() - CACHE_SECONDS
                self._cache = {k: v for k, v in self._cache.items() if v[0] >= fresh_since}
                self._by_referral = {k: v for k, v in self._by_referral.items() if v[0] >= fresh_since}
            self._cache[key_id] = (at, key)
            self._by_referral[code] = (at, key_id, key)

    def key_for_referral(self, code: str) -> tuple[str, bytes]:
        """The referral's data key id and key, made on first use; read from the table (the
        caller may first try `cached_for_referral`). ReferralDataErased once destroyed."""
        read_at = time.monotonic()
        try:
            with self._engine.connect() as conn:
                row = conn.execute(select(data_keys).where(data_keys.c.referral == code)).first()
        except (OperationalError, ProgrammingError) as err:
            raise self._guard(err) from None
        if row is None:
            key_id = DATA_KEY_PREFIX + secrets.token_hex(16)
            key = secrets.token_bytes(KEY_BYTES)
            master_key_id, wrapped = self._wrap(code, key_id, key)
            try:
                with self._engine.begin() as conn:
                    conn.execute(
                        insert(data_keys).values(
                            referral=code,
                            key_id=key_id,
                            master_key_id=master_key_id,
                            wrapped=wrapped,
                            created_at=datetime.now(UTC),
                        )
                    )
                self._remember(code, key_id, key, read_at)
                return key_id, key
            except IntegrityError:  # another process made it first: use theirs
                return self.key_for_referral(code)
            except (OperationalError, ProgrammingError) as err:
                raise self._guard(err) from None
        if row.wrapped is None:
            raise ReferralDataErased(code)
        key = self._unwrap(code, row.key_id, row.master_key_id, row.wrapped)
        self._remember(code, row.key_id, key, read_at)
        return row.key_id, key

    def keys(self, key_ids: Iterable[str]) -> Mapping[str, bytes | DataKeyUnavailable]:
        """Each asked data key, or why it cannot be had (destroyed, unknown, master key missing).
        A key read less than CACHE_SECONDS ago is not read again."""
        asked = set(key_ids)
        found: dict[str, bytes | DataKeyUnavailable] = dict(self.cached(asked))
        wanted = sorted(asked - set(found))
        if not wanted:
            return found
        read_at = time.monotonic()
        try:
            with self._engine.connect() as conn:
                rows = {r.key_id: r for r in conn.execute(select(data_keys).where(data_keys.c.key_id.in_(wanted)))}
        except (OperationalError, ProgrammingError) as err:
            raise self._guard(err) from None
        for key_id in wanted:
            row = rows.get(key_id)
            if row is None:
                found[key_id] = DataKeyUnavailable(key_id, f"data key {key_id} is not in the key table of this database")
            elif row.wrapped is None:
                found[key_id] = DataKeyUnavailable(
                    key_id, f"data key {key_id} was destroyed (R-{row.referral} erased): its payloads cannot be decrypted", erased=True
                )
            else:
                try:
                    key = self._unwrap(row.referral, key_id, row.master_key_id, row.wrapped)
                except DataKeyUnavailable as err:
                    found[key_id] = err
                    continue
                found[key_id] = key
                self._remember(row.referral, key_id, key, read_at)
        return found

    def state(self, code: str) -> DataKeyState:
        with self._engine.connect() as conn:
            row = conn.execute(select(data_keys).where(data_keys.c.referral == code)).first()
        if row is None:
            return DataKeyState(code, None, None, None)
        return DataKeyState(code, row.key_id, _utc(row.created_at), _utc(row.destroyed_at))

    def destroy(self, code: str, at: datetime | None = None) -> DataKeyState:
        """Destroy the referral's data key for good (a tombstone when it had none). Safe to repeat:
        a second call keeps the first destruction's time."""
        when = at or datetime.now(UTC)
        with self._lock:  # this process at once; the others within CACHE_SECONDS
            self._cache.clear()
            self._by_referral.clear()
        with self._engine.begin() as conn:
            row = conn.execute(select(data_keys).where(data_keys.c.referral == code)).first()
            if row is None:
                conn.execute(insert(data_keys).values(referral=code, key_id=DATA_KEY_PREFIX + secrets.token_hex(16), created_at=when, destroyed_at=when))
            elif row.destroyed_at is None or row.wrapped is not None:
                conn.execute(
                    update(data_keys).where(data_keys.c.referral == code).values(wrapped=None, master_key_id=None, destroyed_at=row.destroyed_at or when)
                )
        self._scrub()
        return self.state(code)

    def _scrub(self) -> None:
        """Leave no copy of a destroyed key in the database's files (see the module's docstring)."""
        engine = self._engine
        if engine.dialect.name == "sqlite":
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        elif engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM data_keys"))

    def rewrap(self) -> int:
        """Wrap every live data key under the current master key (after a rotation, so the old
        master key can be retired). Returns how many were rewrapped."""
        done = 0
        with self._engine.begin() as conn:
            rows = conn.execute(select(data_keys).where(data_keys.c.wrapped.is_not(None), data_keys.c.master_key_id != self.wrapping_key_id)).all()
            for row in rows:
                key = self._unwrap(row.referral, row.key_id, row.master_key_id, row.wrapped)
                master_key_id, wrapped = self._wrap(row.referral, row.key_id, key)
                conn.execute(update(data_keys).where(data_keys.c.referral == row.referral).values(master_key_id=master_key_id, wrapped=wrapped))
                done += 1
        return done


class DataKeyUnavailable(Exception):
    """A data key that cannot be used; the message names the key id, never key material."""

    def __init__(self, key_id: str, message: str, erased: bool = False) -> None:
        super().__init__(message)
        self.key_id = key_id
        self.erased = erased  # destroyed by an erasure, for good
