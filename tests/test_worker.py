"""worker.py: how the worker is built."""

from __future__ import annotations

from temporalio.client import Client

from config.settings import Settings
from worker import build_worker


async def test_worker_keeps_no_referral_cached_by_default(time_env, make_settings):
    """The sticky cache stays off unless configured: a cached referral advanced by a query
    during a crash can record a history no worker replays (tests/replay/test_known_issues.py)."""
    assert Settings.model_fields["worker_max_cached_referrals"].default == 0
    client: Client = time_env.client
    worker = build_worker(client, make_settings(), task_queue="cache-default")
    assert worker.config()["max_cached_workflows"] == 0
    worker = build_worker(client, make_settings(worker_max_cached_referrals=500), task_queue="cache-set")
    assert worker.config()["max_cached_workflows"] == 500
