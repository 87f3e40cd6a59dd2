"""The ledger's activity: write a referral's de-identified record (ledger.store), for the workflow
(workflows/ledger_writes.py).

Safe to repeat: the store replaces the referral's rows whole in one transaction, and a record
older than the stored one (by `updated_at`) changes nothing, so a retry, a write that outlived a
worker crash or a late one never rolls a referral back. SQLAlchemy is synchronous: the write runs
in a thread. Errors name their kind and never the database URL (it may hold a password):
- `LedgerNotReady`: the database has no tables or is behind the code (`referral ledger upgrade`),
- `LedgerUnavailable`: it cannot be reached or is busy,
  both retried until an operator fixes it or the workflow gives the write up;
- `InvalidLedgerRecord`: not a record (the activity validates what it is given) or one the
  database refuses; retrying cannot help (non-retryable, named in the workflow's retry policy).
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog
from pydantic import ValidationError
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from config.settings import Settings
from ledger.record import LedgerRecord
from ledger.store import LedgerNotReady, LedgerStore
from workflows.ledger_writes import RECORD_REFERRAL

log = structlog.get_logger("activities")


class LedgerActivities:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: LedgerStore | None = None

    def store(self) -> LedgerStore:
        """One store (one engine, one pool) per worker, made at the first write."""
        if self._store is None:
            self._store = LedgerStore.from_settings(self.settings)
        return self._store

    @activity.defn(name=RECORD_REFERRAL)
    async def record_referral(self, given: dict[str, Any]) -> bool:
        """Write the record (ledger_writes.compact's JSON); False when the ledger already holds a
        newer one (nothing changed)."""
        try:
            record = LedgerRecord.model_validate(given)
        except ValidationError as err:
            fields = sorted({".".join(map(str, e["loc"])) for e in err.errors(include_input=False)})  # never the values
            raise ApplicationError(f"not a ledger record: {', '.join(fields)}", type="InvalidLedgerRecord", non_retryable=True) from None
        try:
            written = await asyncio.to_thread(self._write, record)
        except LedgerNotReady as err:
            raise ApplicationError(str(err), type="LedgerNotReady") from None
        except (IntegrityError, DataError, ValueError) as err:
            raise ApplicationError(f"the ledger refused the record ({type(err).__name__})", type="InvalidLedgerRecord", non_retryable=True) from None
        except SQLAlchemyError as err:
            raise ApplicationError(f"the ledger database failed ({type(err).__name__})", type="LedgerUnavailable") from None
        services = {s.service: s.stage for s in record.services}
        what = "ledger record written" if written else "ledger record older than the one kept"
        log.info(what, code=record.code, services=services, closed=record.closure_reason)
        return written

    def _write(self, record: LedgerRecord) -> bool:
        store = self.store()
        store.check()
        return store.upsert(record)

    def all(self) -> list:
        return [self.record_referral]
