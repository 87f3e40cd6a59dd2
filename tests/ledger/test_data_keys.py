"""The referrals' data keys (infra/data_keys.py) and the codec that uses them (infra/codec.py), on
SQLite and on PostgreSQL: a key per referral found by the payload's key id alone, destruction
for good, master key rotation, and errors that name keys, never data."""

from __future__ import annotations

import asyncio
import base64
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.converter import ActivitySerializationContext, WorkflowSerializationContext

from infra.codec import KEY_ID, EncryptionCodec, PayloadDecryptionError
from infra.data_keys import CACHE_SECONDS, DataKeysNotReady, DataKeyStore, ReferralDataErased
from infra.database import engine_for
from ledger import migrate
from tests.cases import NOTES, PHONE, PSEUDONYM

KEY_A = "key-a:" + base64.b64encode(bytes(range(32))).decode()
KEY_B = "key-b:" + base64.b64encode(bytes(range(100, 132))).decode()


def payload(text: str = PSEUDONYM) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=f'"{text}"'.encode())


def of_workflow(codec: EncryptionCodec, workflow_id: str) -> EncryptionCodec:
    return codec.with_context(WorkflowSerializationContext(namespace="default", workflow_id=workflow_id))


def of_activity(codec: EncryptionCodec, workflow_id: str) -> EncryptionCodec:
    context = ActivitySerializationContext(
        namespace="default",
        activity_id="1",
        activity_type="send_sms",
        activity_task_queue="referrals",
        workflow_id=workflow_id,
        workflow_type="ReferralWorkflow",
        is_local=False,
    )
    return codec.with_context(context)


@pytest.fixture
def keys_url(ledger_url: str) -> str:
    migrate.upgrade(ledger_url)
    return ledger_url


async def test_each_referral_has_its_own_key_and_anyone_with_the_table_decodes(keys_url: str) -> None:
    codec = EncryptionCodec.from_setting(KEY_A, keys_url)
    [one] = await of_workflow(codec, "referral-AAAAA").encode([payload()])
    [again] = await of_activity(codec, "referral-AAAAA").encode([payload(PHONE)])
    [two] = await of_workflow(codec, "referral-BBBBB").encode([payload(NOTES)])
    [other] = await of_workflow(codec, "capacity-cas-assoc-1-20261201T000000").encode([payload("no person")])
    [bare] = await codec.encode([payload("no context")])
    ids = [p.metadata[KEY_ID].decode() for p in (one, again, two, other, bare)]
    assert ids[0] == ids[1] and ids[0].startswith("dk:") and ids[2].startswith("dk:") and ids[0] != ids[2]
    assert ids[3] == ids[4] == "key-a"  # no referral: the master key
    for sealed in (one, again, two):
        assert PSEUDONYM.encode() not in sealed.data and PHONE.encode() not in sealed.data
    # A process without any context (the codec server, `temporal workflow show`) decodes them all.
    fresh = EncryptionCodec.from_setting(KEY_A, keys_url)
    decoded = await fresh.decode([one, again, two, other, bare])
    assert [p.data for p in decoded] == [f'"{t}"'.encode() for t in (PSEUDONYM, PHONE, NOTES, "no person", "no context")]


def test_processes_racing_for_a_new_referral_get_one_key(keys_url: str) -> None:
    stores = [DataKeyStore(keys_url, [("key-a", bytes(range(32)))]) for _ in range(8)]
    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda s: s.key_for_referral("RACE1"), stores))
    assert len({key_id for key_id, _ in got}) == 1 and len({key for _, key in got}) == 1


