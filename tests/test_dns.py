"""DNS membership against a real DNS server (affinity_mw.devdns over UDP), then a real 3-node cluster fed by it.

No resolver is mocked: every lookup crosses the loopback wire, so timeouts, SERVFAIL, NXDOMAIN, TTLs and a
stopped server behave as they do in production.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster import ROOT, Cluster, ServerNode, free_port, server_command

from affinity_mw import hash_key
from affinity_mw._addresses import host_addresses
from affinity_mw.config import Settings
from affinity_mw.devdns import DnsServer
from affinity_mw.dns import DnsMembership, parse_nameservers, ring_weights
from affinity_mw.membership import StaticMembership, membership_from_settings
from affinity_mw.ring import HashRing, Node

PORT = 8000
SECRET = "dns-test-secret-0123456789abcdef"


def zone(records: dict[str, Any], **flags: Any) -> dict[str, Any]:
    return {"ttl": 30, "records": records, **flags}


def a_zone(*ips: str, aaaa: tuple[str, ...] = (), ttl: int = 30) -> dict[str, Any]:
    return zone({"app.test": {"A": list(ips), "AAAA": list(aaaa)}}, ttl=ttl)


def srv(target: str, port: int = PORT, weight: int = 1, priority: int = 0) -> dict[str, Any]:
    return {"target": target, "port": port, "weight": weight, "priority": priority}


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until ``predicate()``; the seconds it took. A bounded deadline, never a sleep used as an assertion."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[DnsServer]:
    with DnsServer(tmp_path) as s:
        yield s


@pytest.fixture()
def make(server: DnsServer) -> Iterator[Callable[..., DnsMembership]]:
    """DnsMembership instances asking the test server, with short timeouts; all closed at teardown."""
    made: list[DnsMembership] = []

    def build(name: str = "app.test", **kwargs: Any) -> DnsMembership:
        options: dict[str, Any] = {"port": PORT, "nameservers": [server.nameserver], "timeout": 0.3, "lifetime": 0.6}
        options.update(kwargs)
        membership = DnsMembership(name, **options)
        made.append(membership)
        return membership

    yield build
    for membership in made:
        membership.close()


@pytest.fixture(autouse=True)
def _no_pod_ip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_IP", raising=False)


def ids(membership: DnsMembership) -> dict[str, tuple[str, int]]:
    return {node.id: (node.address, node.weight) for node in membership.ring}


# ------------------------------------------------------------------------------------------------ records


def test_a_records_make_the_same_ring_as_the_static_list(server: DnsServer, make: Callable[..., DnsMembership]) -> None:
    server.write(a_zone("127.0.0.2", "127.0.0.1", "127.0.0.3"))
    membership = make()
    assert len(membership.ring) == 0  # construction does no I/O: empty ring until a lookup
    assert membership.refresh() is True
    urls = [f"http://127.0.0.{i}:{PORT}" for i in (1, 2, 3)]
    assert ids(membership) == {url: (url, 1) for url in urls}
    assert membership.ring.checksum == StaticMembership(urls).ring.checksum
    assert membership.stats["lookups"] == 1
    assert membership.stats["changes"] == 1
    assert membership.stats["failures"] == 0


def test_aaaa_records_are_bracketed_and_scheme_applies(server: DnsServer, make: Callable[..., DnsMembership]) -> None:
    server.write(a_zone("127.0.0.1", aaaa=("::1", "2001:DB8::0:1")))
    membership = make(scheme="https", port=8443)
    assert membership.refresh()
    assert set(ids(membership)) == {"https://127.0.0.1:8443", "https://[::1]:8443", "https://[2001:db8::1]:8443"}


def test_aaaa_only(server: DnsServer, make: Callable[..., DnsMembership]) -> None:
    server.write(a_zone(aaaa=("::1", "::2")))
    membership = make()
    assert membership.refresh()
    assert set(ids(membership)) == {f"http://[::1]:{PORT}", f"http://[::2]:{PORT}"}


def test_srv_ids_addresses_and_weights(server: DnsServer, make: Callable[..., DnsMembership]) -> None:
    server.write(
        zone(
            {
                "_http._tcp.app.test": {
                    "SRV": [
                        srv("node1.test", 8001, weight=100),
                        srv("node2.test.", 8002, weight=100, priority=10),  # priority is ignored
                        srv("node3.test", 8003, weight=300),
                        srv("gone.test", 8004, weight=100),  # NXDOMAIN: left out
                        srv("v6.test", 8005, weight=0),  # 0 counts as 1
                    ]
                },
                "node1.test": {"A": ["127.0.0.11"]},
                "node2.test": {"A": ["127.0.0.12", "127.0.0.2"]},  # several: the lowest
                "node3.test": {"A": ["127.0.0.13"]},
                "v6.test": {"AAAA": ["::1"]},
            }
        )
    )
    membership = make("srv:_http._tcp.app.test")
    assert membership.refresh()
    # 100,100,300,100,1: gcd 1, largest 300 > 16 -> scaled to 16 in proportion, at least 1.
    assert ids(membership) == {
        "http://node1.test:8001": ("http://127.0.0.11:8001", 5),
        "http://node2.test:8002": ("http://127.0.0.2:8002", 5),
        "http://node3.test:8003": ("http://127.0.0.13:8003", 16),
        "http://v6.test:8005": ("http://[::1]:8005", 1),
    }


def test_srv_equal_weights_reduce_to_one(server: DnsServer, make: Callable[..., DnsMembership]) -> None:
    # CoreDNS gives every endpoint weight 100/count: the ring must equal the one a static list of ids gives.
    server.write(
        zone(
            {
                "_http._tcp.app.test": {"SRV": [srv(f"n{i}.test", weight=33) for i in (1, 2, 3)]},
                **{f"n{i}.test": {"A": [f"127.0.0.{i}"]} for i in (1, 2, 3)},
            }
        )
    )
    membership = make("srv:_http._tcp.app.test")
    assert membership.refresh()
    assert {w for _, w in ids(membership).values()} == {1}
    assert membership.ring.checksum == StaticMembership([f"http://n{i}.test:{PORT}" for i in (1, 2, 3)]).ring.checksum


def test_ring_weights() -> None:
    assert ring_weights([]) == []
    assert ring_weights([0, 0]) == [1, 1]
    assert ring_weights([33, 33, 33]) == [1, 1, 1]
    assert ring_weights([10, 20, 30]) == [1, 2, 3]
    assert ring_weights([1, 100]) == [1, 16]
    assert ring_weights([10, 20, 1000]) == [1, 1, 16]
    assert ring_weights([65535] * 3 + [1]) == [16, 16, 16, 1]


def test_srv_address_change_swaps_the_ring_keeping_the_checksum(
    server: DnsServer, make: Callable[..., DnsMembership]
) -> None:
    records = {
        "_http._tcp.app.test": {"SRV": [srv("n1.test"), srv("n2.test")]},
        "n1.test": {"A": ["127.0.0.1"]},
        "n2.test": {"A": ["127.0.0.2"]},
    }
    server.write(zone(records))
    membership = make("srv:_http._tcp.app.test")
    assert membership.refresh()
    before = membership.ring
    assert membership.refresh()
    assert membership.ring is before  # nothing changed: no swap

    records["n1.test"] = {"A": ["127.0.0.9"]}  # the pod restarted with a new IP
    server.write(zone(records))
    assert membership.refresh()
    assert membership.ring is not before
    assert membership.ring.checksum == before.checksum  # same ids: every key stays where it was
    assert ids(membership)[f"http://n1.test:{PORT}"] == (f"http://127.0.0.9:{PORT}", 1)
    assert membership.stats["changes"] == 2

    # A target whose lookup fails for a moment keeps its last address instead of leaving the ring.
    server.write(zone(records, servfail=["n2.test"]))
    assert membership.refresh()
    assert ids(membership)[f"http://n2.test:{PORT}"] == (f"http://127.0.0.2:{PORT}", 1)
    # One that no longer exists leaves it.
    del records["n2.test"]
    server.write(zone(records))
    assert membership.refresh()
    assert set(ids(membership)) == {f"http://n1.test:{PORT}"}


def test_changed_records_swap_the_ring_with_the_moved_fraction(
    server: DnsServer, make: Callable[..., DnsMembership], caplog: pytest.LogCaptureFixture
) -> None:
    server.write(a_zone("127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"))
    membership = make()
    assert membership.refresh()
    old = membership.ring
    gone = f"http://127.0.0.4:{PORT}"
    server.write(a_zone("127.0.0.1", "127.0.0.2", "127.0.0.3"))
    with caplog.at_level(logging.INFO, logger="affinity_mw"):
        assert membership.refresh()
    new = membership.ring
    assert new is not old and new.checksum != old.checksum
    assert gone not in new
    # Only the departed node's share moved, and every one of its keys went to its ring successor.
    moved = old.moved_fraction(new)
    assert moved == pytest.approx(old.shares()[gone])
    for i in range(300):
        h = hash_key(f"k{i}")
        before, after = old.owner(h), new.owner(h)
        assert before is not None and after is not None
        assert after.id == (old.successors(h, 2)[1].id if before.id == gone else before.id)
    [message] = [r.getMessage() for r in caplog.records if "changed" in r.getMessage()]
    assert f"3 member(s), ring {old.checksum} -> {new.checksum}, {100 * moved:.1f}% of keys moved" in message
    assert membership.stats["changes"] == 2


# ------------------------------------------------------------------------------------------------ failures


def _break(server: DnsServer, how: str) -> None:
    if how == "servfail":
        server.write(zone({"app.test": {"A": ["127.0.0.1"]}}, servfail=True))
    elif how == "nxdomain":
        server.write(zone({}))
    elif how == "empty":
        server.write(zone({"app.test": {}}))
    elif how == "timeout":
        server.write(zone({"app.test": {"A": ["127.0.0.1"]}}, silent=True))
    elif how == "stopped":
        server.stop()


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("servfail", "SERVFAIL"),
        ("nxdomain", "NXDOMAIN"),
        ("empty", "empty answer"),
        ("timeout", "timeout"),
        ("stopped", "timeout"),  # UDP: an ICMP unreachable does not reach an unconnected socket
    ],
)
def test_failures_keep_the_last_good_membership(
    server: DnsServer,
    make: Callable[..., DnsMembership],
    caplog: pytest.LogCaptureFixture,
    how: str,
    reason: str,
) -> None:
    server.write(a_zone("127.0.0.1", "127.0.0.2"))
    membership = make()
    assert membership.refresh()
    good = membership.ring
    _break(server, how)
    with caplog.at_level(logging.WARNING, logger="affinity_mw"):
        assert membership.refresh() is False
        assert membership.refresh() is False
    assert membership.ring is good  # DNS never empties the ring
    stats = membership.stats
    assert stats["lookups"] == 3
    assert stats["failures"] == 2
    assert stats["consecutive_failures"] == 2
    assert reason in stats["last_error"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings  # rate-limited
    assert "keeping the last 2 member(s)" in warnings[0]

    if how == "stopped":
        server.start()  # same port
    server.write(a_zone("127.0.0.1", "127.0.0.2"))
    assert membership.refresh()
    assert membership.ring is good
    assert membership.stats["consecutive_failures"] == 0


def test_no_ring_before_the_first_success_then_one_after_the_server_comes_up(
    server: DnsServer, make: Callable[..., DnsMembership]
) -> None:
    server.write(a_zone("127.0.0.1", "127.0.0.2", "127.0.0.3"))
    server.stop()  # the nameserver is down when the node starts
    membership = make(refresh=2.0)
    membership.start()
    wait_for(lambda: membership.stats["failures"] >= 2, 4.0, "retries with backoff")  # each times out: 0.6-0.8 s
    assert len(membership.ring) == 0
    assert membership.ring.owner_of("tenant") is None  # the router serves locally
    server.start()
    took = wait_for(lambda: len(membership.ring) == 3, 6.0, "a ring once the server answers")
    # At most: the lookup in flight (timing out), one backoff capped at the interval, one good lookup, a margin.
    assert took < 0.9 + 2.0 * 1.1 + 0.2 + 1.0
    assert membership.stats["last_success_monotonic"] is not None


def test_a_short_ttl_shortens_the_refresh(server: DnsServer, make: Callable[..., DnsMembership]) -> None:
    server.write(a_zone("127.0.0.1", ttl=300))
    membership = make(refresh=30.0)
    assert membership.refresh()
    assert 27.0 <= membership.next_delay() <= 33.0  # a long TTL does not lengthen the interval

    server.write(a_zone("127.0.0.1", ttl=0))
    assert membership.refresh()
    assert 1.0 <= membership.next_delay() <= 1.1  # TTL 0: never below one second

    server.write(a_zone("127.0.0.1", ttl=1))
    assert membership.refresh()
    membership.start()
    start = membership.stats["lookups"]
    took = wait_for(lambda: membership.stats["lookups"] >= start + 2, 4.0, "two refreshes at the 1 s TTL")
    assert took >= 1.8  # and not sooner than the TTL allows


def test_backoff_before_the_first_success_doubles_up_to_the_interval(
    server: DnsServer, make: Callable[..., DnsMembership]
) -> None:
    server.write(zone({}, servfail=True))  # fails at once, unlike a timeout
    membership = make(refresh=1.5)
    delays = []
    for _ in range(5):
        assert membership.refresh() is False
        delays.append(membership.next_delay())
    for delay, base in zip(delays, [0.25, 0.5, 1.0, 1.5, 1.5], strict=True):
        assert base * 0.9 <= delay <= base * 1.1


# ------------------------------------------------------------------------------------------------ self


def test_self_from_pod_ip(
    server: DnsServer, make: Callable[..., DnsMembership], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POD_IP", "127.0.0.3")
    server.write(a_zone("127.0.0.1", "127.0.0.2"))
    membership = make()
    assert membership.refresh()
    assert membership.self_id is None  # not (yet) in DNS: a non-member
    server.write(a_zone("127.0.0.1", "127.0.0.2", "127.0.0.3"))
    assert membership.refresh()
    assert membership.self_id == f"http://127.0.0.3:{PORT}"  # re-evaluated on every refresh
    monkeypatch.setenv("POD_IP", "::1")
    server.write(a_zone("127.0.0.1", aaaa=("::1",)))
    assert membership.refresh()
    assert membership.self_id == f"http://[::1]:{PORT}"


def test_self_is_none_when_ambiguous(
    server: DnsServer, make: Callable[..., DnsMembership], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POD_IP", "127.0.0.1")
    server.write(
        zone(
            {"_http._tcp.app.test": {"SRV": [srv("h.test", 8001), srv("h.test", 8002)]}, "h.test": {"A": ["127.0.0.1"]}}
        )
    )
    membership = make("srv:_http._tcp.app.test")
    assert membership.refresh()
    assert len(membership.ring) == 2
    assert membership.self_id is None  # two members on this IP: never guess


def test_self_from_this_hosts_addresses(server: DnsServer, make: Callable[..., DnsMembership]) -> None:
    candidates = sorted(str(ip) for ip in host_addresses() if ip.version == 4)
    if not candidates:
        pytest.skip("this host has no non-loopback IPv4 address")
    mine = candidates[0]
    server.write(a_zone(mine, "198.51.100.1", "198.51.100.2"))
    membership = make()
    assert membership.refresh()
    assert membership.self_id == f"http://{mine}:{PORT}"


def test_loopback_never_identifies_self(server: DnsServer, make: Callable[..., DnsMembership]) -> None:
    # A dev box: every member on 127.0.0.x, and every process on the box has those addresses (the host name
    # may even resolve to 127.0.0.1). Without AFFINITY_SELF or POD_IP the node must stay a non-member.
    server.write(a_zone("127.0.0.1", "127.0.0.2", "127.0.0.3"))
    membership = make()
    assert membership.refresh()
    assert membership.self_id is None


def test_explicit_self(server: DnsServer, make: Callable[..., DnsMembership], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POD_IP", "127.0.0.1")  # ignored when self is given
    server.write(a_zone("127.0.0.1", "127.0.0.2"))
    membership = make(self_url="HTTP://127.0.0.2:8000/")
    assert membership.self_id == f"http://127.0.0.2:{PORT}"  # known before any lookup
    assert membership.refresh()
    assert membership.self_id == f"http://127.0.0.2:{PORT}"

    # With SRV, AFFINITY_SELF may name the member's id or its address.
    server.write(zone({"_http._tcp.app.test": {"SRV": [srv("n1.test"), srv("n2.test")]}, **_targets(2)}))
    by_address = make("srv:_http._tcp.app.test", self_url=f"http://127.0.0.2:{PORT}")
    assert by_address.refresh()
    assert by_address.self_id == f"http://n2.test:{PORT}"


def _targets(n: int) -> dict[str, Any]:
    return {f"n{i}.test": {"A": [f"127.0.0.{i}"]} for i in range(1, n + 1)}


# ------------------------------------------------------------------------------------------------ lifecycle


def test_start_is_idempotent_and_close_stops_the_thread(server: DnsServer, make: Callable[..., DnsMembership]) -> None:
    server.write(a_zone("127.0.0.1"))
    membership = make()
    membership.start()
    thread = membership._thread
    membership.start()
    assert membership._thread is thread and membership.running
    wait_for(lambda: len(membership.ring) == 1, 2.0, "the first lookup on the thread")
    started = time.monotonic()
    membership.close()
    assert time.monotonic() - started < 1.0
    assert not membership.running
    assert thread is not None and not thread.is_alive()
    lookups = membership.stats["lookups"]
    assert len(membership.ring) == 1  # closing stops updates, not routing
    membership.close()  # idempotent
    assert membership.stats["lookups"] == lookups


def test_from_settings_looks_up_once_and_starts(server: DnsServer) -> None:
    server.write(a_zone("127.0.0.1", "127.0.0.2"))
    settings = Settings.load(
        environ={
            "AFFINITY_DNS": "app.test",
            "AFFINITY_DNS_PORT": "9000",
            "AFFINITY_DNS_NAMESERVER": server.nameserver,
            "AFFINITY_DNS_REFRESH": "1.5",
            "AFFINITY_SELF": "http://127.0.0.1:9000",
            "AFFINITY_SECRET": SECRET,
            "AFFINITY_KEY": "header:X-Tenant",
            "AFFINITY_VNODES": "40",
        }
    )
    membership = membership_from_settings(settings)
    try:
        assert isinstance(membership, DnsMembership)
        assert membership.running
        assert len(membership.ring) == 2  # ready before the first request
        assert membership.ring.vnodes == 40
        assert membership.refresh_interval == 1.5
        assert membership.self_id == "http://127.0.0.1:9000"
    finally:
        membership.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_the_refresher_restarts_after_fork(server: DnsServer, make: Callable[..., DnsMembership]) -> None:
    server.write(a_zone("127.0.0.1", ttl=1))
    membership = make()
    assert membership.refresh()
    membership.start()
    pid = os.fork()
    if pid == 0:  # the child: like a gunicorn worker forked from a --preload master
        ok = False
        try:
            lookups = membership.stats["lookups"]
            deadline = time.monotonic() + 5.0
            while time.monotonic() < deadline and not ok:
                ok = membership.running and membership.stats["lookups"] > lookups
                time.sleep(0.05)
        finally:
            os._exit(0 if ok else 1)
    deadline = time.monotonic() + 10.0
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child did not finish")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0, "the child's refresher did not run"


def test_configuration_errors() -> None:
    with pytest.raises(ValueError, match="names no DNS name"):
        DnsMembership("srv:", nameservers=["127.0.0.1"])
    with pytest.raises(ValueError, match="at least 1"):
        DnsMembership("app.test", nameservers=["127.0.0.1"], refresh=0.5)
    assert parse_nameservers(["127.0.0.1", "127.0.0.2:5353", "[::1]:54", "[::2]", "::3", " "]) == [
        ("127.0.0.1", 53),
        ("127.0.0.2", 5353),
        ("::1", 54),
        ("::2", 53),
        ("::3", 53),
    ]
    assert parse_nameservers(["localhost:5300"])[0][1] == 5300
    for bad in ("[::1", "[::1]x", "127.0.0.1:0", "127.0.0.1:dns", ":53"):
        with pytest.raises(ValueError, match="AFFINITY_DNS_NAMESERVER"):
            parse_nameservers([bad])


# ------------------------------------------------------------------------------------------------ cluster


def _checksum(client: httpx.Client, url: str) -> str:
    # No X-Tenant: served locally, and the decision shows this node's ring.
    return str(client.get(f"{url}/probe/none/echo").json()["decision"]["ring_checksum"])


def _check_routing(client: httpx.Client, cluster: Cluster, ring: HashRing, tenants: list[str]) -> None:
    for i, tenant in enumerate(tenants):
        url = cluster.urls[i % len(cluster.urls)]
        response = client.get(f"{url}/probe/{tenant}/echo", headers={"X-Tenant": tenant})
        assert response.status_code == 200, response.text
        owner = ring.owner_of(tenant)
        assert owner is not None
        assert response.headers["x-affinity-served-by"] == owner.id, (tenant, url)
        assert response.json()["node"] == owner.id


@pytest.mark.parametrize("mode", ["a", "srv"])
def test_cluster_membership_from_dns(tmp_path: Path, mode: str) -> None:
    with DnsServer(tmp_path) as dns_server:
        cluster = Cluster(
            tmp_path,
            env={
                "AFFINITY_PEERS": "",
                "AFFINITY_DNS": "nodes.test" if mode == "a" else "srv:_http._tcp.nodes.test",
                "AFFINITY_DNS_NAMESERVER": dns_server.nameserver,
                "AFFINITY_DNS_REFRESH": "1",
            },
        )
        port = cluster.port
        hosts = [f"127.0.0.{i}" for i in (1, 2, 3)]
        if mode == "a":
            node_ids = [f"http://{h}:{port}" for h in hosts]

            def records(n: int) -> dict[str, Any]:
                return {"nodes.test": {"A": hosts[:n]}}

        else:
            node_ids = [f"http://node{i}.test:{port}" for i in (1, 2, 3)]

            def records(n: int) -> dict[str, Any]:
                return {
                    "_http._tcp.nodes.test": {"SRV": [srv(f"node{i}.test", port) for i in range(1, n + 1)]},
                    **{f"node{i}.test": {"A": [hosts[i - 1]]} for i in (1, 2, 3)},
                }

        # The members' port is the cluster's, known only once Cluster has picked it.
        for node, node_id in zip(cluster.nodes, node_ids, strict=True):
            node.env["AFFINITY_DNS_PORT"] = str(port)
            node.env["AFFINITY_SELF"] = node_id
        dns_server.write(zone(records(3), ttl=1))
        full = HashRing([Node(i, u) for i, u in zip(node_ids, cluster.urls, strict=True)])
        two = HashRing([Node(i, u) for i, u in zip(node_ids[:2], cluster.urls[:2], strict=True)])
        tenants = [f"tenant-{i}" for i in range(60)]
        random.Random(3).shuffle(tenants)

        with cluster, httpx.Client(trust_env=False, timeout=10.0) as client:
            # 1. Every node routes by the membership DNS gave it.
            for url in cluster.urls:
                assert _checksum(client, url) == full.checksum, cluster.logs()
            _check_routing(client, cluster, full, tenants)

            # 2. Node 3 leaves DNS: within one refresh interval every node routes by the new ring.
            dns_server.write(zone(records(2), ttl=1))
            took = wait_for(
                lambda: all(_checksum(client, url) == two.checksum for url in cluster.urls),
                5.0,
                "every node sees node 3 gone",
            )
            assert took < 1.1 + 0.6 + 1.0  # one jittered interval, a lookup, and a margin
            _check_routing(client, cluster, two, tenants)  # node 3, now no member, forwards everything
            moved = 0
            for tenant in tenants:
                h = hash_key(tenant)
                before = full.owner(h)
                after = two.owner(h)
                assert before is not None and after is not None
                if before.id == node_ids[2]:
                    assert after.id == full.successors(h, 2)[1].id
                    moved += 1
                else:
                    assert after.id == before.id  # other keys do not move
            assert moved > 0

            # 3. The DNS server goes away: the membership is kept and requests keep succeeding.
            log_sizes = [len(node.log.read_text()) for node in cluster.nodes]
            dns_server.stop()
            errors = 0
            deadline = time.monotonic() + 6.0
            logs_ok = False
            while time.monotonic() < deadline and not logs_ok:
                for i, tenant in enumerate(tenants[:15]):
                    url = cluster.urls[i % 3]
                    response = client.get(f"{url}/probe/{tenant}/echo", headers={"X-Tenant": tenant})
                    owner = two.owner_of(tenant)
                    assert owner is not None
                    if response.status_code != 200 or response.headers.get("x-affinity-served-by") != owner.id:
                        errors += 1
                logs_ok = all(
                    "DNS lookup of" in node.log.read_text()[size:]
                    for node, size in zip(cluster.nodes, log_sizes, strict=True)
                )
            assert logs_ok, "every node should have seen the DNS server fail:\n" + cluster.logs()
            assert errors == 0
            for url in cluster.urls:
                assert _checksum(client, url) == two.checksum


def test_gunicorn_preload_worker_keeps_refreshing(tmp_path: Path) -> None:
    """gunicorn --preload builds the middleware (and starts the refresher) in the master, then forks: the
    worker must run its own refresher, or its ring would stay what the master saw at import forever."""
    port = free_port(["127.0.0.1"])
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFFINITY_")}
    with DnsServer(tmp_path, a_zone("127.0.0.1", "127.0.0.2", ttl=1)) as dns_server:
        env.update(
            {
                "AFFINITY_DNS": "app.test",
                "AFFINITY_DNS_PORT": str(port),
                "AFFINITY_DNS_NAMESERVER": dns_server.nameserver,
                "AFFINITY_DNS_REFRESH": "1",
                "AFFINITY_SELF": url,
                "AFFINITY_SECRET": SECRET,
                "AFFINITY_KEY": "header:X-Tenant",
                "PYTHONPATH": str(ROOT),
            }
        )
        cmd = [*server_command("gunicorn-sync", "tests.apps.wsgi_app:app", "127.0.0.1", port), "--preload"]
        node = ServerNode(0, "127.0.0.1", port, cmd, env, tmp_path / "preload.log")
        try:
            node.start()
            node.wait_ready()
            urls = [f"http://127.0.0.{i}:{port}" for i in (1, 2, 3)]
            with httpx.Client(trust_env=False, timeout=10.0) as client:
                assert _checksum(client, url) == StaticMembership(urls[:2]).ring.checksum
                dns_server.write(a_zone("127.0.0.1", "127.0.0.2", "127.0.0.3", ttl=1))
                new = StaticMembership(urls).ring.checksum
                wait_for(lambda: _checksum(client, url) == new, 5.0, "the forked worker refreshes")
        finally:
            node.stop()
