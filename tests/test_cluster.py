"""Real 3-node clusters on 127.0.0.1-3: locality, streaming, integrity and safety, for every stack users run.

Each stack is the same suite: FastAPI under uvicorn (aiohttp and httpx transports), Flask under gunicorn
(sync and gthread workers; urllib3 and httpx.Client transports) and under Werkzeug's development server, and a
mixed cluster where WSGI and ASGI nodes
forward to each other with the same marker.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster import SECRET, Cluster, kill

from affinity_mw import HopSigner, StaticMembership, hash_key

ASGI_APP = "tests.apps.asgi_app:app"
WSGI_APP = "tests.apps.wsgi_app:app"
STACKS: dict[str, dict[str, Any]] = {
    "asgi-asyncio": {"server": "uvicorn", "app": ASGI_APP},
    "asgi-aiohttp": {"server": "uvicorn", "app": ASGI_APP, "env": {"AFFINITY_TRANSPORT": "aiohttp"}},
    "asgi-httpx": {"server": "uvicorn", "app": ASGI_APP, "env": {"AFFINITY_TRANSPORT": "httpx"}},
    "asgi-httptools-uvloop": {"server": "uvicorn-httptools", "app": ASGI_APP},
    "wsgi-sync-urllib3": {"server": "gunicorn-sync", "app": WSGI_APP},
    "wsgi-gthread-urllib3": {"server": "gunicorn-gthread", "app": WSGI_APP},
    "wsgi-gthread-httpx": {"server": "gunicorn-gthread", "app": WSGI_APP, "env": {"AFFINITY_TRANSPORT": "httpx"}},
    "wsgi-werkzeug-dev": {"server": "werkzeug", "app": WSGI_APP},
    "mixed": {
        "server": [f"gunicorn-gthread={WSGI_APP}", f"uvicorn={ASGI_APP}", f"gunicorn-sync={WSGI_APP}"],
        "app": ASGI_APP,
    },
}


def make_cluster(tmp: Path, stack: str, **kwargs: Any) -> Cluster:
    spec = STACKS[stack]
    env = {**spec.get("env", {}), **kwargs.pop("env", {})}
    return Cluster(tmp, server=spec["server"], app=spec["app"], env=env, **kwargs)


@pytest.fixture(scope="module", params=list(STACKS))
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with make_cluster(tmp_path_factory.mktemp(request.param), request.param) as c:
        yield c


@pytest.fixture(params=["asgi-aiohttp", "wsgi-gthread-urllib3"])
def stack(request: pytest.FixtureRequest) -> str:
    """For tests that build their own cluster: one ASGI and one WSGI stack."""
    return str(request.param)


@pytest.fixture()
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=30.0) as c:
        yield c


def owner(cluster: Cluster, key: str) -> str:
    node = StaticMembership(cluster.urls).ring.owner_of(key)
    assert node is not None
    return node.id


def tenant_not_owned_by(cluster: Cluster, url: str, prefix: str = "t") -> str:
    for i in range(1000):
        if owner(cluster, f"{prefix}{i}") != url:
            return f"{prefix}{i}"
    raise AssertionError("unreachable")


def test_every_tenant_meets_one_memory(cluster: Cluster, client: httpx.Client) -> None:
    rng = random.Random(7)
    tenants = [f"tenant-{i}" for i in range(50)]
    sent: Counter[str] = Counter()
    hops = Counter[int]()
    for _ in range(4):
        for tenant in tenants:
            url = rng.choice(cluster.urls)
            r = client.post(f"{url}/tenants/{tenant}/hits", headers={"X-Tenant": tenant})
            assert r.status_code == 200, r.text
            sent[tenant] += 1
            body = r.json()
            assert body["node"] == owner(cluster, tenant)
            assert r.headers["x-affinity-served-by"] == body["node"]
            # The counter only goes up by one per request: every request met the same in-memory counter.
            assert body["count"] == sent[tenant]
            hops[body["hops"]] += 1
            assert body["hops"] == (0 if url == body["node"] else 1)
    for tenant in tenants:
        r = client.get(f"{cluster.urls[0]}/tenants/{tenant}/hits", headers={"X-Tenant": tenant})
        assert r.json()["count"] == 4
    # All three nodes own some tenants, and requests both stayed local and were forwarded.
    assert len({owner(cluster, t) for t in tenants}) == 3
    assert hops[0] > 0 and hops[1] > 0


def test_20mb_post_forwarded_intact(cluster: Cluster, client: httpx.Client) -> None:
    tenant = tenant_not_owned_by(cluster, cluster.urls[0])
    payload = os.urandom(20 * 1024 * 1024)
    r = client.post(f"{cluster.urls[0]}/probe/{tenant}/sha256", content=payload, headers={"X-Tenant": tenant})
    assert r.status_code == 200
    assert r.json() == {
        "node": owner(cluster, tenant),
        "sha256": hashlib.sha256(payload).hexdigest(),
        "size": len(payload),
    }


def test_chunked_post_forwarded_intact(cluster: Cluster, client: httpx.Client) -> None:
    tenant = tenant_not_owned_by(cluster, cluster.urls[0])
    parts = [os.urandom(100_000) for _ in range(30)]
    r = client.post(f"{cluster.urls[0]}/probe/{tenant}/sha256", content=iter(parts), headers={"X-Tenant": tenant})
    assert r.json()["sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()
    assert r.json()["node"] == owner(cluster, tenant)


def test_streamed_response_arrives_chunk_by_chunk(cluster: Cluster, client: httpx.Client) -> None:
    tenant = tenant_not_owned_by(cluster, cluster.urls[0])
    arrivals: list[float] = []
    chunks: list[bytes] = []
    start = time.monotonic()
    url = f"{cluster.urls[0]}/probe/{tenant}/stream?chunks=5&pause=0.4"
    with client.stream("GET", url, headers={"X-Tenant": tenant}) as r:
        assert r.headers["x-affinity-served-by"] == owner(cluster, tenant)
        for chunk in r.iter_raw():
            arrivals.append(time.monotonic() - start)
            chunks.append(chunk)
    assert b"".join(chunks) == b"".join(f"chunk {i}\n".encode() for i in range(5))
    # The peer pauses 0.4 s after each chunk (2.0 s in all): a buffering proxy would deliver everything at the
    # end, a streaming one delivers the first chunk long before the last.
    assert len(chunks) >= 4
    assert arrivals[-1] - arrivals[0] > 1.0


def test_large_streamed_download(cluster: Cluster, client: httpx.Client) -> None:
    tenant = tenant_not_owned_by(cluster, cluster.urls[1])
    size = 30 * 1024 * 1024 + 17
    digest = hashlib.sha256()
    got = 0
    with client.stream(
        "GET", f"{cluster.urls[1]}/probe/{tenant}/download?size={size}", headers={"X-Tenant": tenant}
    ) as r:
        for chunk in r.iter_raw():
            digest.update(chunk)
            got += len(chunk)
    block = bytes(range(256)) * 256
    expected = hashlib.sha256()
    left = size
    while left > 0:
        part = block[: min(left, len(block))]
        expected.update(part)
        left -= len(part)
    assert got == size
    assert digest.hexdigest() == expected.hexdigest()


def test_repeated_set_cookie_survive(cluster: Cluster, client: httpx.Client) -> None:
    tenant = tenant_not_owned_by(cluster, cluster.urls[0])
    r = client.get(f"{cluster.urls[0]}/probe/{tenant}/cookies?who=u1", headers={"X-Tenant": tenant})
    assert r.headers["x-affinity-served-by"] != cluster.urls[0]
    cookies = r.headers.get_list("set-cookie")
    assert len(cookies) == 3
    assert [c.split(";")[0] for c in cookies] == ["a_u1=value-a-u1", "b_u1=value-b-u1", "c_u1=value-c-u1"]


def test_set_cookie_never_leaks_to_another_client(cluster: Cluster) -> None:
    tenant = tenant_not_owned_by(cluster, cluster.urls[0])
    entry = cluster.urls[0]
    with httpx.Client(trust_env=False) as alice, httpx.Client(trust_env=False) as bob:
        r = alice.get(f"{entry}/probe/{tenant}/cookies?who=alice", headers={"X-Tenant": tenant})
        assert len(r.headers.get_list("set-cookie")) == 3
        for _ in range(3):
            r = bob.get(f"{entry}/probe/{tenant}/echo", headers={"X-Tenant": tenant})
            seen = dict((k, v) for k, v in r.json()["headers"] if k == "cookie")
            assert seen == {}, f"alice's cookie reached bob's forwarded request: {seen}"
            assert r.json()["node"] != entry


def test_gzip_response_byte_identical(cluster: Cluster, client: httpx.Client) -> None:
    tenant = tenant_not_owned_by(cluster, cluster.urls[2])
    expected = gzip.compress(b"affinity " * 5000, mtime=0)
    with client.stream(
        "GET",
        f"{cluster.urls[2]}/probe/{tenant}/gzip",
        headers={"X-Tenant": tenant, "Accept-Encoding": "gzip"},
    ) as r:
        raw = b"".join(r.iter_raw())
        assert r.headers["content-encoding"] == "gzip"
        assert r.headers["x-affinity-served-by"] == owner(cluster, tenant)
        assert int(r.headers["content-length"]) == len(expected)
    assert raw == expected


def test_client_without_accept_encoding_gets_no_injected_headers(cluster: Cluster) -> None:
    tenant = tenant_not_owned_by(cluster, cluster.urls[0])
    # A raw socket request: no Accept, Accept-Encoding or User-Agent; the owner must see none either.
    import json
    import socket

    s = socket.create_connection((cluster.nodes[0].host, cluster.port), timeout=10)
    s.sendall(
        f"GET /probe/{tenant}/echo HTTP/1.1\r\nHost: app.example\r\nX-Tenant: {tenant}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    echoed = json.loads(body)
    names = [k for k, _ in echoed["headers"]]
    assert echoed["node"] == owner(cluster, tenant)
    for injected in ("accept", "accept-encoding", "user-agent", "cookie", "content-type"):
        assert injected not in names
    # The owner's app sees the request as the first node saw it: original Host, client and scheme.
    assert dict(echoed["headers"])["host"] == "app.example"
    assert "x-forwarded-for" not in names and "x-forwarded-proto" not in names
    assert echoed["client"] == "127.0.0.1"
    assert echoed["decision"]["hops"] == 1
    assert echoed["decision"]["sender"] == cluster.urls[0]


def test_hop_by_hop_headers_dropped_and_marker_kept(cluster: Cluster, client: httpx.Client) -> None:
    tenant = tenant_not_owned_by(cluster, cluster.urls[0])
    r = client.get(
        f"{cluster.urls[0]}/probe/{tenant}/echo",
        headers={
            "X-Tenant": tenant,
            "Connection": "keep-alive, X-Affinity-Hop, X-Secret-Hop",
            "X-Secret-Hop": "seen as it would be locally",
            "Keep-Alive": "timeout=5",
            "X-Forwarded-For": "203.0.113.9",
        },
    )
    echoed = r.json()
    names = {k for k, _ in echoed["headers"]}
    assert echoed["node"] == owner(cluster, tenant)
    # The marker survived "Connection: X-Affinity-Hop" (the owner served it as a hop, not a second forward).
    assert echoed["decision"]["hops"] == 1
    assert "keep-alive" not in names
    # A name the client's Connection lists is not removed: the owner's app sees what it would have served locally.
    assert "x-secret-hop" in names
    # The client's own X-Forwarded-For reaches the owner unchanged (ours was appended, then removed there).
    assert dict(echoed["headers"])["x-forwarded-for"] == "203.0.113.9"


class CapturePeer:
    """A peer that is only a listening socket in this process: it records each request head a node sends it and
    answers ``200 ok``, so a test can see exactly what a forward puts on the wire."""

    def __init__(self, host: str, port: int) -> None:
        self.heads: list[bytes] = []
        self.sock = socket.create_server((host, port))
        self.sock.settimeout(0.2)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        deadline = time.monotonic() + 120  # bounded even if the test never stops it
        while not self.stopped.is_set() and time.monotonic() < deadline:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                data = b""
                while b"\r\n\r\n" not in data and len(data) < 65536:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                self.heads.append(data.partition(b"\r\n\r\n")[0])
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()


@pytest.mark.parametrize("forwarded", [False, True], ids=["default", "forwarded-headers"])
def test_what_a_forward_puts_on_the_wire(tmp_path: Path, stack: str, client: httpx.Client, forwarded: bool) -> None:
    """By default a hop adds no X-Forwarded-* (the signed marker carries the client's address and scheme, and the
    owner's app would never see them); ``AFFINITY_FORWARDED_HEADERS=1`` adds all three for layers outside the
    middleware on the owner. The client's own X-Forwarded-For and Host pass either way."""
    # The servers' own proxy handling trusts X-Forwarded-* from 127.0.0.1 (this client): trust nobody here instead.
    env = {"FORWARDED_ALLOW_IPS": "192.0.2.1", **({"AFFINITY_FORWARDED_HEADERS": "1"} if forwarded else {})}
    c = make_cluster(tmp_path, stack, n=1, env=env)
    peer_url = f"http://127.0.0.2:{c.port}"
    peers = [*c.urls, peer_url]
    c.nodes[0].env["AFFINITY_PEERS"] = ",".join(peers)
    ring = StaticMembership(peers).ring
    tenant = next(t for t in (f"w{i}" for i in range(1000)) if ring.owner_of(t).id == peer_url)  # type: ignore[union-attr]
    peer = CapturePeer("127.0.0.2", c.port)
    try:
        with c:
            r = client.get(
                f"{c.urls[0]}/probe/{tenant}/echo",
                headers={"X-Tenant": tenant, "Host": "app.example", "X-Forwarded-For": "203.0.113.9"},
            )
    finally:
        peer.stop()
    assert r.status_code == 200 and r.text == "ok"
    assert len(peer.heads) == 1
    lines = peer.heads[0].split(b"\r\n")
    assert lines[0] == f"GET /probe/{tenant}/echo HTTP/1.1".encode()
    sent = [line.split(b":", 1) for line in lines[1:]]
    names = [name.lower() for name, _ in sent]
    values = {name.lower(): value.strip() for name, value in sent}
    assert names.count(b"x-affinity-hop") == 1 and values[b"host"] == b"app.example"
    if forwarded:
        assert values[b"x-forwarded-for"] == b"203.0.113.9, 127.0.0.1"
        assert values[b"x-forwarded-proto"] == b"http" and values[b"x-forwarded-host"] == b"app.example"
    else:
        assert values[b"x-forwarded-for"] == b"203.0.113.9"
        assert b"x-forwarded-proto" not in names and b"x-forwarded-host" not in names


def test_owner_restores_the_request_whichever_side_adds_forwarded_headers(tmp_path: Path, client: httpx.Client) -> None:
    """Nodes may differ in ``AFFINITY_FORWARDED_HEADERS`` (during a rollout that changes it): the marker says what
    the forwarder added, so each owner's app sees the request as the first node saw it, in both directions."""
    node_env = [{"AFFINITY_FORWARDED_HEADERS": "1"}, {}]
    env = {"FORWARDED_ALLOW_IPS": "192.0.2.1"}  # as above: the servers' own proxy handling off
    with make_cluster(tmp_path, "asgi-asyncio", n=2, env=env, node_env=node_env) as c:
        for entry, other in ((0, 1), (1, 0)):
            tenant = next(t for t in (f"r{i}" for i in range(1000)) if owner(c, t) == c.urls[other])
            r = client.get(
                f"{c.urls[entry]}/probe/{tenant}/echo",
                headers={"X-Tenant": tenant, "Host": "app.example", "X-Forwarded-For": "203.0.113.9"},
            )
            echoed = r.json()
            headers = dict(echoed["headers"])
            assert echoed["node"] == c.urls[other] and echoed["decision"]["hops"] == 1
            assert headers["x-forwarded-for"] == "203.0.113.9" and headers["host"] == "app.example"
            assert "x-forwarded-proto" not in headers and "x-forwarded-host" not in headers
            assert echoed["client"] == "127.0.0.1" and echoed["scheme"] == "http"


@pytest.mark.parametrize(
    "marker",
    [
        "garbage",
        "",
        "http://127.0.0.1:1|0000000000000000|x|1|||http|.AAAA.BBBB",
        # Validly shaped and signed, but with another cluster's secret.
        None,
    ],
)
def test_forged_hop_marker_does_not_stop_forwarding(cluster: Cluster, client: httpx.Client, marker: str | None) -> None:
    tenant = tenant_not_owned_by(cluster, cluster.urls[0])
    if marker is None:
        forged = HopSigner("another-cluster-secret-0123456789").sign(
            sender=cluster.urls[1], key_hash=hash_key(tenant), ring_checksum="x"
        )
        marker = forged.decode()
    r = client.get(
        f"{cluster.urls[0]}/probe/{tenant}/echo",
        headers={"X-Tenant": tenant, "X-Affinity-Hop": marker, "X_Affinity_Hop": "x"},
    )
    assert r.status_code == 200
    assert r.json()["node"] == owner(cluster, tenant)
    assert r.json()["decision"]["sender"] == cluster.urls[0]


def test_valid_marker_is_served_where_it_lands(cluster: Cluster, client: httpx.Client) -> None:
    # A genuine marker (signed with the cluster secret) makes the receiving node serve even a key it does not own.
    tenant = tenant_not_owned_by(cluster, cluster.urls[0])
    marker = HopSigner(SECRET).sign(sender=cluster.urls[1], key_hash=hash_key(tenant), ring_checksum="x")
    r = client.get(
        f"{cluster.urls[0]}/probe/{tenant}/echo",
        headers={"X-Tenant": tenant, "X-Affinity-Hop": marker.decode()},
    )
    assert r.json()["node"] == cluster.urls[0]
    assert r.json()["decision"]["reason"] == "hop"


def test_head_and_204_304_invent_no_body(cluster: Cluster, client: httpx.Client) -> None:
    tenant = tenant_not_owned_by(cluster, cluster.urls[0])
    r = client.head(f"{cluster.urls[0]}/probe/{tenant}/gzip", headers={"X-Tenant": tenant})
    assert r.status_code == 200 and r.content == b""
    for code in (204, 304):
        r = client.get(f"{cluster.urls[0]}/probe/{tenant}/status/{code}", headers={"X-Tenant": tenant})
        assert r.status_code == code and r.content == b""
        assert r.headers["x-affinity-served-by"] == owner(cluster, tenant)


def test_no_key_is_served_locally(cluster: Cluster, client: httpx.Client) -> None:
    for url in cluster.urls:
        r = client.get(f"{url}/probe/anything/echo")
        assert r.status_code == 200
        assert r.json()["node"] == url
        assert r.json()["decision"]["reason"] == "no-key"


def test_disagreeing_members_never_loop(tmp_path: Path, client: httpx.Client, stack: str) -> None:
    """Node 1 knows {1, 2}, node 2 knows {2, 3}, node 3 knows {1, 3}: chains and cycles are possible without
    the marker. Each forwarded request must stop at the first peer it reaches."""
    c = make_cluster(tmp_path, stack, n=3)
    u = c.urls
    lists = [[u[0], u[1]], [u[1], u[2]], [u[0], u[2]]]
    for node, peers in zip(c.nodes, lists, strict=True):
        node.env["AFFINITY_PEERS"] = ",".join(peers)
    with c:
        chains = 0
        for i in range(60):
            tenant = f"skew-{i}"
            entry = i % 3
            first = StaticMembership(lists[entry], u[entry]).ring.owner_of(tenant)
            assert first is not None
            r = client.get(f"{u[entry]}/probe/{tenant}/echo", headers={"X-Tenant": tenant})
            assert r.status_code == 200
            body = r.json()
            # Served by the node the entry node chose, never passed further on.
            assert body["node"] == first.id
            assert body["decision"]["hops"] == (0 if first.id == u[entry] else 1)
            if body["decision"]["hops"]:
                nxt_index = u.index(first.id)
                second = StaticMembership(lists[nxt_index], first.id).ring.owner_of(tenant)
                if second is not None and second.id != first.id:
                    chains += 1
        assert chains > 0, "the test must include keys the second node would have forwarded again"


def test_different_vnodes_each_thinking_the_other_owns(tmp_path: Path, client: httpx.Client, stack: str) -> None:
    c = make_cluster(tmp_path, stack, n=2, node_env=[{"AFFINITY_VNODES": "160"}, {"AFFINITY_VNODES": "3"}])
    ring_a = StaticMembership(c.urls, c.urls[0], vnodes=160).ring
    ring_b = StaticMembership(c.urls, c.urls[1], vnodes=3).ring
    pingpong = [
        t
        for t in (f"pp-{i}" for i in range(500))
        if ring_a.owner_of(t).id == c.urls[1] and ring_b.owner_of(t).id == c.urls[0]
    ]  # type: ignore[union-attr]
    assert len(pingpong) > 5
    with c:
        for tenant in pingpong[:10]:
            r = client.get(f"{c.urls[0]}/probe/{tenant}/echo", headers={"X-Tenant": tenant})
            assert r.json()["node"] == c.urls[1]
            assert r.json()["decision"]["hops"] == 1


def test_dead_peer_keys_go_to_next_successor(tmp_path: Path, client: httpx.Client, stack: str) -> None:
    with make_cluster(tmp_path, stack, n=3) as c:
        ring = StaticMembership(c.urls).ring
        dead = c.nodes[2]
        kill(dead)
        tenants = [t for t in (f"d-{i}" for i in range(200)) if ring.owner_of(t).id == dead.url][:15]  # type: ignore[union-attr]
        assert tenants
        for tenant in tenants:
            successor = ring.successors(hash_key(tenant), 2)[1].id
            for url in c.urls[:2]:
                r = client.post(f"{url}/tenants/{tenant}/hits", headers={"X-Tenant": tenant})
                assert r.status_code == 200, r.text
                assert r.json()["node"] == successor
        # The failover kept locality too: both entry nodes' requests met the successor's one counter.
        r = client.get(f"{c.urls[0]}/tenants/{tenants[0]}/hits", headers={"X-Tenant": tenants[0]})
        assert r.json()["count"] == 2


def test_no_key_reject_policy_answers_400(tmp_path: Path, client: httpx.Client, stack: str) -> None:
    with make_cluster(tmp_path, stack, n=2, env={"AFFINITY_NO_KEY": "reject"}) as c:
        r = client.get(f"{c.urls[0]}/probe/x/echo")
        assert r.status_code == 400
        assert b"affinity key" in r.content
        r = client.get(f"{c.urls[0]}/probe/x/echo", headers={"X-Tenant": "t1"})
        assert r.status_code == 200


def test_ip_key_routes_by_the_original_client_and_never_loops(tmp_path: Path, stack: str) -> None:
    """With `ip` the key is the socket peer: after a hop the owner sees the forwarding node as its peer, so it
    must restore the first node's view (from the signed marker) before routing, or it would route again."""
    with make_cluster(tmp_path, stack, env={"AFFINITY_KEY": "ip"}) as c:
        ring = StaticMembership(c.urls).ring
        forwarded = 0
        for i in range(10, 40):
            source = f"127.0.0.{i}"
            transport = httpx.HTTPTransport(local_address=source)
            with httpx.Client(transport=transport, trust_env=False, timeout=10) as client:
                entry = c.urls[i % 3]
                r = client.get(f"{entry}/probe/any/echo")
                body = r.json()
                assert r.status_code == 200
                assert body["node"] == ring.owner_of(source).id  # type: ignore[union-attr]
                assert body["client"] == source
                assert body["decision"]["key"] == source
                assert body["decision"]["hops"] == (0 if body["node"] == entry else 1)
                forwarded += body["decision"]["hops"]
        assert forwarded > 5
