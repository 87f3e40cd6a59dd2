"""Partners' capacity: `FULL [service] [3d]` and `OPEN [service]`, by SMS or on the partner's
page, kept in the project's database (the ledger's, table `capacity_changes`).

Every change is a row, appended and never altered: the partner, the service it names (or all of
the partner's services), full or open, until when (`FULL shelter 3d`), the channel (`sms`, `web`,
or `expiry` for a FULL that lapsed by itself, recorded for the reports) and when. Whether a
partner is full now is derived from its rows (`full_spells`): the last change naming a service,
or naming all of them, decides, and a FULL with an `until` lapses by itself then. Codes and
times only: nothing here is about a person.

Read by the matching activity (activities/availability.py), the coordinator's assign form and
the partner's capacity page; written by the SMS webhook and that page (starter/capacity.py) and
by the coordinators' notice workflow when a FULL lapses. Never by workflow code.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Engine, Row, and_, or_, select
from sqlalchemy.exc import IntegrityError

from config.settings import Settings
from infra.database import engine_for
from ledger import migrate
from ledger.record import Code, MaybeWhen, When
from ledger.schema import capacity_changes

CapacityState = Literal["full", "open", "lapsed"]
CapacityChannel = Literal["sms", "web", "expiry"]
CAPACITY_CHANNELS: tuple[CapacityChannel, ...] = ("sms", "web", "expiry")


class CapacityChange(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: int | None = Field(default=None, description="set by the store; orders the changes")
    partner_id: Code
    service: Code | None = Field(default=None, description="none: all the partner's services")
    state: CapacityState
    until: MaybeWhen = Field(default=None, description="a FULL that lapses by itself at this time")
    channel: CapacityChannel
    at: When
    regions: list[Code] = Field(default_factory=list, description="the regions the partner covered then; empty: national")


@dataclass(frozen=True)
class FullSpell:
    """A service a partner is full for: since when, until when (None: until it says OPEN)."""

    since: datetime
    until: datetime | None


def full_spell(changes: Iterable[CapacityChange], service: str, now: datetime) -> FullSpell | None:
    """THE rule: whether the partner whose changes these are (oldest first) is full for `service`
    at `now` (changes made later do not count). Back-to-back FULLs are one spell, counted from the first."""
    spell: FullSpell | None = None
    for change in changes:
        if change.state == "lapsed" or change.at > now or (change.service is not None and change.service != service):
            continue  # a lapse is the record of `until` passing, which the spell already knows
        if spell is not None and spell.until is not None and spell.until <= change.at:
            spell = None
        if change.state == "full":
            spell = FullSpell(since=spell.since if spell else change.at, until=change.until)
        else:
            spell = None
    if spell is not None and spell.until is not None and spell.until <= now:
        return None
    return spell


def full_spells(changes: Sequence[CapacityChange], services: Iterable[str], now: datetime) -> dict[str, FullSpell]:
    """The services among `services` the partner is full for at `now`."""
    spells = {s: full_spell(changes, s, now) for s in services}
    return {s: spell for s, spell in spells.items() if spell is not None}


class CapacityStore:
    """Writes and reads `capacity_changes`. Synchronous: callers on an event loop use a thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._ready = False

    @classmethod
    def from_settings(cls, settings: Settings) -> CapacityStore:
        return cls(engine_for(settings.ledger_url))

    def check(self) -> None:
        """LedgerNotReady unless the database is at the code's migration (checked once)."""
        if not self._ready:
            migrate.check_ready(self.engine)
            self._ready = True

    def record(self, change: CapacityChange, key: str | None = None) -> tuple[CapacityChange, bool]:
        """Append a change; (the stored change with its id, True). With a `key` already used (a
        redelivered SMS, a retried activity): (the change stored then, False), nothing written."""
        self.check()
        # Regions as `,a,b,` (empty: national), so a region is found with one LIKE.
        regions = f",{','.join(change.regions)}," if change.regions else ""
        row = change.model_dump(exclude={"id", "regions"}) | {"key": key, "regions": regions}
        try:
            with self.engine.begin() as conn:
                new_id = conn.execute(capacity_changes.insert().values(row)).inserted_primary_key[0]  # type: ignore[index]
            return change.model_copy(update={"id": new_id}), True
        except IntegrityError:
            if key is None:
                raise
            with self.engine.connect() as conn:
                found = conn.execute(select(capacity_changes).where(capacity_changes.c.key == key)).one()
            return _change(found), False

    def changes_of(self, partner_ids: Iterable[str]) -> dict[str, list[CapacityChange]]:
        """Every change of these partners, oldest first."""
        self.check()
        ids = sorted(set(partner_ids))
        out: dict[str, list[CapacityChange]] = defaultdict(list)
        if not ids:
            return out
        query = select(capacity_changes).where(capacity_changes.c.partner_id.in_(ids)).order_by(capacity_changes.c.id)
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                out[row.partner_id].append(_change(row))
        return out

    def get(self, change_id: int) -> CapacityChange | None:
        self.check()
        with self.engine.connect() as conn:
            row = conn.execute(select(capacity_changes).where(capacity_changes.c.id == change_id)).first()
        return _change(row) if row is not None else None


def capacity_changes_between(engine: Engine, low: datetime | None, high: datetime | None, region: str | None) -> list[CapacityChange]:
    """For the reports: the changes made in [low, high) by partners covering `region` (or
    national ones), oldest first."""
    c = capacity_changes.c
    conditions = []
    if low is not None:
        conditions.append(c.at >= low)
    if high is not None:
        conditions.append(c.at < high)
    if region is not None:
        # Stored as `,a,b,`; a region code holds no comma, `%` or `_`.
        conditions.append(or_(c.regions == "", c.regions.like(f"%,{region},%")))
    query = select(capacity_changes).order_by(c.id)
    if conditions:
        query = query.where(and_(*conditions))
    with engine.connect() as conn:
        return [_change(row) for row in conn.execute(query)]


def _change(row: Row[Any]) -> CapacityChange:
    return CapacityChange.model_construct(
        id=row.id,
        partner_id=row.partner_id,
        service=row.service,
        state=row.state,
        until=row.until,
        channel=row.channel,
        at=row.at,
        regions=row.regions.strip(",").split(",") if row.regions else [],
    )
