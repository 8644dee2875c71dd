"""The minimum transfer rate of a forward's bodies (``affinity_mw._pace``): only the client's time counts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from affinity_mw._pace import TICK, DownloadPace, SlowClient, UploadPace, _paced_upload


def run(coro: object) -> None:
    asyncio.run(asyncio.wait_for(coro, 10))  # type: ignore[arg-type]


async def trickle(size: int, pause: float, count: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        await asyncio.sleep(pause)
        yield b"x" * size


async def collect(body: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in body])


def test_an_upload_that_stalls_is_cut_off_after_the_grace_and_the_task_is_not_left_cancelled() -> None:
    async def stalled() -> AsyncIterator[bytes]:
        yield b"first"
        await asyncio.Event().wait()  # the client never sends the rest
        yield b"never"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(SlowClient):
            await collect(_paced_upload(stalled(), UploadPace(0.2, 1000.0)))
        assert 0.15 < loop.time() - started < 2
        await asyncio.sleep(0)  # a task still marked as cancelled would be cancelled here
        task = asyncio.current_task()
        assert task is not None and not getattr(task, "cancelling", lambda: 0)()

    run(main())


def test_a_trickling_upload_is_cut_off_and_a_steady_one_is_not() -> None:
    async def main() -> None:
        # 1 byte per 50 ms against 100 B/s after 0.3 s: the budget grows 10 ms per byte, the client uses 50 ms.
        with pytest.raises(SlowClient):
            await collect(_paced_upload(trickle(1, 0.05, 100), UploadPace(0.3, 100.0)))
        # 100 bytes per 50 ms: 2,000 B/s against the same 100 B/s.
        assert len(await collect(_paced_upload(trickle(100, 0.05, 12), UploadPace(0.3, 100.0)))) == 1200

    run(main())


class FakeSlot:
    def __init__(self) -> None:
        self.released = 0

    def release(self) -> None:
        self.released += 1


class FakeResponse:
    def __init__(self) -> None:
        self.closed: list[bool] = []

    async def aclose(self, *, reusable: bool) -> None:
        self.closed.append(reusable)


def test_the_peers_time_never_counts_against_the_client() -> None:
    """A download whose peer is slow (a quiet event stream) but whose client takes each chunk at once."""

    async def main() -> None:
        slot, response = FakeSlot(), FakeResponse()
        chunks = paced_slot = DownloadPace(0.1, 1000.0, response, trickle(1, 0.15, 4), 0, slot)
        assert await collect(chunks) == b"xxxx"
        await asyncio.sleep(0.3)
        assert (slot.released, response.closed) == (0, [])
        paced_slot.release()
        paced_slot.release()
        assert slot.released == 1

    run(main())


def test_a_client_that_stops_reading_frees_the_peer_at_once() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        slot, response = FakeSlot(), FakeResponse()
        chunks = paced_slot = DownloadPace(0.2, 1000.0, response, trickle(10, 0, 100), 10, slot)
        started = loop.time()
        assert await chunks.__anext__() == b"x" * 10
        while not slot.released and loop.time() - started < 2:
            await asyncio.sleep(0.01)  # the client does not take the next chunk
        assert 0.15 < loop.time() - started < 0.2 + TICK + 0.3
        await asyncio.sleep(0)
        assert (slot.released, response.closed) == (1, [False])
        with pytest.raises(SlowClient):
            await chunks.__anext__()
        paced_slot.release()  # the relay's own release, later: the slot was released once
        assert slot.released == 1

    run(main())
