"""Rotating the master key (REFERRAL_ENCRYPTION_KEYS) while referrals run, each under its own data
key: on the dev server, a referral started under the old key goes on and reads after the rotation,
and once `referral keys rewrap` has run, the old key can be retired."""

from __future__ import annotations

import base64
import os
import uuid

from temporalio.client import Client

from infra.temporal import data_converter, payload_codec
from starter import referrals
from tests.cases import adult_intake
from tests.conftest import running_worker
from tests.starter.test_cli import cli, cli_env
from tests.workflows.test_ledger_lifecycle import offered, reply

OLD = "old-1:" + base64.b64encode(os.urandom(32)).decode()
NEW = "new-1:" + base64.b64encode(os.urandom(32)).decode()


async def client_with(dev_env, settings) -> Client:
    return await Client.connect(
        dev_env.client.service_client.config.target_host, namespace=dev_env.client.namespace, data_converter=data_converter(settings)
    )


async def test_a_referral_started_under_the_old_master_key_goes_on_after_rotation(dev_env, make_settings):
    # The test's own key table (its ledger's database), not the session's.
    base = make_settings()
    own = {"data_keys_database_url": base.ledger_url}
    before = make_settings(referral_encryption_keys=OLD, **own)
    old_client = await client_with(dev_env, before)
    async with running_worker(old_client, before) as tq:
        started = await referrals.start_referral(old_client, adult_intake(external_ref=f"ROT-{uuid.uuid4().hex[:8]}"), tq)
        partner = await offered(old_client, started.code, "shelter")

    rotated = make_settings(referral_encryption_keys=f"{NEW},{OLD}", **own)
    new_client = await client_with(dev_env, rotated)
    # The running referral's task queue, served now by a worker with the rotated keys.
    async with running_worker_on(new_client, rotated, tq):
        await reply(new_client, started.code, partner, "accept")
        status = await referrals.get_status(new_client, started.code)
        assert next(s for s in status.services if s.service == "shelter").stage == "follow_up"
        # A referral started after the rotation gets a data key wrapped under the new key.
        fresh = await referrals.start_referral(new_client, adult_intake(external_ref=f"ROT2-{uuid.uuid4().hex[:8]}"), tq)
        await offered(new_client, fresh.code, "shelter")
        codec = payload_codec(rotated)
        assert codec is not None and codec.data_keys is not None and codec.data_keys.wrapping_key_id == "new-1"

        # `referral keys rewrap`, then the old key can be retired: everything still reads.
        env = cli_env(dev_env, rotated, tq)
        env.update(REFERRAL_ENCRYPTION_KEYS=f"{NEW},{OLD}", DATA_KEYS_DATABASE_URL=base.ledger_url)
        done = await cli(env, "keys", "rewrap")
        assert done.returncode == 0, done.stderr
        assert "1 rewrapped under master key id new-1" in done.stdout

    retired = make_settings(referral_encryption_keys=NEW, **own)
    only_new = await client_with(dev_env, retired)
    assert (await referrals.get_status(only_new, started.code)).code == started.code
    assert (await referrals.get_status(only_new, fresh.code)).code == fresh.code


def running_worker_on(client, settings, task_queue: str):
    from activities.referral_activities import ReferralActivities
    from worker import build_worker

    return build_worker(client, settings, task_queue=task_queue, activities=ReferralActivities(settings))
