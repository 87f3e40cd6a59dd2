"""What a referral's state means: pure functions over its services' statuses.

Each rule is written here once and used on both sides: by ReferralWorkflow (its queries, search
attributes and the Temporal UI's details table) and by the web pages (the referral page's
timeline, the partner page). Deterministic: no I/O, clock, random or configuration, and only
models.py imported, so the workflow sandbox and the web app load it alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from workflows.models import STAGE_ORDER, AlertedRole, Attempt, FollowUp, ServiceStatus, SkippedPartner, Stage

# --- one service ---------------------------------------------------------------------------


def pending_attempt(s: ServiceStatus) -> Attempt | None:
    """The offer still awaiting its partner's answer, if any."""
    if s.attempts and s.attempts[-1].outcome is None:
        return s.attempts[-1]
    return None


def open_checkin(s: ServiceStatus) -> FollowUp | None:
    """The check-in sent and not yet answered, if any."""
    for f in reversed(s.follow_ups):
        if f.sent_at is not None and f.answer is None:
            return f
    return None


def passed_over(s: ServiceStatus, partner_id: str) -> bool:
    """Offered to this partner once, and that offer is over (declined, timed out, withdrawn...)."""
    return any(a.partner_id == partner_id and a.outcome is not None for a in s.attempts)


def involves(s: ServiceStatus, partner_id: str) -> bool:
    """Offered to this partner at some point, or theirs now."""
    return s.partner_id == partner_id or any(a.partner_id == partner_id for a in s.attempts)


def offered_to(s: ServiceStatus, partner_id: str) -> bool:
    """An offer to this partner awaits its answer, on a service still open."""
    attempt = pending_attempt(s)
    return s.stage != "closed" and attempt is not None and attempt.partner_id == partner_id


def held_by(s: ServiceStatus, partner_id: str) -> bool:
    """This partner holds the service: accepted it or was assigned it by the coordinator, and it is
    neither completed nor closed. An acceptance counts from the moment the update is applied, even
    before the service's loop has taken it up (`accepted_at` still unset)."""
    if s.stage == "closed" or s.completed_at is not None:
        return False
    if s.partner_id == partner_id and s.accepted_at is not None:
        return True
    last = s.attempts[-1] if s.attempts else None
    return s.accepted_at is None and last is not None and last.partner_id == partner_id and last.outcome == "accepted"


# --- a partner's standing, and who may see the person's details -----------------------------

PartnerStanding = Literal["closed", "held", "offered", "completed", "passed", "not_offered"]


def partner_standing(services: Sequence[ServiceStatus], partner_id: str, *, closed: bool) -> PartnerStanding:
    """Where this partner stands with the referral, the first that applies: the referral is
    closed; the partner holds one of its services; has an offer awaiting an answer; completed
    their service; was offered it once and passed over; was never offered it."""
    if closed:
        return "closed"
    if any(held_by(s, partner_id) for s in services):
        return "held"
    if any(offered_to(s, partner_id) for s in services):
        return "offered"
    if any(s.partner_id == partner_id and s.completed_at for s in services):
        return "completed"
    if any(involves(s, partner_id) for s in services):
        return "passed"
    return "not_offered"


def may_see_person_details(services: Sequence[ServiceStatus], partner_id: str, *, closed: bool) -> bool:
    """THE rule for the person's details (pseudonym, phone, notes): only a partner who holds a
    service of an open referral. Not with a pending offer, not once passed over, not after the
    service is completed or the referral closed."""
    return partner_standing(services, partner_id, closed=closed) == "held"


# --- the referral ----------------------------------------------------------------------------


def referral_stage(services: Iterable[ServiceStatus], *, closed: bool) -> Stage:
    """The least advanced stage of the services; `escalated` if any is (someone must act)."""
    if closed:
        return "closed"
    stages = [s.stage for s in services]
    if "escalated" in stages:
        return "escalated"
    return min(stages, key=STAGE_ORDER.index) if stages else "identification"


def escalation_level(services: Iterable[ServiceStatus]) -> int:
    return max((s.escalation_level for s in services), default=0)


def awaited(services: Iterable[ServiceStatus]) -> tuple[list[str], datetime | None]:
    """Who must answer now (an offer, or a check-in sent), and the earliest of their deadlines."""
    partners: list[str] = []
    deadlines: list[datetime] = []
    for s in services:
        attempt = pending_attempt(s)
        checkin = open_checkin(s)
        if attempt is not None:
            partners.append(attempt.partner_id)
            deadlines.append(attempt.deadline)
        elif checkin is not None and s.partner_id and checkin.answer_by:
            partners.append(s.partner_id)
            deadlines.append(checkin.answer_by)
    return sorted(set(partners)), min(deadlines, default=None)


