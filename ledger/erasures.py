"""The record of erasures: which referral was erased, when, by whom and why (table `erasures`).

Kept in the project's database beside the ledger, for the data protection officer: proof that a
request was carried out, never anything about the person (the code is not personal; the reason is
a coordinator's words, and the forms ask for no personal data in it). Written by the erasure's
activities (activities/erasure.py): `requested` first, `erased` once every step is done; both
writes are safe to repeat.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import IntegrityError

from infra.database import engine_for
from ledger.schema import erasures

REQUESTED = "requested"
ERASED = "erased"


class Erasure(BaseModel):
    code: str
    requested_at: datetime
    requested_by: str
    reason: str
    state: str
    erased_at: datetime | None = None
    runs_deleted: int | None = None
    ledger_marked: bool | None = None


class ErasureLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def for_url(cls, url: str) -> ErasureLog:
        return cls(engine_for(url))

    def record_request(self, code: str, at: datetime, by: str, reason: str) -> Erasure:
        """The request, unless one is recorded already (a retried step, or an erasure asked
        twice): the first request stands."""
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(erasures).values(code=code, requested_at=at, requested_by=by, reason=reason, state=REQUESTED))
        except IntegrityError:
            pass
        found = self.get(code)
        assert found is not None
        return found

    def record_done(self, code: str, at: datetime, runs_deleted: int, ledger_marked: bool) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(erasures)
                .where(erasures.c.code == code, erasures.c.state != ERASED)
                .values(state=ERASED, erased_at=at, runs_deleted=runs_deleted, ledger_marked=ledger_marked)
            )

    def get(self, code: str) -> Erasure | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(erasures).where(erasures.c.code == code)).first()
        return Erasure.model_validate(row._asdict()) if row is not None else None

    def all(self) -> list[Erasure]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(erasures).order_by(erasures.c.requested_at)).all()
        return [Erasure.model_validate(r._asdict()) for r in rows]
