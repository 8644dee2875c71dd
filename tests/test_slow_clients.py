"""Slow clients cannot hold a peer's slots (``AFFINITY_MIN_RATE``), on a real 2-node ASGI cluster.

Node A forwards to node B with two slots (``AFFINITY_POOL_SIZE=2``). Two clients take both: one pair trickles its
uploads (10 bytes a second), the other stops reading its downloads. With a minimum rate of 1,000 B/s after 1 s of
the client's own time, each is cut off once its budget is spent (the uploads answered 408, the downloads
aborted) and B's slots are free again: another client's request to B is served, not refused with 503.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from cluster import Cluster
from figures import Figures
from test_reliability_overload import KiB, MiB, Raw, key_owned_by

ENV = {
    "AFFINITY_POOL_SIZE": "2",
    "AFFINITY_POOL_TIMEOUT": "1.0",
    "AFFINITY_MIN_RATE": "1000",
    "AFFINITY_MIN_RATE_GRACE": "1.0",
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("slow"), n=2, env=ENV) as c:
        yield c


def served_within(url: str, key: str, seconds: float) -> float | None:
    """How long until a request for ``key`` is answered 200 (each try waits at most the pool timeout)."""
    start = time.monotonic()
    with httpx.Client(trust_env=False, timeout=10.0) as client:
        while time.monotonic() - start < seconds:
            if client.get(f"{url}/probe/{key}/echo", headers={"X-Tenant": key}).status_code == 200:
                return time.monotonic() - start
            time.sleep(0.1)
    return None


def both_slots_free_within(url: str, key: str, seconds: float) -> float | None:
    """How long until two requests for ``key`` that each hold a slot for a while are both answered 200 at once:
    with two slots, that is when neither is still held by a stalled client."""
    start = time.monotonic()
    with httpx.Client(trust_env=False, timeout=10.0) as client:

        def held(_: int) -> int:
            return client.get(f"{url}/probe/{key}/stream?chunks=2&pause=0.3", headers={"X-Tenant": key}).status_code

        while time.monotonic() - start < seconds:
            with ThreadPoolExecutor(2) as pool:
                codes = list(pool.map(held, range(2)))
            if codes == [200, 200]:
                return time.monotonic() - start
            time.sleep(0.1)
    return None


@pytest.mark.reliability
def test_trickled_uploads_are_cut_off_and_free_the_peer(cluster: Cluster, figures: Figures) -> None:
    a, b = cluster.urls
    key = key_owned_by(cluster, b)
    slow = [Raw(cluster, timeout=15) for _ in range(2)]
    for raw in slow:
        raw.send_head("POST", f"/probe/{key}/sha256", [("X-Tenant", key), ("Content-Length", str(256 * KiB))])
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.1):
            for raw in slow:
                with contextlib.suppress(OSError):  # cut off: the node closed the connection after its 408
                    raw.send_data(b"x")

    trickler = threading.Thread(target=trickle, daemon=True)
    started = time.monotonic()
    trickler.start()
    try:
        time.sleep(0.3)  # both forwards have begun and hold B's two slots
        statuses = [raw.response().status_code for raw in slow]
        cut_after = time.monotonic() - started
        freed = served_within(a, key, 5.0)
    finally:
        stop.set()
        trickler.join(5)
        for raw in slow:
            raw.close()
    figures.record(
        "slow-loris uploads against 2 slots, AFFINITY_MIN_RATE 1000 B/s, grace 1 s",
        stack="asgi-uvicorn",
        sent=3,
        failed=sum(s != 408 for s in statuses) + (freed is None),
        notes=f"uploads trickled at 10 B/s answered {statuses} after {cut_after:.2f}s; another client's request "
        f"to the peer served after {freed if freed is None else round(freed, 2)}s",
    )
    assert statuses == [408, 408]
    assert freed is not None and cut_after < 5


@pytest.mark.reliability
def test_stalled_downloads_free_the_peer(cluster: Cluster, figures: Figures) -> None:
    a, b = cluster.urls
    key = key_owned_by(cluster, b)
    slow = []
    for seed in range(2):
        raw = Raw(cluster, timeout=15, rcvbuf=64 * KiB)
        raw.send_head("GET", f"/probe/{key}/big-body?size={256 * MiB}&seed={seed}", [("X-Tenant", key)])
        slow.append(raw)
    try:
        for raw in slow:
            assert raw.response().status_code == 200
            raw.body(limit=64 * KiB)  # read a little, then stop reading
        started = time.monotonic()
        freed = served_within(a, key, 8.0)
        # Reading a stalled download again would un-stall it: first wait until both have given their slots back.
        both_freed = both_slots_free_within(a, key, 8.0)
        aborted = 0
        for raw in slow:
            try:
                raw.body(limit=16 * MiB)  # what was buffered, then the aborted connection ends it short
            except Exception:  # h11 or the socket: either way the download did not end as if complete
                aborted += 1
    finally:
        for raw in slow:
            raw.close()
    figures.record(
        "stalled downloads against 2 slots, AFFINITY_MIN_RATE 1000 B/s, grace 1 s",
        stack="asgi-uvicorn",
        sent=3,
        failed=(freed is None) + (2 - aborted),
        notes=f"two 256 MiB downloads read 64 KiB then stalled; another client's request to the peer served after "
        f"{freed if freed is None else round(freed, 2)}s; stalled downloads aborted: {aborted}/2",
    )
    assert freed is not None and freed < time.monotonic() - started + 1
    assert both_freed is not None
    assert aborted == 2
