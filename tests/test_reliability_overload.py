"""Overload, limits and data integrity on real clusters (docs/reliability.md).

Each scenario runs on an ASGI stack (FastAPI under uvicorn, the default asyncio transport) and a WSGI stack (Flask under
gunicorn gthread, urllib3 transport): 431/413 before routing, slow clients against a small forwarding pool, client
disconnects by the hundred, 1 GB through a forward with the forwarding node's memory watched, and a byte-exact
integrity matrix. Every loop is bounded in count and time, every address is on 127.0.0.0/8, and every process a
test starts is stopped by its cluster fixture.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
from cluster import Cluster
from figures import Figures, open_fds, rss_mb
from patterns import pattern

from affinity_mw import StaticMembership

ASGI_APP = "tests.apps.asgi_app:app"
WSGI_APP = "tests.apps.wsgi_app:app"
STACKS: dict[str, dict[str, str]] = {
    "asgi-uvicorn": {"server": "uvicorn", "app": ASGI_APP},
    "wsgi-gthread-urllib3": {"server": "gunicorn-gthread", "app": WSGI_APP},
}
KiB, MiB, GiB = 1024, 1024 * 1024, 1024 * 1024 * 1024

pytestmark = pytest.mark.reliability


# ------------------------------------------------------------------------------------------------------- helpers


def pattern_sha(size: int, seed: int) -> str:
    digest = hashlib.sha256()
    for block in pattern(size, seed):
        digest.update(block)
    return digest.hexdigest()


def owner(c: Cluster, key: str) -> str:
    node = StaticMembership(c.urls).ring.owner_of(key)
    assert node is not None
    return node.id


def key_owned_by(c: Cluster, url: str, prefix: str = "k") -> str:
    for i in range(2000):
        if owner(c, f"{prefix}{i}") == url:
            return f"{prefix}{i}"
    raise AssertionError("unreachable")


def served(client: httpx.Client, url: str) -> int:
    return int(client.get(f"{url}/probe/stats").json()["served"].get("__all__", 0))


def make_cluster(tmp: Path, stack: str, n: int, env: dict[str, str]) -> Cluster:
    spec = STACKS[stack]
    return Cluster(tmp, n=n, server=spec["server"], app=spec["app"], env=env)


class Raw:
    """A raw HTTP/1.1 client socket to one node: the test decides exactly when bytes go out, and h11 parses what
    comes back strictly (so a body invented after HEAD/204/304 would break the next response)."""

    def __init__(self, c: Cluster, node: int = 0, timeout: float = 15.0, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect((c.nodes[node].host, c.port))
        self.conn = h11.Connection(h11.CLIENT)

    def send_head(self, method: str, target: str, headers: list[tuple[str, str]]) -> None:
        self.sock.sendall(self.conn.send(h11.Request(method=method, target=target, headers=[("Host", "x"), *headers])))

    def send_data(self, data: bytes) -> None:
        self.sock.sendall(self.conn.send(h11.Data(data=data)))

    def end(self) -> None:
        self.sock.sendall(self.conn.send(h11.EndOfMessage()))

    def _next(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(self.sock.recv(65536))
                continue
            return event

    def response(self) -> h11.Response:
        event = self._next()
        assert isinstance(event, h11.Response), event
        return event

    def body(self, limit: int | None = None) -> bytes:
        """The response body (or its first ``limit`` bytes)."""
        out = bytearray()
        while limit is None or len(out) < limit:
            event = self._next()
            if isinstance(event, h11.EndOfMessage):
                break
            assert isinstance(event, h11.Data), event
            out += event.data
        return bytes(out)

    def next_cycle(self) -> None:
        self.conn.start_next_cycle()

    def close(self, reset: bool = False) -> None:
        if reset:  # RST instead of FIN, as a client killed mid-request would
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def header(response: h11.Response, name: bytes) -> bytes | None:
    return next((v for k, v in response.headers if k == name), None)


class RssSampler(threading.Thread):
    """Samples a process's RSS every 50 ms; ``peak_growth`` is the largest rise over the first sample, in MiB."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.base = rss_mb(pid)
        self.peak = self.base
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.05):
            self.peak = max(self.peak, rss_mb(self.pid))

    def stop(self) -> float:
        self.halt.set()
        self.join(5)
        self.peak = max(self.peak, rss_mb(self.pid))
        return round(self.peak - self.base, 1)


