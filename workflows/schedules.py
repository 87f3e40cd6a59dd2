"""When things happen to a referral over its months: pure functions of the policy it loaded at
its start and of dates, used by ReferralWorkflow and checked on their own by unit tests.

- An escalated service's alert repeats back off: the first after `escalated_alert_every`, each
  next one `escalated_alert_backoff` times later, never more than `escalated_alert_max` apart;
  after `focal_point_after_alerts` unanswered repeats the national focal point is alerted too.
- An urgent or normal offer to a partner closed when it is made counts its reply period (the
  reminder, the deadline) from the partner's next opening; an emergency's from the offer.
- Follow-up runs through the reflection period: the policy's check-ins after acceptance, then one
  every `follow_up_every` and one at the period's end, if it ends later; the coordinator is told
  `reflection_end_notice` before the end.

Deterministic: no I/O, clock or configuration; only models.py imported.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from workflows.models import EscalationPolicy, OpenWindow

# --- offers ------------------------------------------------------------------------------------


def reply_period_starts(open_windows: list[OpenWindow] | None, offered_at: datetime, urgency: str) -> datetime:
    """THE rule for an offer to a partner that may be closed: its reply period starts when the
    offer is made, unless the referral is urgent or normal and the partner is closed then (its
    opening windows from the matching say so): at its next opening. Past the windows the
    matching gave (activities/matching.py MATCH_HORIZON), at once, as for a partner always open."""
    if open_windows is None or urgency == "emergency":
        return offered_at
    for window in open_windows:
        if window.closes > offered_at:
            return max(window.opens, offered_at)
    return offered_at


# --- escalated alerts ------------------------------------------------------------------------


def alert_delay(policy: EscalationPolicy, alerts_sent: int) -> timedelta:
    """How long after the last alert the next one goes, once `alerts_sent` repeats went out
    (0: the wait after the first alert, the one that says no partner is left)."""
    cap = max(policy.escalated_alert_max, policy.escalated_alert_every)
    delay = policy.escalated_alert_every
    if policy.escalated_alert_backoff == 1:
        return delay
    for _ in range(alerts_sent):  # stops at the cap: no float overflow after years of alerts
        delay = delay * policy.escalated_alert_backoff
        if delay >= cap:
            return cap
    return delay


def alert_times(policy: EscalationPolicy, escalated_at: datetime, until: datetime) -> list[datetime]:
    """Every repeat of the alert of a service escalated at `escalated_at` and left so until `until`."""
    times: list[datetime] = []
    at = escalated_at + alert_delay(policy, 0)
    while at <= until:
        times.append(at)
        at += alert_delay(policy, len(times))
    return times


def alert_climbs(policy: EscalationPolicy, alert_number: int) -> bool:
    """This repeat is the first after `focal_point_after_alerts` went unanswered: the national
    focal point is alerted too, and the service's escalation level goes up by one."""
    return alert_number == policy.focal_point_after_alerts + 1


# --- follow-up through the reflection period ------------------------------------------------


def reflection_ends(policy: EscalationPolicy, started_at: datetime, *, minor: bool) -> datetime:
    """The end of the person's reflection period, counted from the referral's start."""
    return started_at + (policy.reflection_period_minors if minor else policy.reflection_period_adults)


def checkin_plan(policy: EscalationPolicy, accepted_at: datetime, reflection_end: datetime | None) -> list[datetime]:
    """When a partner who took up a service at `accepted_at` is asked how it goes: the policy's
    check-ins after acceptance (all of them, whenever the period ends), then one every
    `follow_up_every` while the reflection period lasts, and one at its end. Without a
    reflection period (a referral started before it was kept) only the listed check-ins."""
    plan = [accepted_at + offset for offset in policy.follow_ups]
    if reflection_end is None:
        return plan
    last = plan[-1] if plan else accepted_at
    at = last + policy.follow_up_every
    while at < reflection_end:
        plan.append(at)
        at += policy.follow_up_every
    if (plan[-1] if plan else accepted_at) < reflection_end:
        plan.append(reflection_end)
    return plan


def reflection_notice_at(policy: EscalationPolicy, reflection_end: datetime) -> datetime:
    """When the coordinator is told the reflection period is about to end."""
    return reflection_end - policy.reflection_end_notice
