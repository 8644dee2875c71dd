"""Websockets routed by key, minted ids and generated cookies, on real 3-node uvicorn clusters.

Every node serves tests/apps/ws_cluster_app.py behind the ASGI middleware, routing by
``path:/ws/rooms/{key}``, ``path:/docs/{key}``, then a generated cookie for requests with neither. The clients
are the ``websockets`` package's own, in the test process.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster import SECRET, Cluster, kill, node_metrics
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from affinity_mw.devdns import DnsServer
from affinity_mw.introspect import AUTH_HEADER, sign_drain, sign_request
from affinity_mw.membership import StaticMembership

MIB = 1024 * 1024
KEY = "path:/ws/rooms/{key},path:/docs/{key},generated-cookie:aff"


def start(tmp: Path, **env: str) -> Cluster:
    return Cluster(
        tmp,
        app="tests.apps.ws_cluster_app:app",
        env={"AFFINITY_KEY": KEY, "AFFINITY_WS_PING": "1", **env},
    ).start()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = start(tmp_path_factory.mktemp("ws-cluster"))
    try:
        yield c
    finally:
        c.stop()


def owner_of(c: Cluster, key: str) -> str:
    node = StaticMembership(c.urls, c.urls[0]).ring.owner_of(key)
    assert node is not None
    return node.id


def ws_url(http_url: str, path: str) -> str:
    return "ws" + http_url[4:] + path


def hello(ws: ClientConnection) -> dict[str, object]:
    return json.loads(ws.recv(timeout=10))  # type: ignore[no-any-return]


def status(url: str) -> dict[str, Any]:
    response = httpx.get(
        f"{url}/_affinity/status.json", headers={AUTH_HEADER: sign_request(SECRET)}, trust_env=False, timeout=5
    )
    return response.json()  # type: ignore[no-any-return]


def counters(url: str) -> dict[str, int]:
    return node_metrics(url)["counters"]  # type: ignore[no-any-return]


def test_every_member_of_a_room_meets_on_its_owner_through_any_entry_node(cluster: Cluster) -> None:
    for room in ("lobby", "kitchen", "attic"):
        owner = owner_of(cluster, room)
        with contextlib.ExitStack() as stack:
            members = [
                stack.enter_context(connect(ws_url(u, f"/ws/rooms/{room}"), max_size=4 * MIB)) for u in cluster.urls
            ]
            greetings = [hello(m) for m in members]
            assert {g["node"] for g in greetings} == {owner}, greetings  # one node holds the whole room
            assert [g["members"] for g in greetings] == [1, 2, 3]
            for i, sender in enumerate(members):  # a broadcast from any member reaches every member
                sender.send(f"hi from {i}")
                for member in members:
                    assert json.loads(member.recv(timeout=10)) == {"node": owner, "text": f"hi from {i}"}
            blob = os.urandom(MIB)
            for member in members:  # binary frames, 1 MiB, through a forward or not, intact
                member.send(blob)
                assert member.recv(timeout=10) == blob


def test_a_forwarded_handshake_names_the_node_that_served_it_once(cluster: Cluster) -> None:
    owner = owner_of(cluster, "porch")
    for url in cluster.urls:
        with connect(ws_url(url, "/ws/rooms/porch")) as ws:
            assert hello(ws)["node"] == owner
            assert ws.response is not None
            assert ws.response.headers.get_all("x-affinity-served-by") == [owner]
            assert ws.response.headers.get_all("x-affinity-owner") == [owner]


def test_close_codes_and_reasons_pass_both_ways(cluster: Cluster) -> None:
    room = "closing"
    owner = owner_of(cluster, room)
    entry = next(u for u in cluster.urls if u != owner)
    with connect(ws_url(entry, f"/ws/rooms/{room}")) as ws:
        hello(ws)
        ws.send("close:4321:room closed")
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=10)
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (4321, "room closed")
    with connect(ws_url(entry, f"/ws/rooms/{room}")) as ws:
        hello(ws)
        ws.close(4005, "member leaves")
    deadline = time.monotonic() + 5
    seen = None
    while time.monotonic() < deadline and seen != [4005, "member leaves"]:
        seen = httpx.get(owner + "/probe/closes", trust_env=False, timeout=5).json().get(room)
        time.sleep(0.05)
    assert seen == [4005, "member leaves"]


def test_a_forged_marker_on_the_handshake_does_not_stop_the_forward(cluster: Cluster) -> None:
    room = "forged"
    owner = owner_of(cluster, room)
    entry = next(u for u in cluster.urls if u != owner)
    before = counters(entry)["invalid_marker"]
    forged = {"X-Affinity-Hop": "v1.forged.marker", "X_Affinity_Hop": "also-forged"}
    with connect(ws_url(entry, f"/ws/rooms/{room}"), additional_headers=forged) as ws:
        assert hello(ws)["node"] == owner
    assert counters(entry)["invalid_marker"] == before + 1


def test_plain_http_keeps_working_on_the_same_nodes(cluster: Cluster) -> None:
    for key in ("doc_a", "doc_b", "doc_c"):
        owner = owner_of(cluster, key)
        for url in cluster.urls:
            response = httpx.get(f"{url}/docs/{key}", trust_env=False, timeout=10)
            assert response.status_code == 200
            assert response.json()["node"] == owner
            assert response.headers["x-affinity-served-by"] == owner


def test_minted_ids_are_served_where_they_were_minted_without_a_hop(cluster: Cluster) -> None:
    for url in cluster.urls:
        created = httpx.post(f"{url}/docs", trust_env=False, timeout=10).json()
        assert created["node"] == url and owner_of(cluster, created["id"]) == url
        before = counters(url)
        for _ in range(5):
            response = httpx.get(f"{url}/docs/{created['id']}", trust_env=False, timeout=10)
            assert response.json()["node"] == url
        after = counters(url)
        assert after["local_owner"] - before["local_owner"] == 5  # served here, as the owner
        assert after["forwarded"] == before["forwarded"]  # no hop


def test_a_generated_cookie_keeps_a_keyless_client_on_the_node_that_issued_it(cluster: Cluster) -> None:
    for i, url in enumerate(cluster.urls):
        first = httpx.get(f"{url}/whoami", trust_env=False, timeout=10)
        assert first.json()["reason"] == "no-key" and first.json()["node"] == url
        issued = first.headers["set-cookie"]
        assert issued.startswith("aff=") and "HttpOnly" in issued and "SameSite=Lax" in issued
        cookie = issued.split(";", 1)[0]
        assert first.json()["key"] is not None and owner_of(cluster, first.json()["key"]) == url
        before = counters(url)
        for _ in range(5):
            again = httpx.get(f"{url}/whoami", headers={"cookie": cookie}, trust_env=False, timeout=10)
            assert again.json() == {"node": url, "key": first.json()["key"], "reason": "owner"}
            assert "set-cookie" not in again.headers
        after = counters(url)
        assert after["local_owner"] - before["local_owner"] == 5
        assert after["forwarded"] == before["forwarded"]
        assert after["cookies_issued"] >= before["cookies_issued"] >= 1
        elsewhere = cluster.urls[(i + 1) % 3]  # the same cookie at another node goes to the issuing node
        moved = httpx.get(f"{elsewhere}/whoami", headers={"cookie": cookie}, trust_env=False, timeout=10)
        assert moved.json()["node"] == url
    forged = httpx.get(f"{cluster.urls[0]}/whoami", headers={"cookie": "aff=forged"}, trust_env=False, timeout=10)
    assert forged.json()["reason"] == "no-key" and "set-cookie" in forged.headers  # a fresh cookie, not an error


def test_killing_the_owner_closes_relayed_sockets_and_reconnects_meet_on_one_survivor(tmp_path: Path) -> None:
    c = start(tmp_path)
    try:
        room = "doomed"
        owner = owner_of(c, room)
        entries = [u for u in c.urls if u != owner]
        with contextlib.ExitStack() as stack:
            members = [stack.enter_context(connect(ws_url(u, f"/ws/rooms/{room}"))) for u in entries]
            assert {hello(m)["node"] for m in members} == {owner}
            started = time.monotonic()
            kill(next(n for n in c.nodes if n.url == owner))
            for member in members:
                with pytest.raises(ConnectionClosed) as info:
                    member.recv(timeout=10)
                assert info.value.rcvd is not None and info.value.rcvd.code == 1012
            assert time.monotonic() - started < 3
        with contextlib.ExitStack() as stack:
            again = [stack.enter_context(connect(ws_url(u, f"/ws/rooms/{room}"))) for u in entries]
            greetings = [hello(m) for m in again]
            survivors = {g["node"] for g in greetings}
            assert len(survivors) == 1 and owner not in survivors  # one surviving node holds the room
            assert [g["members"] for g in greetings] == [1, 2]
            again[0].send("still here")
            for member in again:
                assert json.loads(member.recv(timeout=10))["text"] == "still here"
        for url in entries:  # plain HTTP too
            assert httpx.get(f"{url}/docs/x", trust_env=False, timeout=10).status_code == 200
    finally:
        c.stop()


def test_draining_closes_open_websockets_with_1001_and_sends_new_ones_elsewhere(tmp_path: Path) -> None:
    c = start(tmp_path, AFFINITY_WS_DRAIN_GRACE="0.5")
    try:
        room = "draining"
        owner = owner_of(c, room)
        entry = next(u for u in c.urls if u != owner)
        with (
            connect(ws_url(owner, f"/ws/rooms/{room}")) as direct,
            connect(ws_url(entry, f"/ws/rooms/{room}")) as relayed,
        ):
            assert hello(direct)["node"] == hello(relayed)["node"] == owner
            drained = httpx.post(
                f"{owner}/_affinity/health/drain",
                headers={AUTH_HEADER: sign_drain(SECRET, owner)},
                trust_env=False,
                timeout=5,
            )
            assert drained.status_code == 200
            started = time.monotonic()
            for member in (direct, relayed):
                with pytest.raises(ConnectionClosed) as info:
                    member.recv(timeout=10)
                assert info.value.rcvd is not None and info.value.rcvd.code == 1001
            assert 0.4 < time.monotonic() - started < 5  # after the grace, not before
        for url in c.urls:  # new ones, whatever the entry node, go to one node that is not draining
            with connect(ws_url(url, f"/ws/rooms/{room}")) as ws:
                assert hello(ws)["node"] != owner
    finally:
        c.stop()


@pytest.mark.parametrize("policy", ["close", "keep"])
def test_a_key_that_moves_to_a_joining_node_closes_or_keeps_its_websockets(tmp_path: Path, policy: str) -> None:
    """Membership from a real DNS server on loopback: node 3 joins and takes the room; with ``close`` its open
    websockets (direct and relayed) get 1012 and their reconnects meet on node 3; with ``keep`` they go on."""
    with DnsServer(tmp_path) as dns_server:
        c = Cluster(
            tmp_path,
            app="tests.apps.ws_cluster_app:app",
            env={
                "AFFINITY_KEY": KEY,
                "AFFINITY_PEERS": "",
                "AFFINITY_DNS": "nodes.test",
                "AFFINITY_DNS_NAMESERVER": dns_server.nameserver,
                "AFFINITY_DNS_REFRESH": "1",
                "AFFINITY_WS_ON_MOVE": policy,
            },
        )
        for node in c.nodes:
            node.env["AFFINITY_DNS_PORT"] = str(c.port)
        hosts = [f"127.0.0.{i}" for i in (1, 2, 3)]
        dns_server.write({"ttl": 1, "records": {"nodes.test": {"A": hosts[:2]}}})
        two = StaticMembership(c.urls[:2], c.urls[0]).ring
        three = StaticMembership(c.urls, c.urls[0]).ring
        room = next(f"room-{i}" for i in range(1000) if three.owner_of(f"room-{i}").id == c.urls[2])  # type: ignore[union-attr]
        old_owner = two.owner_of(room).id  # type: ignore[union-attr]
        other = next(u for u in c.urls[:2] if u != old_owner)
        with c, contextlib.ExitStack() as stack:
            direct = stack.enter_context(connect(ws_url(old_owner, f"/ws/rooms/{room}")))
            relayed = stack.enter_context(connect(ws_url(other, f"/ws/rooms/{room}")))
            assert hello(direct)["node"] == hello(relayed)["node"] == old_owner
            dns_server.write({"ttl": 1, "records": {"nodes.test": {"A": hosts}}})
            if policy == "close":
                for member in (direct, relayed):
                    with pytest.raises(ConnectionClosed) as info:
                        member.recv(timeout=10)
                    assert info.value.rcvd is not None and info.value.rcvd.code == 1012
                # Nodes refresh DNS on their own clocks: once all see the new ring, reconnects meet on node 3.
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline and any(
                    status(u)["ring"]["checksum"] != three.checksum for u in c.urls
                ):
                    time.sleep(0.1)
                for url in c.urls:
                    with connect(ws_url(url, f"/ws/rooms/{room}")) as ws:
                        assert hello(ws)["node"] == c.urls[2]
                old_status = status(old_owner)
                [change] = old_status["ownership_changes"]
                assert change["new_ring"] == three.checksum and change["lost_fraction"] > 0
            else:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    with connect(ws_url(c.urls[0], f"/ws/rooms/{room}")) as probe:
                        if hello(probe)["node"] == c.urls[2]:
                            break  # the ring swapped: new members go to node 3
                    time.sleep(0.2)
                time.sleep(1.5)  # a close would have come by now
                direct.send("still together")
                for member in (direct, relayed):
                    assert json.loads(member.recv(timeout=10)) == {"node": old_owner, "text": "still together"}