def engaged_partners(services: Iterable[ServiceStatus]) -> list[str]:
    """Partners offered the referral now, or serving a service not yet completed."""
    partners = set()
    for s in services:
        if s.stage == "closed" or s.completed_at is not None:
            continue
        if (pending_attempt(s) is not None or s.accepted_at is not None) and s.partner_id:
            partners.add(s.partner_id)
    return sorted(partners)


# --- who a coordinator's notice reaches ----------------------------------------------------

# Coordinator notices that reach the national focal point whatever the urgency and level.
FOCAL_POINT_TEMPLATES = frozenset({"ladder_exhausted", "escalation_to_focal_point"})


def alerted(template: str, urgency: str, escalation_level: int) -> list[AlertedRole]:
    """THE rule for who a notice to a region's coordinator reaches: the coordinator, and the
    national focal point too for an emergency, from escalation level 2, when a service has no
    partner left, and when unanswered alerts climb to it. The send activities follow it; the
    status shows it."""
    if urgency == "emergency" or escalation_level >= 2 or template in FOCAL_POINT_TEMPLATES:
        return ["coordinator", "national_focal_point"]
    return ["coordinator"]


# --- a service's timeline --------------------------------------------------------------------

TimelineKind = Literal[
    "offer", "reminder", "accepted", "declined", "timed_out", "withdrawn", "reassigned", "awaiting",
    "assigned", "ladder_exhausted", "checkin_sent", "checkin_ok", "checkin_done", "checkin_issue",
    "checkin_silence", "checkin_due", "completed", "skipped_full", "skipped_closed",
]


_EPOCH = datetime.min.replace(tzinfo=UTC)
_END = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class TimelineEvent:
    at: datetime | None
    kind: TimelineKind
    partner_id: str | None = None
    deadline: datetime | None = None  # an offer's reply deadline, a check-in's answer-by
    checkin: int | None = None  # the check-in's number
    highlight: bool = False  # something went wrong: a refusal, a silence, no partner left
    future: bool = False  # awaited, not happened yet
    reason: str | None = None  # a decline's reason in the partner's words, or "unreachable"
    decline_code: int | None = None  # a decline's reason code (ledger.record.DECLINE_CODES)


def outcome_at(a: Attempt) -> datetime:
    """When an offer ended: the reply, or the deadline it passed. Withdrawn, reassigned and
    unreachable offers carry no time of their own: the last thing known before (the reminder, or
    the offer) keeps them in order."""
    if a.replied_at is not None:
        return a.replied_at
    if a.outcome == "timed_out" and a.reason != "unreachable":
        return a.deadline
    return a.remind_at if a.reminded else a.offered_at


def service_timeline(s: ServiceStatus) -> list[TimelineEvent]:
    """What happened to one service, oldest first; what is awaited comes last."""
    events: list[TimelineEvent] = []
    for a in s.attempts:
        p = a.partner_id
        # Partners the matching passed over for this one, just before its offer.
        events += [_skipped_event(k, a.offered_at) for k in s.skipped if k.offered_instead == p and a is _first_offer(s, p)]
        events.append(TimelineEvent(a.offered_at, "offer", p, deadline=a.deadline))
        if a.reminded:
            events.append(TimelineEvent(a.remind_at, "reminder", p))
        if a.outcome:
            highlight = a.outcome in ("timed_out", "declined")
            events.append(TimelineEvent(outcome_at(a), a.outcome, p, highlight=highlight, reason=a.reason, decline_code=a.decline_code))
        elif s.stage != "closed":
            events.append(TimelineEvent(a.deadline, "awaiting", p, future=True))
    if s.accepted_at and s.assigned_by_coordinator and s.partner_id:
        events.append(TimelineEvent(s.accepted_at, "assigned", s.partner_id))
    if s.stage == "escalated":
        last = max((e.at for e in events if e.at and not e.future), default=None)
        events += [_skipped_event(k, last) for k in s.skipped if k.offered_instead is None]
        events.append(TimelineEvent(last, "ladder_exhausted", highlight=True))
    for f in s.follow_ups:
        if f.sent_at:
            events.append(_checkin_event(f, f.sent_at, "checkin_sent"))
        if f.answer:
            at = f.answered_at or f.answer_by or f.due_at
            events.append(_checkin_event(f, at, f"checkin_{f.answer}", highlight=f.answer in ("issue", "silence")))  # type: ignore[arg-type]
        elif not f.sent_at and s.stage != "closed":
            events.append(_checkin_event(f, f.due_at, "checkin_due", future=True))
    if s.completed_at:
        events.append(TimelineEvent(s.completed_at, "completed"))
    # Stable sorts: of events at one time, the one recorded first stays first.
    past = sorted((e for e in events if not e.future), key=lambda e: (e.at is None, e.at or _EPOCH))
    future = sorted((e for e in events if e.future), key=lambda e: e.at or _END)
    return past + future


