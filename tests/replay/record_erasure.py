"""Record the ErasureWorkflow's history: `python -m tests.replay.record_erasure` (also run by
`make record-histories`).

The erasure needs Temporal's visibility and DeleteWorkflowExecution, so it runs on a fresh dev
server (not the time-skipping test server of record.py): a referral is started with record.py's
fictional intake, its first offer goes out, then `starter.erasure.erase` closes it (consent
withdrawn), destroys its data key, deletes its runs, marks its ledger row erased and records the
erasure. The ErasureWorkflow's history is written to `tests/replay/histories/erasure/erasure.json`,
decoded like the referral's recordings (`tests.replay.replay_data_converter`: no payload codec).

Encryption is off for the recording (REFERRAL_ALLOW_PLAINTEXT, no keys), so there is no data key
and the destroy step logs that and returns False; the erasure issues the same commands either
way. Its payloads hold the referral's code, the fictional coordinator and reason below, and
times: never the intake. In its own directory: test_replay.py replays every `histories/*.json`
against ReferralWorkflow.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import uuid
from pathlib import Path

from aiosmtpd.controller import Controller
from temporalio.testing import WorkflowEnvironment

from activities.referral_activities import ReferralActivities
from config.settings import Settings
from ledger import migrate
from starter import erasure, referrals
from tests.conftest import BIN, SmtpSink, _Handler, free_port, wait_for
from tests.fixtures import PARTNERS_FILE, POLICY_FILE
from tests.replay import HISTORIES, payload_texts, replay_data_converter
from tests.replay.record import NOTES, PHONE, PSEUDONYM, fictional_intake
from worker import build_worker
from workflows import search_attributes as sa
from workflows.erasure import ErasureWorkflow
from workflows.erasure import workflow_id as erasure_workflow_id

ERASURE_HISTORIES = HISTORIES / "erasure"
NAME = "erasure"
# Fictional, like the intake: who asked and why.
BY = "coord-cas"
REASON = "Fictional erasure request for the replay history; no real person."
# A decoded, indented erasure history is ~27 KB (six activities, 41 events): far below this.
MAX_BYTES = 64 * 1024


def settings_for(work: Path, smtp: SmtpSink) -> Settings:
    """As record.py's, with encryption off: plaintext allowed and no keys (tests.conftest puts the
    test key in the environment; `None` here wins over it), so no codec and no data keys."""
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        referral_data_dir=work / NAME,
        smtp_host="127.0.0.1",
        smtp_port=smtp.port,
        referral_policy_file=POLICY_FILE,
        referral_partners_file=PARTNERS_FILE,
        sms_backend="outbox",
        referral_allow_plaintext=True,
        referral_encryption_keys=None,
        data_keys_database_url=None,
        metrics_port=0,
    )


def check_history(text: str, code: str) -> None:
    """What the recording must hold (and must not): raises SystemExit otherwise."""
    payloads = "\n".join(payload_texts(json.loads(text)))
    for secret in (PSEUDONYM, PHONE, NOTES[:20], "REPLAY-"):
        if secret in payloads:
            raise SystemExit(f"{NAME}: the fictional intake ({secret!r}) is in the erasure's history")
    for expected in (code, BY, REASON):
        if expected not in payloads:
            raise SystemExit(f"{NAME}: {expected!r} is not in the erasure's history")
    if len(text.encode()) > MAX_BYTES:
        raise SystemExit(f"{NAME}: history is {len(text.encode())} bytes, over {MAX_BYTES}")


async def record(smtp: SmtpSink, work: Path, out_dir: Path) -> Path:
    settings = settings_for(work, smtp)
    migrate.upgrade(settings.ledger_url)  # the ledger and the record of erasures: a SQLite file in the work dir
    env = await WorkflowEnvironment.start_local(  # a fresh server: nothing else in its history
        dev_server_existing_path=str(BIN / "temporal"),
        search_attributes=sa.ALL,
        data_converter=replay_data_converter(),
        dev_server_log_level="error",
    )
    try:
        client = env.client
        task_queue = f"replay-record-{uuid.uuid4()}"
        async with build_worker(client, settings, task_queue=task_queue, activities=ReferralActivities(settings)):
            started = await referrals.start_referral(client, fictional_intake(NAME, ["shelter"]), task_queue)
            code = started.code

            async def offered() -> bool:
                status = await referrals.get_status(client, code)
                return any(s.stage == "awaiting_acceptance" and s.attempts for s in status.services)

            await wait_for(offered, timeout=60)
            outcome = await asyncio.wait_for(erasure.erase(client, settings, code, by=BY, reason=REASON, task_queue=task_queue), timeout=180)
            done = outcome.erasure
            # The whole path: an open referral closed, its run deleted, its ledger row marked.
            if not (outcome.was_open and not outcome.already and done.state == "erased" and done.runs_deleted and done.ledger_marked):
                raise SystemExit(f"{NAME}: not the whole erasure path: {outcome!r}")
            history = await client.get_workflow_handle(erasure_workflow_id(code)).fetch_history()
    finally:
        await env.shutdown()
    if history.events[0].workflow_execution_started_event_attributes.workflow_type.name != ErasureWorkflow.__name__:
        raise SystemExit(f"{NAME}: not an ErasureWorkflow history")
    text = history.to_json()
    check_history(text, code)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{NAME}.json"
    target.write_text(text + "\n", encoding="utf-8")
    return target


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.replay.record_erasure", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ERASURE_HISTORIES, help="directory for erasure.json (default: %(default)s)")
    args = parser.parse_args(argv)
    smtp = SmtpSink(port=free_port())
    controller = Controller(_Handler(smtp), hostname="127.0.0.1", port=smtp.port)
    controller.start()
    try:
        with tempfile.TemporaryDirectory(prefix="replay-record-erasure-") as tmp:
            target = await record(smtp, Path(tmp), args.out)
            print(f"{target.relative_to(Path.cwd()) if target.is_relative_to(Path.cwd()) else target}: {target.stat().st_size // 1024} KB")
    finally:
        controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