@pytest.fixture()
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=60.0) as c:
        yield c


# --------------------------------------------------------------------------------------- 1. 431 and 413 (6.14)

LIMITS_ENV = {"AFFINITY_MAX_HEADER_BYTES": "8192", "AFFINITY_MAX_BODY": str(1 * MiB)}


@pytest.fixture(scope="module", params=list(STACKS))
def limits_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with make_cluster(tmp_path_factory.mktemp("limits"), request.param, 2, LIMITS_ENV) as c:
        c.stack = request.param  # type: ignore[attr-defined]
        yield c


def test_431_and_413_before_routing_local_and_forwarded(
    limits_cluster: Cluster, client: httpx.Client, figures: Figures
) -> None:
    c = limits_cluster
    a, b = c.urls
    sent = checked = 0
    for where, key in (("local", key_owned_by(c, a)), ("forwarded", key_owned_by(c, b))):
        before = served(client, b)
        # 431: ten 1000-byte headers (each under the servers' per-line limits, together over 8192).
        big = [(f"X-Pad-{i}", "p" * 1000) for i in range(10)]
        r = client.get(f"{a}/probe/{key}/echo", headers=[("X-Tenant", key), *big])
        sent += 1
        assert r.status_code == 431, (where, r.status_code, r.text)
        assert b"AFFINITY_MAX_HEADER_BYTES" in r.content and "x-affinity-served-by" not in r.headers
        # Just under the limit passes (and is served by the owner).
        r = client.get(f"{a}/probe/{key}/echo", headers=[("X-Tenant", key), *big[:7]])
        sent += 1
        assert r.status_code == 200 and r.json()["node"] == owner(c, key)

        # 413, declared: headers and the first 64 KiB of a 2 MiB body; the answer comes without reading the rest.
        raw = Raw(c)
        raw.send_head("POST", f"/probe/{key}/sha256", [("X-Tenant", key), ("Content-Length", str(2 * MiB))])
        raw.send_data(b"x" * 64 * KiB)
        response = raw.response()
        assert response.status_code == 413, (where, response)
        assert b"AFFINITY_MAX_BODY" in raw.body()
        raw.close()
        sent += 1

        # 413, chunked: a body that grows past 1 MiB while streaming (forwarded: the forward is cut off).
        raw = Raw(c)
        raw.send_head("POST", f"/probe/{key}/sha256", [("X-Tenant", key), ("Transfer-Encoding", "chunked")])
        raw.sock.settimeout(0.05)
        status = None
        for _ in range(64):  # up to 4 MiB, stopping as soon as the answer arrives
            try:
                raw.send_data(b"y" * 64 * KiB)
            except OSError:
                break
            try:
                raw.conn.receive_data(raw.sock.recv(65536))
                break
            except TimeoutError:
                continue
        raw.sock.settimeout(15)
        response = raw.response()
        status = response.status_code
        assert status == 413, (where, response)
        assert b"AFFINITY_MAX_BODY" in raw.body()
        raw.close()
        sent += 1

        # Exactly 1 MiB, chunked, passes intact.
        payload = random.randbytes(MiB)
        r = client.post(
            f"{a}/probe/{key}/sha256", content=iter([payload[:300_000], payload[300_000:]]), headers={"X-Tenant": key}
        )
        sent += 1
        assert r.status_code == 200 and r.json()["sha256"] == hashlib.sha256(payload).hexdigest()
        checked += len(payload)
        if where == "forwarded":
            # The owner served the two requests within the limits, and never saw the 431 or the declared 413.
            # 2 within the limits + the chunked one whose forward was cut off + the second stats request itself
            assert served(client, b) - before == 4
    if "asgi" in c.stack:  # type: ignore[attr-defined]
        # The entry node never failed: its 413s and 431s are answers, not app errors. The owner's app sees the
        # forward that was cut off mid-body as a client disconnect, exactly as if a client had aborted its upload.
        assert "Traceback" not in c.nodes[0].log.read_text()
        errors = [line for line in c.nodes[1].log.read_text().splitlines() if line.startswith("starlette.")]
        assert set(errors) <= {"starlette.requests.ClientDisconnect"}, errors
    figures.record(
        "limits: 431/413 before routing",
        stack=c.stack,  # type: ignore[attr-defined]
        sent=sent,
        failed=0,
        bytes_checked=checked,
        notes="431 at 8192 header bytes, 413 at 1 MiB declared and chunked; local and forwarded keys alike",
    )


