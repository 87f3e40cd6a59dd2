"""Which code a referral runs: its generation, written in its input by the starter, and the
`workflow.patched` ids of the changes made since referrals first ran.

A referral started before generations existed (generation 0) asks `workflow.patched` at each
change, as it always did: its history says which code it began under. A referral started by a
starter of generation 1 or later runs every change that generation includes from its start,
asking nothing: no marker and no `TemporalChangeVersion` upsert in its history (two events a
patch a run, eight a run for the four changes of generation 1). A change made after the current
generation is asked with `workflow.patched` by every referral until the starter's generation is
raised to include it (the README's "Changing the workflow").

Deterministic: the generation is in the run's input (carried across continue-as-new), so replay
decides as the first execution did.
"""

from __future__ import annotations

from temporalio import workflow

# Alerts that back off and climb, follow-up through the reflection period and its notice,
# continue-as-new (asked once at the start of every run).
LONG_LIVED = "long-lived-referral-2026-11"
# The status published in the memo (asked once at the start of every run).
STATUS_MEMO = "status-memo-2026-12"
# The ledger writes (asked once at the start of every run).
LEDGER = "ledger-2026-12"
# Matching with partners' capacity and opening hours (asked once when a new referral is matched).
CAPACITY = "capacity-2026-12"
# Matching again before each further offer (asked when a service first moves on to another partner).
RECHECK = "capacity-recheck-2026-12"

# What each generation runs from its start. Generation 1 also loads its policy and matches its
# partners in the same workflow task (one task fewer than generation 0, which loads first), and
# upserts its search attributes with the memo's status once a workflow task has settled (one
# upsert a task, not one per change: workflows/referral.py, workflows/status_memo.py).
INCLUDED: dict[int, frozenset[str]] = {
    1: frozenset({LONG_LIVED, STATUS_MEMO, LEDGER, CAPACITY, RECHECK}),
}
# The generation the starter writes in every new referral's input.
CURRENT = max(INCLUDED)


def runs(generation: int, change: str) -> bool:
    """Whether a referral of `generation` runs the code of `change` (a patch id): always, for a
    generation that includes it; otherwise as `workflow.patched` says (a marker the first time)."""
    if any(change in ids for g, ids in INCLUDED.items() if g <= generation):
        return True
    return workflow.patched(change)
