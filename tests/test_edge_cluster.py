"""A three-node cluster (``AFFINITY_RING=nginx``) behind a real nginx configured by ``affinity_mw.edge``.

While nginx lists every node, no request hops and each node's edge agreement is 1. When nginx lists only two
of the three (a stale configuration after a scale-up), every key is still served by its owner, with one hop for
exactly the keys the stale nginx places elsewhere, and the nodes count those as edge disagreements.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cluster import Cluster, free_port, node_metrics
from proxies import get, nginx, pipelined

from affinity_mw.edge import nginx_config
from affinity_mw.ring import NginxRing, Node

TENANTS = [f"tenant-{i}" for i in range(300)]


def counters(c: Cluster) -> dict[str, dict[str, Any]]:
    return {url: node_metrics(url) for url in c.urls}


def through(front: int, tenants: list[str]) -> list[dict[bytes, bytes]]:
    return pipelined("127.0.0.1", front, [get("/probe/stats", {b"X-Tenant": t.encode()}) for t in tenants])


def test_no_hop_behind_nginx_and_every_key_on_its_owner_when_nginx_is_stale(tmp_path: Path) -> None:
    env = {"AFFINITY_KEY": "header:X-Tenant", "AFFINITY_RING": "nginx"}
    with Cluster(tmp_path, env=env) as c:
        ring = NginxRing([Node(u, u) for u in c.urls])
        stale = NginxRing([Node(u, u) for u in c.urls[:2]])
        fresh_port, stale_port = free_port(["127.0.0.1"]), free_port(["127.0.0.1"])
        fresh_conf = nginx_config(ring, "header:X-Tenant", listen=f"127.0.0.1:{fresh_port}")
        stale_conf = nginx_config(stale, "header:X-Tenant", listen=f"127.0.0.1:{stale_port}")
        fresh = nginx(tmp_path / "fresh", fresh_conf, [("127.0.0.1", fresh_port)])
        stale_nginx = nginx(tmp_path / "stale", stale_conf, [("127.0.0.1", stale_port)])
        with fresh, stale_nginx:
            before = counters(c)
            answers = through(fresh_port, TENANTS)
            after = counters(c)
            for tenant, answer in zip(TENANTS, answers, strict=True):
                assert answer[b":status"] == b"200"
                assert answer[b"x-affinity-served-by"].decode() == owner(ring, tenant)
            for url in c.urls:
                assert after[url]["counters"]["forwarded"] == before[url]["counters"]["forwarded"]
                assert after[url]["counters"]["hop"] == before[url]["counters"]["hop"]
                assert after[url]["edge_agreement"] == 1.0

            # nginx still lists two nodes: each key lands on its owner all the same, one hop for the moved ones.
            moved = [t for t in TENANTS if owner(stale, t) != owner(ring, t)]
            assert 60 < len(moved) < 140  # about the third node's share
            answers = through(stale_port, TENANTS)
            final = counters(c)
            for tenant, answer in zip(TENANTS, answers, strict=True):
                assert answer[b"x-affinity-served-by"].decode() == owner(ring, tenant)
            forwarded = sum(final[u]["counters"]["forwarded"] - after[u]["counters"]["forwarded"] for u in c.urls)
            hops = sum(final[u]["counters"]["hop"] - after[u]["counters"]["hop"] for u in c.urls)
            assert forwarded == hops == len(moved)
            # A node's edge agreement: of the keyed requests the edge sent it, the share it owns (both phases).
            for url in c.urls:
                owned = sum(1 for t in TENANTS if owner(ring, t) == url)
                sent = [t for t in TENANTS if owner(stale, t) == url]
                agreed = owned + sum(1 for t in sent if owner(ring, t) == url)
                assert final[url]["edge_agreement"] == agreed / (owned + len(sent))
            assert final[c.urls[2]]["edge_agreement"] == 1.0
            assert min(final[u]["edge_agreement"] for u in c.urls[:2]) < 0.9


def owner(ring: NginxRing, key: str) -> str:
    node = ring.owner_of(key)
    assert node is not None
    return node.id