# ---------------------------------------------------------------------------------- 2. slow clients, small pool

POOL_ENV = {"AFFINITY_POOL_SIZE": "2", "AFFINITY_POOL_TIMEOUT": "1.0"}


@pytest.fixture(scope="module", params=list(STACKS))
def pool_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with make_cluster(tmp_path_factory.mktemp("pool"), request.param, 3, POOL_ENV) as c:
        c.stack = request.param  # type: ignore[attr-defined]
        yield c


def timed_get(url: str, key: str) -> tuple[int, float, str | None]:
    start = time.monotonic()
    with httpx.Client(trust_env=False, timeout=20.0) as cl:
        r = cl.get(url, headers={"X-Tenant": key})
    return r.status_code, time.monotonic() - start, r.headers.get("retry-after")


def check_pool_held(c: Cluster, keys: dict[str, str]) -> dict[str, Any]:
    """With both slots to B held by slow clients: other peers and local keys are served, B's keys get a fast 503
    with Retry-After, and ten at once do not queue."""
    a = c.urls[0]
    code, took, _ = timed_get(f"{a}/probe/{keys['c']}/echo", keys["c"])
    assert code == 200 and took < 3, ("another peer must be served", code, took)
    code, took, _ = timed_get(f"{a}/probe/{keys['a']}/echo", keys["a"])
    assert code == 200 and took < 3, ("a local key must be served", code, took)
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda _: timed_get(f"{a}/probe/{keys['b']}/echo", keys["b"]), range(10)))
    for code, took, retry_after in results:
        assert code == 503 and retry_after == "1", (code, retry_after)
        assert 0.8 < took < 1.0 + 3.0, f"503 after {took:.2f}s, AFFINITY_POOL_TIMEOUT is 1.0"
    return {"503": len(results), "max_wait": max(t for _, t, _ in results)}


def wait_served(url: str, key: str, deadline: float = 15.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < deadline:
        code, _, _ = timed_get(url, key)
        if code == 200:
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"{url} still not served {deadline}s after the slow clients left")


