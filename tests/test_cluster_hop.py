"""A leaked hop marker on real servers: captured on the wire between two nodes, then replayed with another method,
target or key, or at another node. Only the exact request it was made for, at the node it was sent to, is
honoured; every other replay is routed as if it carried no marker (and counted). A marker of the previous,
unbound format (what a node of the older version sends during a rolling upgrade) is honoured and counted.

The tap is a TCP relay that stands where node 2's peers reach it, as a header log or plaintext peer traffic
would: node 2 is the ring member ``http://127.0.0.3:P`` (its ``AFFINITY_SELF``) and listens behind the tap.
"""

from __future__ import annotations

import hashlib
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster import SECRET, Cluster, node_metrics
from figures import Figures
from itsdangerous import Signer

from affinity_mw import StaticMembership, hash_key

STACKS = {"asgi": ("uvicorn", "tests.apps.asgi_app:app"), "wsgi": ("gunicorn-gthread", "tests.apps.wsgi_app:app")}
MARKER_RE = re.compile(rb"\r\nx-affinity-hop: *([^\r\n]+)\r\n", re.IGNORECASE)


class Tap:
    """A TCP relay from ``listen`` to ``upstream`` that keeps every hop marker the requests carry."""

    def __init__(self) -> None:
        self.upstream = ("127.0.0.2", 0)  # set once the node behind it has its port
        self.listener = socket.create_server(("127.0.0.3", 0))
        self.url = f"http://127.0.0.3:{self.listener.getsockname()[1]}"
        self.markers: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        pairs: dict[socket.socket, socket.socket] = {}
        from_client: set[socket.socket] = set()
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([self.listener, *pairs], [], [], 0.05)
                for sock in ready:
                    if sock is self.listener:
                        client, _ = self.listener.accept()
                        server = socket.create_connection(self.upstream)
                        pairs[client], pairs[server] = server, client
                        from_client.add(client)
                        continue
                    if sock not in pairs:
                        continue
                    data = sock.recv(65536)
                    other = pairs[sock]
                    if not data:
                        for s in (sock, other):
                            pairs.pop(s, None)
                            from_client.discard(s)
                            s.close()
                        continue
                    if sock in from_client:
                        self.markers += [m.decode() for m in MARKER_RE.findall(data)]
                    other.sendall(data)
        finally:
            for sock in pairs:
                sock.close()

    def __enter__(self) -> Tap:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()


@pytest.fixture(scope="module", params=sorted(STACKS))
def tapped(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, Tap]]:
    server, app = STACKS[request.param]
    tap = Tap()
    c = Cluster(tmp_path_factory.mktemp(f"hop-{request.param}"), n=2, server=server, app=app)
    first = c.urls[0]
    for node, self_url in zip(c.nodes, (first, tap.url), strict=True):
        node.env.update(AFFINITY_PEERS=f"{first},{tap.url}", AFFINITY_SELF=self_url)
    tap.upstream = ("127.0.0.2", c.port)
    with tap, c:
        yield c, tap


def counter(url: str, name: str) -> int:
    return int(node_metrics(url)["counters"].get(name, 0))


