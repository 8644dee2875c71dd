"""Unit tests of the peer slots (:mod:`affinity_mw._slots`): hand-over order, timeouts and cancellation."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

from affinity_mw._slots import AsyncPeerSlots, SyncPeerSlots
from affinity_mw.forward import PoolExhausted


def test_peer_slots_are_handed_over_in_order_and_never_lost() -> None:
    """A release hands its slot to the oldest live waiter; a waiter that times out gets PoolExhausted and leaves
    the queue; one cancelled just after being handed a slot passes it on, so the count never leaks."""

    async def scenario() -> list[str]:
        slots = AsyncPeerSlots(2, 0.05).get("peer")
        events: list[str] = []
        assert slots.take() and slots.take() and not slots.take()

        async def waiter(name: str, timeout: float) -> None:
            try:
                await slots.wait(timeout, "peer")
                events.append(f"{name} got a slot")
            except PoolExhausted:
                events.append(f"{name} timed out")

        late = asyncio.ensure_future(waiter("late", 0.01))
        first = asyncio.ensure_future(waiter("first", 5))
        second = asyncio.ensure_future(waiter("second", 5))
        await asyncio.sleep(0.05)  # "late" times out and leaves the queue
        assert not slots.take()  # waiters queue: a newcomer cannot jump them
        slots.release()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        second.cancel()  # cancelled while waiting: leaves the queue, takes nothing
        await asyncio.gather(late, first, second, return_exceptions=True)
        slots.release()  # first's slot: nobody waits, so it is free again
        slots.release()  # the other original holder's
        assert slots.free == 2 and not slots.waiters
        # Handed a slot and cancelled in the same turn: the slot goes back, it is not lost.
        assert slots.take() and slots.take()
        third = asyncio.ensure_future(slots.wait(5, "peer"))
        await asyncio.sleep(0)
        slots.release()
        third.cancel()
        (outcome,) = await asyncio.gather(third, return_exceptions=True)
        assert isinstance(outcome, asyncio.CancelledError)
        assert slots.free == 1 and not slots.waiters
        # A hand-over and the timeout due in the same turn: whichever the loop runs first wins, on every version.
        fourth = asyncio.ensure_future(slots.wait(0.01, "peer"))
        await asyncio.sleep(0)
        time.sleep(0.03)  # the loop is busy: the timeout is overdue when the release comes
        slots.release()
        await asyncio.gather(fourth, return_exceptions=True)
        assert fourth.exception() is None  # handed over before the overdue timer ran: the waiter has the slot
        slots.release()  # the fourth's; ours went to it
        assert slots.free == 2 and not slots.waiters
        return events

    assert asyncio.run(scenario()) == ["late timed out", "first got a slot"]


@pytest.mark.parametrize("seed", range(5))
def test_peer_slots_never_exceed_their_size_or_leak_under_timeouts_and_cancels(seed: int) -> None:
    rng = random.Random(seed)

    async def scenario() -> None:
        slots = AsyncPeerSlots(3, 0.02).get("peer")
        holding = [0]
        peak = [0]

        async def forward() -> None:
            if not slots.take():
                try:
                    await slots.wait(rng.choice([0.001, 0.01, 0.05]), "peer")
                except PoolExhausted:
                    return
            holding[0] += 1
            peak[0] = max(peak[0], holding[0])
            try:
                await asyncio.sleep(rng.choice([0, 0.001, 0.005]))
            finally:
                holding[0] -= 1
                slots.release()

        tasks = [asyncio.ensure_future(forward()) for _ in range(200)]
        for task in rng.sample(tasks, 40):
            await asyncio.sleep(rng.choice([0, 0.001]))
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert slots.free == 3 and not slots.waiters and holding[0] == 0 and peak[0] == 3

    asyncio.run(asyncio.wait_for(scenario(), 20))


def test_sync_slots_bound_each_peer_and_time_out() -> None:
    slots = SyncPeerSlots(2, 0.05)
    held = [slots.acquire("peer"), slots.acquire("peer")]
    assert all(held) and slots.acquire("other") is not None
    started = time.monotonic()
    assert slots.acquire("peer") is None and time.monotonic() - started >= 0.04
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(slots.acquire("peer")))
    waiter.start()
    held[0].release()  # type: ignore[union-attr]
    waiter.join(5)
    assert got and got[0] is not None