def test_slow_upload_holds_only_its_own_slots(pool_cluster: Cluster, figures: Figures) -> None:
    c = pool_cluster
    a, b, cc = c.urls
    keys = {"a": key_owned_by(c, a), "b": key_owned_by(c, b), "c": key_owned_by(c, cc)}
    size = 256 * KiB
    payloads = [random.randbytes(size) for _ in range(2)]
    slow = [Raw(c, timeout=30) for _ in payloads]
    stop = threading.Event()
    for raw in slow:
        raw.send_head("POST", f"/probe/{keys['b']}/sha256", [("X-Tenant", keys["b"]), ("Content-Length", str(size))])
    sent = [0, 0]

    def trickle() -> None:  # one byte per client every 100 ms: slow, never silent
        while not stop.wait(0.1):
            for i, raw in enumerate(slow):
                if sent[i] < size - 1:
                    raw.send_data(payloads[i][sent[i] : sent[i] + 1])
                    sent[i] += 1

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        time.sleep(1.0)  # both forwards have started and hold their slot
        held = check_pool_held(c, keys)
    finally:
        stop.set()
        trickler.join(5)
    checked = 0
    for raw, payload, done in zip(slow, payloads, sent, strict=True):
        raw.send_data(payload[done:])
        raw.end()
        response = raw.response()
        body = raw.body()
        raw.close()
        assert response.status_code == 200, body
        assert hashlib.sha256(payload).hexdigest().encode() in body
        checked += size
    recovered = wait_served(f"{a}/probe/{keys['b']}/echo", keys["b"])
    figures.record(
        "slow client upload, pool 2",
        stack=c.stack,  # type: ignore[attr-defined]
        sent=2 + 2 + held["503"] + 1,
        failed=0,
        bytes_checked=checked,
        notes=f"10 requests to the held peer: 503 + Retry-After in <= {held['max_wait']:.2f}s (pool timeout 1 s); "
        f"other peer and local key served; owner reachable again {recovered:.2f}s after the uploads finished",
    )


def test_slow_download_holds_only_its_own_slots(pool_cluster: Cluster, figures: Figures) -> None:
    c = pool_cluster
    a, b, cc = c.urls
    keys = {"a": key_owned_by(c, a), "b": key_owned_by(c, b), "c": key_owned_by(c, cc)}
    slow = []
    for seed in range(2):
        raw = Raw(c, timeout=30, rcvbuf=64 * KiB)
        raw.send_head("GET", f"/probe/{keys['b']}/big-body?size={256 * MiB}&seed={seed}", [("X-Tenant", keys["b"])])
        slow.append(raw)
    checked = 0
    try:
        for raw in slow:
            assert raw.response().status_code == 200
            checked += len(raw.body(limit=64 * KiB))  # read a little, then stall
        time.sleep(1.5)  # buffers fill up; the relays now wait on the stalled clients
        held = check_pool_held(c, keys)
    finally:
        for raw in slow:
            raw.close()
    recovered = wait_served(f"{a}/probe/{keys['b']}/echo", keys["b"])
    figures.record(
        "slow client download, pool 2",
        stack=c.stack,  # type: ignore[attr-defined]
        sent=2 + 2 + held["503"] + 1,
        failed=0,
        bytes_checked=checked,
        notes=f"10 requests to the held peer: 503 + Retry-After in <= {held['max_wait']:.2f}s (pool timeout 1 s); "
        f"owner reachable again {recovered:.2f}s after the stalled clients closed",
    )


# ------------------------------------------------------------------------------------------ 3. client disconnects

DISCONNECT_ENV = {"AFFINITY_POOL_SIZE": "4", "AFFINITY_POOL_TIMEOUT": "2.0"}


@pytest.fixture(scope="module", params=list(STACKS))
def disconnect_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with make_cluster(tmp_path_factory.mktemp("disconnect"), request.param, 2, DISCONNECT_ENV) as c:
        c.stack = request.param  # type: ignore[attr-defined]
        yield c


def settled_fds(pid: int, target: int, deadline: float = 15.0) -> int:
    """The fd count once it is back within ``target`` (or the last count at the deadline)."""
    end = time.monotonic() + deadline
    fds = open_fds(pid)
    while fds > target and time.monotonic() < end:
        time.sleep(0.25)
        fds = open_fds(pid)
    return fds