async def test_a_destroyed_key_is_gone_for_good(keys_url: str, tmp_path: Path) -> None:
    codec = EncryptionCodec.from_setting(KEY_A, keys_url)
    bound = of_workflow(codec, "referral-GONE1")
    sealed = await bound.encode([payload(), payload(PHONE)])
    key_id = sealed[0].metadata[KEY_ID].decode()
    store = codec.data_keys
    assert store is not None
    with engine_for(keys_url).connect() as conn:
        wrapped = conn.exec_driver_sql("SELECT wrapped FROM data_keys WHERE referral = 'GONE1'").scalar()
    first = store.destroy("GONE1")
    assert first.destroyed and store.destroy("GONE1").destroyed_at == first.destroyed_at  # safe to repeat
    with pytest.raises(PayloadDecryptionError, match="destroyed") as err:
        await EncryptionCodec.from_setting(KEY_A, keys_url).decode(sealed)
    assert err.value.key_id == key_id
    assert PSEUDONYM not in str(err.value) and "GONE1" in str(err.value)
    # Nothing can be written under the erased code again: no fresh key, no fresh data.
    with pytest.raises(ReferralDataErased, match="R-GONE1 was erased"):
        await bound.encode([payload()])
    # Erasing a referral that never had a key leaves a tombstone all the same.
    assert store.destroy("NEVER").destroyed
    with pytest.raises(ReferralDataErased):
        store.key_for_referral("NEVER")
    if keys_url.startswith("sqlite"):
        # secure_delete and the truncated write-ahead log: the wrapped key's bytes are not in the files.
        database = Path(keys_url.removeprefix("sqlite:///"))
        files = [p for p in database.parent.iterdir() if p.name.startswith(database.name)]
        assert files and all(wrapped not in p.read_bytes() for p in files)


async def test_another_process_stops_decoding_within_the_cache_lifetime(keys_url: str) -> None:
    writer = EncryptionCodec.from_setting(KEY_A, keys_url)
    sealed = await of_workflow(writer, "referral-LATER").encode([payload()])
    reader = EncryptionCodec.from_setting(KEY_A, keys_url)  # say, the codec server
    assert (await reader.decode(sealed))[0].data == payload().data
    assert writer.data_keys is not None
    writer.data_keys.destroy("LATER")
    with pytest.raises(PayloadDecryptionError, match="destroyed"):
        await writer.decode(sealed)  # the destroying process at once
    await asyncio.sleep(CACHE_SECONDS)  # what the erasure waits before it goes on
    with pytest.raises(PayloadDecryptionError, match="destroyed"):
        await reader.decode(sealed)


async def test_master_key_rotation_keeps_old_referrals_readable_and_rewrap_retires_the_old_key(keys_url: str) -> None:
    before = EncryptionCodec.from_setting(KEY_A, keys_url)
    old = await of_workflow(before, "referral-OLD01").encode([payload()])
    # Rotation: the new key first, the old one kept after it.
    rotated = EncryptionCodec.from_setting(f"{KEY_B},{KEY_A}", keys_url)
    assert (await rotated.decode(old))[0].data == payload().data
    new = await of_workflow(rotated, "referral-NEW01").encode([payload(NOTES)])
    assert (await of_workflow(rotated, "referral-OLD01").encode([payload(PHONE)]))[0].metadata[KEY_ID] == old[0].metadata[KEY_ID]
    # Without the old master key, the old referral's data key cannot be unwrapped...
    only_new = EncryptionCodec.from_setting(KEY_B, keys_url)
    with pytest.raises(PayloadDecryptionError, match="'key-a'"):
        await only_new.decode(old)
    # ... until every data key is rewrapped under the new one; then the old key can go.
    assert rotated.data_keys is not None and rotated.data_keys.rewrap() == 1
    assert rotated.data_keys.rewrap() == 0
    assert [p.data for p in await only_new.decode([*old, *new])] == [payload().data, payload(NOTES).data]


async def test_a_database_without_the_key_table_says_to_migrate(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    codec = EncryptionCodec.from_setting(KEY_A, url)
    with pytest.raises(DataKeysNotReady, match="referral ledger upgrade"):
        await of_workflow(codec, "referral-AAAAA").encode([payload()])
    engine_for(url).dispose()
