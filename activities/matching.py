"""Who is offered a service, in what order, now: the directory's ranking (activities/directory.py)
with the partners' capacity (ledger/capacity.py) and opening hours (activities/opening_hours.py).
Pure: the activity (activities/availability.py) reads the files, the database and the clock.

The rules:
- A partner full for the service (it said FULL) is skipped: no new offer until it says OPEN or
  its FULL lapses. Offers already made are not withdrawn.
- An emergency goes first to the partners open now, ranked as before among them; the partners
  closed now come after (they were "skipped as closed" by the one offered first in their place).
  With nobody open, the ranking stays as it is.
- Urgent and normal referrals keep the ranking; an offer to a partner closed when it is made
  counts its reply period from the partner's next opening (workflows/schedules.py): each
  candidate carries its opening windows for MATCH_HORIZON, in UTC.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from activities.directory import Partner
from ledger.capacity import FullSpell
from workflows.models import Candidate, MatchResult, OpenWindow, SkippedPartner

# How far ahead a candidate's opening windows go. An offer made later (a long ladder) to a
# partner closed then counts from the time it is made, as for a partner always open.
MATCH_HORIZON = timedelta(days=10)


def available_ladder(
    ranked: list[Partner], full: dict[str, FullSpell], urgency: str | None, now: datetime, tz: ZoneInfo
) -> MatchResult:
    """`ranked`: the directory's candidates, best first; `full`: the spell of each one full for
    the service now. The ladder to offer down, and who was skipped."""
    position = {p.id: i for i, p in enumerate(ranked)}
    ladder = [p for p in ranked if p.id not in full]
    passed: list[tuple[Partner, SkippedPartner]] = [(p, SkippedPartner(partner_id=p.id, reason="full", until=full[p.id].until)) for p in ranked if p.id in full]
    if urgency == "emergency":
        open_now = [p for p in ladder if p.hours.is_open(now, tz)]
        if open_now:
            closed = [p for p in ladder if p.id not in {o.id for o in open_now}]
            passed += [
                (p, SkippedPartner(partner_id=p.id, reason="closed", until=p.hours.next_opening(now, tz)))
                for p in closed
                if any(position[o.id] > position[p.id] for o in open_now)
            ]
            ladder = open_now + closed
    skipped = []
    for partner, skip in sorted(passed, key=lambda pair: position[pair[0].id]):
        # In its place: the first of the ladder that was ranked below it.
        instead = next((p.id for p in ladder if position[p.id] > position[partner.id]), None)
        skipped.append(skip.model_copy(update={"offered_instead": instead}))
    return MatchResult(candidates=[_candidate(p, now, tz) for p in ladder], skipped=skipped)


def _candidate(partner: Partner, now: datetime, tz: ZoneInfo) -> Candidate:
    if partner.hours.always:
        return Candidate(partner_id=partner.id, name=partner.name)
    windows = partner.hours.windows(now, now + MATCH_HORIZON, tz)
    return Candidate(partner_id=partner.id, name=partner.name, open_windows=[OpenWindow(opens=o, closes=c) for o, c in windows])