@pytest.mark.parametrize("count", [200, pytest.param(1000, marks=pytest.mark.slow)], ids=["200", "1000"])
def test_client_disconnects_leak_nothing(
    disconnect_cluster: Cluster, client: httpx.Client, figures: Figures, count: int
) -> None:
    c = disconnect_cluster
    a, b = c.urls
    key = key_owned_by(c, b)
    pid = c.nodes[0].worker_pid()
    for _ in range(8):
        assert client.get(f"{a}/probe/{key}/echo", headers={"X-Tenant": key}).status_code == 200
    time.sleep(2.0)  # idle pooled connections expire (AFFINITY_KEEPALIVE 1.5 s): a quiet baseline
    baseline = open_fds(pid)
    started = time.monotonic()

    def one(i: int) -> str:
        raw = Raw(c, timeout=10)
        try:
            if i % 2 == 0:  # before the response body: send the request and leave at once
                target = f"/probe/{key}/stream?chunks=2&pause=0.05" if i % 4 == 0 else f"/probe/{key}/echo"
                raw.send_head("GET", target, [("X-Tenant", key)])
                raw.close(reset=i % 8 == 0)
                return "before"
            # during the body: read the headers and part of a 4 MiB streamed body, then leave
            raw.send_head("GET", f"/probe/{key}/big-body?size={4 * MiB}&mode=chunked&seed={i}", [("X-Tenant", key)])
            response = raw.response()
            if response.status_code != 200:
                return f"status {response.status_code}"
            raw.body(limit=1 + (i % 7) * 20 * KiB)
            raw.close(reset=i % 3 == 0)
            return "during"
        except OSError as exc:
            raw.close()
            return f"error {type(exc).__name__}"

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(one, range(count), timeout=240))
    took = time.monotonic() - started
    tally = {k: outcomes.count(k) for k in set(outcomes)}
    peak_during = open_fds(pid)

    # Afterwards the forwarding node serves normally: sequential and 2x-pool concurrent requests, no 503.
    time.sleep(0.5)
    codes = [client.get(f"{a}/probe/{key}/echo", headers={"X-Tenant": key}).status_code for _ in range(20)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        codes += list(pool.map(lambda _: timed_get(f"{a}/probe/{key}/echo", key)[0], range(8)))
    payload = random.randbytes(MiB)
    r = client.post(f"{a}/probe/{key}/sha256", content=payload, headers={"X-Tenant": key})
    assert r.json()["sha256"] == hashlib.sha256(payload).hexdigest()
    fds = settled_fds(pid, baseline + 6)
    figures.record(
        f"{count} client disconnects",
        stack=c.stack,  # type: ignore[attr-defined]
        sent=count + len(codes) + 1,
        failed=sum(code != 200 for code in codes),
        bytes_checked=len(payload),
        notes=f"{tally} in {took:.1f}s; forwarding node fds: baseline {baseline}, right after {peak_during}, "
        f"settled {fds}; afterwards {codes.count(200)}/{len(codes)} served, {codes.count(503)} x 503",
    )
    assert tally.get("before", 0) == count // 2 and tally.get("during", 0) == count // 2, tally
    assert codes == [200] * len(codes), f"after the disconnects: {codes}"
    assert fds <= baseline + 6, f"fds: baseline {baseline}, after {fds}"


# ---------------------------------------------------------------------------------- 4 and 5. data integrity


@pytest.fixture(scope="module", params=list(STACKS))
def data_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with make_cluster(tmp_path_factory.mktemp("data"), request.param, 2, {}) as c:
        c.stack = request.param  # type: ignore[attr-defined]
        yield c


@pytest.mark.slow
def test_1gb_upload_and_download_through_a_forward_flat_memory(data_cluster: Cluster, figures: Figures) -> None:
    c = data_cluster
    a, b = c.urls
    key = key_owned_by(c, b)
    size = GiB
    sampler = RssSampler(c.nodes[0].worker_pid())
    sampler.start()
    started = time.monotonic()
    with httpx.Client(trust_env=False, timeout=httpx.Timeout(120.0)) as cl:
        sent_digest = hashlib.sha256()

        def upload() -> Iterator[bytes]:
            for block in pattern(size, 11):
                sent_digest.update(block)
                yield block

        r = cl.post(
            f"{a}/probe/{key}/sha256",
            content=upload(),
            headers={"X-Tenant": key, "Content-Length": str(size)},
        )
        up_took = time.monotonic() - started
        assert r.status_code == 200, r.text
        assert r.json() == {"node": b, "sha256": sent_digest.hexdigest(), "size": size}
        got = hashlib.sha256()
        received = 0
        mid = time.monotonic()
        url = f"{a}/probe/{key}/big-body?size={size}&seed=12&mode=fixed"
        with cl.stream("GET", url, headers={"X-Tenant": key}) as resp:
            assert resp.status_code == 200 and resp.headers["x-affinity-served-by"] == b
            for chunk in resp.iter_raw():
                got.update(chunk)
                received += len(chunk)
        down_took = time.monotonic() - mid
    growth = sampler.stop()
    assert received == size
    assert got.hexdigest() == pattern_sha(size, 12)
    figures.record(
        "1 GB upload + 1 GB download through a forward",
        stack=c.stack,  # type: ignore[attr-defined]
        sent=2,
        failed=0,
        bytes_checked=2 * size,
        peak_rss_mb=growth,
        notes=f"upload {size / MiB / up_took:.0f} MiB/s, download {size / MiB / down_took:.0f} MiB/s; "
        f"forwarding node RSS {sampler.base:.0f} MiB at start, peak growth {growth} MiB",
    )
    assert growth < 100, f"forwarding node RSS grew {growth} MiB"


MATRIX_SIZES = [0, 1, 64 * KiB, MiB, 10 * MiB, pytest.param(100 * MiB, marks=pytest.mark.slow)]


@pytest.mark.parametrize("size", MATRIX_SIZES, ids=lambda s: f"{s}B")
def test_integrity_matrix_request_and_response_bodies(
    data_cluster: Cluster, client: httpx.Client, figures: Figures, size: int
) -> None:
    """Random binary request and response bodies, fixed length and chunked, through one forward: byte-exact, and
    framed as the owner framed them (a fixed-length response keeps its Content-Length)."""
    c = data_cluster
    a, b = c.urls
    key = key_owned_by(c, b)
    checked = sent = 0
    payload = random.randbytes(size)
    expected = hashlib.sha256(payload).hexdigest()
    for framing in ("fixed", "chunked"):
        if framing == "fixed":
            content: Any = payload
        else:
            content = iter([payload[i : i + 300_000] for i in range(0, size, 300_000)])
        r = client.post(f"{a}/probe/{key}/sha256", content=content, headers={"X-Tenant": key})
        sent += 1
        assert r.status_code == 200, r.text
        assert r.json() == {"node": b, "sha256": expected, "size": size}, framing
        checked += size
        seed = size % 1000 + (framing == "chunked")
        url = f"{a}/probe/{key}/big-body?size={size}&seed={seed}&mode={framing}"
        digest = hashlib.sha256()
        got = 0
        with client.stream("GET", url, headers={"X-Tenant": key}) as resp:
            assert resp.status_code == 200 and resp.headers["x-affinity-served-by"] == b
            if framing == "fixed":
                assert resp.headers["content-length"] == str(size)
            for chunk in resp.iter_raw():
                digest.update(chunk)
                got += len(chunk)
        sent += 1
        assert got == size and digest.hexdigest() == pattern_sha(size, seed), framing
        checked += size
    figures.record(
        f"integrity matrix {size} B",
        stack=c.stack,  # type: ignore[attr-defined]
        sent=sent,
        failed=0,
        bytes_checked=checked,
        notes="request and response, fixed length and chunked, sha256 equal",
    )


@pytest.mark.parametrize(("encoding", "mode"), [("br", "fixed"), ("br", "chunked"), ("gzip", "chunked")])
def test_content_encoded_response_bytes_pass_untouched(
    data_cluster: Cluster, client: httpx.Client, figures: Figures, encoding: str, mode: str
) -> None:
    """Bytes labelled br (or gzip) that are no valid br/gzip at all: a proxy that decoded, or re-encoded, would
    fail or change them; ours passes them byte for byte with the label."""
    c = data_cluster
    a, b = c.urls
    key = key_owned_by(c, b)
    size = 200 * KiB + 3
    url = f"{a}/probe/{key}/big-body?size={size}&seed=5&mode={mode}&encoding={encoding}"
    with client.stream("GET", url, headers={"X-Tenant": key, "Accept-Encoding": "gzip, br"}) as resp:
        raw = b"".join(resp.iter_raw())
        assert resp.status_code == 200 and resp.headers["x-affinity-served-by"] == b
        assert resp.headers["content-encoding"] == encoding
        if mode == "fixed":
            assert resp.headers["content-length"] == str(size)
    assert hashlib.sha256(raw).hexdigest() == pattern_sha(size, 5)
    figures.record(
        f"Content-Encoding {encoding} ({mode}) untouched",
        stack=c.stack,  # type: ignore[attr-defined]
        sent=1,
        bytes_checked=size,
        notes="arbitrary bytes labelled with the encoding arrive identical, label kept",
    )


def test_head_204_304_invent_no_body_on_a_kept_alive_connection(data_cluster: Cluster, figures: Figures) -> None:
    """On one kept-alive connection, HEAD (of a fixed-length and of a chunked body), 204 and 304 through a forward,
    then a GET: a single byte of invented body would be parsed as the start of the next response and fail."""
    c = data_cluster
    key = key_owned_by(c, c.urls[1])
    raw = Raw(c)
    steps = [
        ("HEAD", f"/probe/{key}/big-body?size=1000&mode=fixed", 200),
        ("HEAD", f"/probe/{key}/big-body?size=1000&mode=chunked", 200),
        ("GET", f"/probe/{key}/status/204", 204),
        ("GET", f"/probe/{key}/status/304", 304),
        ("GET", f"/probe/{key}/big-body?size=5&seed=3", 200),
    ]
    for method, target, status in steps:
        raw.send_head(method, target, [("X-Tenant", key)])
        raw.end()
        response = raw.response()
        assert response.status_code == status, (method, target, response)
        assert header(response, b"x-affinity-served-by") == c.urls[1].encode()
        body = raw.body()
        if method == "HEAD" and "fixed" in target:
            assert header(response, b"content-length") == b"1000"
        if status in (204, 304):
            assert header(response, b"transfer-encoding") is None
        assert body == (b"".join(pattern(5, 3)) if target.endswith("seed=3") else b"")
        raw.next_cycle()
    raw.close()
    figures.record(
        "HEAD/204/304 invent no body",
        stack=c.stack,  # type: ignore[attr-defined]
        sent=len(steps),
        notes="one kept-alive connection, strict h11 parsing, a GET after them parses cleanly",
    )


def test_repeated_same_name_set_cookie_lines_kept(
    data_cluster: Cluster, client: httpx.Client, figures: Figures
) -> None:
    c = data_cluster
    key = key_owned_by(c, c.urls[1])
    r = client.get(f"{c.urls[0]}/probe/{key}/big-cookies", headers={"X-Tenant": key})
    assert r.headers["x-affinity-served-by"] == c.urls[1]
    assert r.headers.get_list("set-cookie") == [
        "sid=1; Path=/a; HttpOnly",
        "sid=2; Path=/b; Secure; SameSite=Strict",
        "pref=x; Expires=Wed, 21 Oct 2035 07:28:00 GMT; Path=/",
    ]
    figures.record(
        "repeated Set-Cookie of one name",
        stack=c.stack,  # type: ignore[attr-defined]
        sent=1,
        notes="two sid cookies on different paths and an Expires with a comma: three lines, in order, verbatim",
    )
