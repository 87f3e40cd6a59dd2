"""`referral ledger rebuild`: fill the ledger from Temporal, for referrals started before the
workflow wrote the ledger, a ledger database lost or wiped, or a write given up.

Every referral Temporal still knows (running ones, and closed ones within the namespace's
retention; a referral that continued as new is its latest run) is read as the CLI and pages read
it: its status from the workflow's memo (`starter.referrals.get_status`, no worker needed) and
its intake from the current run's input. The record is built by the same pure function the
workflow uses (workflows/ledger_entry.py), dated as of the latest moment its status records, and
upserted: a record the workflow wrote later is kept, the same record twice changes nothing, so a
rebuild is safe to run at any time and as often as wished. Nothing identifying is read into the
ledger or printed: codes and counts only.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from temporalio.client import Client

from ledger.store import LedgerStore
from starter import referrals
from workflows.ledger_entry import as_of, ledger_record

# Referrals read from Temporal at once.
CONCURRENCY = 8


@dataclass
class Rebuilt:
    """What a rebuild did: referrals read, records written, records the ledger already had as
    recent or more (kept), and the codes that could not be rebuilt with the kind of problem."""

    read: int = 0
    written: int = 0
    kept: int = 0
    failed: dict[str, str] = field(default_factory=dict)


async def referral_codes(client: Client) -> list[str]:
    """Every referral's code Temporal's visibility lists (its latest run)."""
    codes = [wf.id.removeprefix("referral-") async for wf in client.list_workflows(referrals.LATEST_RUNS)]
    return sorted(set(codes))


async def rebuild(client: Client, store: LedgerStore, codes: list[str] | None = None) -> Rebuilt:
    """Upsert the record of each referral (all Temporal lists, or these codes)."""
    store.check()
    chosen = codes if codes is not None else await referral_codes(client)
    result = Rebuilt()
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(code: str) -> None:
        async with limit:
            try:
                status, run_input = await referrals.status_and_input(client, code)
                record = ledger_record(run_input.intake, status, as_of(status))
            except Exception as err:  # gone since listed, unreadable (another key), not a code the ledger keeps...
                result.failed[code] = type(err).__name__  # the kind only: a message may quote the intake
                return
        written = await asyncio.to_thread(store.upsert, record)
        result.read += 1
        if written:
            result.written += 1
        else:
            result.kept += 1

    await asyncio.gather(*(one(code) for code in chosen))
    return result