def _first_offer(s: ServiceStatus, partner_id: str) -> Attempt | None:
    return next((a for a in s.attempts if a.partner_id == partner_id), None)


def _skipped_event(k: SkippedPartner, at: datetime | None) -> TimelineEvent:
    # `deadline`: until when it is full, or when it opens
    return TimelineEvent(at, "skipped_full" if k.reason == "full" else "skipped_closed", k.partner_id, deadline=k.until)


def latest_event(s: ServiceStatus) -> TimelineEvent | None:
    """The service's latest event that has happened (of events at one time, the one recorded last)."""
    past = [e for e in service_timeline(s) if not e.future and e.at is not None]
    return past[-1] if past else None


def _checkin_event(f: FollowUp, at: datetime, kind: TimelineKind, highlight: bool = False, future: bool = False) -> TimelineEvent:
    return TimelineEvent(at, kind, f.partner_id, deadline=f.answer_by, checkin=f.number, highlight=highlight, future=future)


# --- what the Temporal UI and the closing summary show (English, operators only) -----------


def when_utc(when: datetime) -> str:
    """A deadline as timer summaries and the details table show it."""
    return when.strftime("%Y-%m-%d %H:%M UTC")


def describe(e: TimelineEvent) -> str:
    """An event in a few English words, for the details table."""
    p = e.partner_id
    if e.kind == "offer":
        return f"offered to {p}"
    if e.kind == "reminder":
        return f"{p} reminded"
    if e.kind in ("accepted", "declined", "timed_out", "withdrawn", "reassigned"):
        return f"{p} {e.kind.replace('_', ' ')}"
    if e.kind == "assigned":
        return f"assigned to {p}"
    if e.kind == "checkin_sent":
        return f"check-in {e.checkin} sent"
    if e.kind.startswith("skipped_"):
        return f"{p} skipped ({e.kind.removeprefix('skipped_')})"
    if e.kind.startswith("checkin_"):
        return f"check-in {e.checkin}: {e.kind.removeprefix('checkin_')}"
    return {"ladder_exhausted": "no candidate left"}.get(e.kind, e.kind.replace("_", " "))


def details_markdown(code: str, stage: str, urgency: str, services: Iterable[ServiceStatus], closed_reason: str | None) -> str:
    """The Temporal UI's current details: one row per service, nothing about the person; then,
    for each escalated service, its last and next alert."""
    services = list(services)
    lines = [f"**R-{code}** · stage `{stage}` · urgency `{urgency}`", ""]
    lines.append("| service | stage | partner | deadline | level | last event |")
    lines.append("|---|---|---|---|---|---|")
    for s in services:
        attempt = pending_attempt(s)
        checkin = open_checkin(s)
        deadline = attempt.deadline if attempt else (checkin.answer_by if checkin else None)
        when = when_utc(deadline) if deadline else "-"
        last = latest_event(s)
        event = f"{describe(last)} ({last.at:%H:%M} UTC)" if last is not None and last.at is not None else "-"
        lines.append(f"| {s.service} | {s.stage} | {s.partner_id or '-'} | {when} | {s.escalation_level} | {event} |")
    skips = [skipped_line(s) for s in services if s.skipped]
    if skips:
        lines += ["", *skips]
    alerts = [alert_line(s) for s in services if s.stage == "escalated" and s.next_alert_at]
    if alerts:
        lines += ["", *alerts]
    if closed_reason:
        lines += ["", f"Closed: {closed_reason}"]
    return "\n".join(lines)


def alert_line(s: ServiceStatus) -> str:
    """An escalated service's alerts: who the last one reached and when the next one goes."""
    last = f"alert {s.escalated_alerts} sent {when_utc(s.last_alert_at)}" if s.last_alert_at else "no alert sent yet"
    who = " and ".join(r.replace("_", " ") for r in s.last_alerted) or "-"
    nxt = when_utc(s.next_alert_at) if s.next_alert_at else "-"
    return f"- `{s.service}`: {last} to {who}; next alert {nxt}"


def skipped_line(s: ServiceStatus) -> str:
    """Who the matching passed over, and for whom: `- shelter: cas-assoc full, ... for nat-shelter-amane`."""
    parts = []
    for k in s.skipped:
        until = f" until {when_utc(k.until)}" if k.until and k.reason == "full" else f" (opens {when_utc(k.until)})" if k.until else ""
        parts.append(f"{k.partner_id} {k.reason}{until}, " + (f"offered to {k.offered_instead} instead" if k.offered_instead else "no one after it"))
    return f"- `{s.service}` skipped: " + "; ".join(parts)


def summary_line(s: ServiceStatus) -> str:
    """One service in the coordinator's closing summary."""
    partner = s.partner_id if s.accepted_at else "no partner"
    return f"{s.service}: {s.stage}, {partner}, {len(s.attempts)} offer(s), escalation level {s.escalation_level}"