def test_leaked_marker_is_honoured_only_for_its_request_at_its_node(
    tapped: tuple[Cluster, Tap], figures: Figures
) -> None:
    c, tap = tapped
    first, second = c.urls  # second listens behind the tap; its member id is tap.url
    ring = StaticMembership([first, tap.url]).ring
    owned: dict[str, list[str]] = {first: [], tap.url: []}
    for tenant in (f"t{i}" for i in range(400)):
        owned[ring.owner_of(tenant).id].append(tenant)  # type: ignore[union-attr]
    tenant, elsewhere = owned[tap.url][0], owned[first][0]
    target = f"/probe/{tenant}/echo?x=1"
    client = httpx.Client(trust_env=False, timeout=10)

    def send(url: str, method: str, path: str, key: str, marker: str | None) -> dict[str, Any]:
        headers = {"X-Tenant": key, **({"X-Affinity-Hop": marker} if marker else {})}
        r = client.request(method, url + path, headers=headers)
        assert r.status_code == 200, r.text
        return dict(r.json())

    # The forward the marker leaks from: node 1 -> tap -> node 2, with the client's address in the marker.
    forwarded = send(first, "GET", target, tenant, None)
    assert forwarded["decision"]["reason"] == "hop" and forwarded["node"] == tap.url
    (marker,) = tap.markers
    # Replayed as exactly that request, at that node: honoured (what a leaked marker still allows, for 30 s).
    exact = send(second, "GET", target, tenant, marker)
    assert exact["decision"]["reason"] == "hop" and exact["decision"]["sender"] == first
    rejected_before = counter(second, "marker_mismatch")
    replays = {
        "another method": (second, "POST", target, tenant),
        "another target": (second, "GET", f"/probe/{tenant}/echo?x=2", tenant),
        "another key": (second, "GET", target, elsewhere),
        "another node": (first, "GET", target, tenant),
    }
    honoured: dict[str, list[str]] = {}
    for what, (url, method, path, key) in replays.items():
        replayed = send(url, method, path, key, marker)
        unmarked = send(url, method, path, key, None)  # what the request gets with no marker at all
        seen = {"node": replayed["node"], "client": replayed["client"], **replayed["decision"]}
        expected = {"node": unmarked["node"], "client": unmarked["client"], **unmarked["decision"]}
        fields = ("node", "client", "reason", "key", "hops")
        differ = [f"{k} {seen[k]!r}, unmarked {expected[k]!r}" for k in fields if seen[k] != expected[k]]
        if differ:
            honoured[what] = differ
    rejected = counter(second, "marker_mismatch") - rejected_before + counter(first, "marker_mismatch")
    client.close()
    stack = "asgi" if "uvicorn" in c.nodes[0].cmd else "wsgi"
    figures.record(
        "leaked hop marker replayed",
        stack=stack,
        sent=len(replays) + 1,
        failed=len(honoured),
        notes=(
            "captured on the wire between nodes; replays with another method, target, key or at another node: "
            f"{len(replays) - len(honoured)}/{len(replays)} routed as unmarked, {rejected} counted "
            "(marker_mismatch); the exact request at its node within 30 s: honoured"
        ),
    )
    assert not honoured, honoured
    assert rejected == len(replays)


def test_previous_format_marker_is_honoured_and_counted(tapped: tuple[Cluster, Tap]) -> None:
    """A node of the previous version (unbound markers, salt ``affinity-mw.hop.v2``) forwarding to this one during a
    rolling upgrade: the marker is honoured, so the request still stops after one hop, and counted."""
    c, tap = tapped
    first, second = c.urls
    ring = StaticMembership([first, tap.url]).ring
    tenant = next(t for t in (f"t{i}" for i in range(400)) if ring.owner_of(t).id == first)  # type: ignore[union-attr]
    payload = f"{int(time.time() * 1000):x}|{tap.url}|{hash_key(tenant):016x}|{ring.checksum}|1|198.51.100.4|5|https|"
    legacy = Signer(SECRET, salt="affinity-mw.hop.v2", digest_method=hashlib.sha256).sign(payload).decode()
    before = counter(second, "marker_legacy")
    r = httpx.get(
        f"{second}/probe/{tenant}/echo", headers={"X-Tenant": tenant, "X-Affinity-Hop": legacy}, trust_env=False
    )
    body = r.json()
    assert body["decision"]["reason"] == "hop" and body["node"] == tap.url  # served here, not forwarded on
    assert body["client"] == "198.51.100.4" and body["scheme"] == "https"
    assert counter(second, "marker_legacy") == before + 1


def test_no_server_errors(tapped: tuple[Cluster, Tap], tmp_path: Path) -> None:
    assert "Traceback" not in tapped[0].logs()


def test_nodes_that_disagree_about_the_key_cannot_bounce_a_request(tmp_path: Path) -> None:
    """A rollout that changes AFFINITY_KEY: node 1 routes by X-Tenant, node 2 by X-Other. Each rejects the
    other's marker (another key) and routes again; the re-routed request is served where it lands next: two
    hops at most, never a loop."""
    node_env = [{"AFFINITY_KEY": "header:X-Tenant"}, {"AFFINITY_KEY": "header:X-Other"}]
    with Cluster(tmp_path, n=2, node_env=node_env) as c:
        ring = StaticMembership(c.urls).ring
        keys = [f"k{i}" for i in range(400)]
        tenant = next(k for k in keys if ring.owner_of(k).id == c.urls[1])  # type: ignore[union-attr]
        other = next(k for k in keys if ring.owner_of(k).id == c.urls[0])  # type: ignore[union-attr]
        start = time.monotonic()
        r = httpx.get(
            f"{c.urls[0]}/probe/x/echo",
            headers={"X-Tenant": tenant, "X-Other": other},
            trust_env=False,
            timeout=30,
        )
        took = time.monotonic() - start
        assert r.status_code == 200, r.text
        body = r.json()
        # node 1 -> node 2 (rejects: another key) -> node 1 (rejects again, but it was re-routed): served there.
        assert body["node"] == c.urls[0] and body["decision"]["reason"] == "hop", body
        assert counter(c.urls[0], "marker_mismatch") == 1 and counter(c.urls[1], "marker_mismatch") == 1
        assert took < 5, took
        assert "Traceback" not in c.logs()
