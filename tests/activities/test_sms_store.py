"""The SMS store's lease on a MessageSid: deliveries of one message take turns, in one process
or several, and the lease of a process that died lapses by itself."""

from __future__ import annotations

import asyncio
import time

from activities import sms_store


def test_a_lease_is_held_renewed_released_and_lapses(make_settings) -> None:
    settings = make_settings()
    assert sms_store.claim_message(settings, "SM1", "first", 30)
    assert not sms_store.claim_message(settings, "SM1", "second", 30)
    assert sms_store.claim_message(settings, "SM1", "first", 30)  # renewed by its holder
    assert sms_store.claim_message(settings, "SM2", "second", 30)  # another message: no wait
    sms_store.release_message(settings, "SM1", "second")  # not its lease: nothing happens
    assert not sms_store.claim_message(settings, "SM1", "second", 30)
    sms_store.release_message(settings, "SM1", "first")
    assert sms_store.claim_message(settings, "SM1", "second", 30)

    assert sms_store.claim_message(settings, "SM3", "died", 0.2)
    time.sleep(0.3)
    assert sms_store.claim_message(settings, "SM3", "next", 30)


async def test_deliveries_of_one_message_take_turns_and_the_second_gets_the_first_answer(make_settings) -> None:
    settings = make_settings()
    order: list[str] = []
    held = asyncio.Event()

    async def delivery(name: str) -> str:
        async with sms_store.one_delivery_at_a_time(settings, "SM9") as stored:
            if stored is not None:
                order.append(f"{name} replayed")
                return stored
            order.append(f"{name} handles")
            held.set()
            await asyncio.sleep(0.3)
            return await asyncio.to_thread(sms_store.remember_reply, settings, "SM9", f"answer of {name}")

    first = asyncio.create_task(delivery("first"))
    await held.wait()  # the second delivery arrives while the first holds the message
    assert await asyncio.gather(first, delivery("second")) == ["answer of first"] * 2
    assert order == ["first handles", "second replayed"]


async def test_a_lease_left_by_a_dead_process_lapses(make_settings) -> None:
    settings = make_settings()
    assert sms_store.claim_message(settings, "SM7", "a process that died", 0.5)
    started = time.monotonic()
    async with sms_store.one_delivery_at_a_time(settings, "SM7") as stored:
        waited = time.monotonic() - started
        assert stored is None
    assert 0.3 < waited < 5
