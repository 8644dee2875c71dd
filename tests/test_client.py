"""``affinity_mw.client``: httpx transports that send each request straight to its owner, against a real
three-node cluster (uvicorn on 127.0.0.1-3): no request hops (the nodes' own counters say so), and a dead
owner's requests go to its successor."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from cluster import Cluster, kill, node_metrics

from affinity_mw.client import AffinityTransport, AsyncAffinityTransport
from affinity_mw.membership import StaticMembership

TENANTS = [f"tenant-{i}" for i in range(60)]


def counters(c: Cluster) -> dict[str, dict[str, int]]:
    return {url: node_metrics(url)["counters"] for url in c.urls}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Cluster:  # type: ignore[misc]
    with Cluster(tmp_path_factory.mktemp("client"), env={"AFFINITY_KEY": "header:X-Tenant,path:/tenants/{key}/"}) as c:
        yield c


def env_of(c: Cluster) -> dict[str, str]:
    # What a caller in the cluster is given: the members and the key sources, not the secret.
    return {"AFFINITY_PEERS": ",".join(c.urls), "AFFINITY_KEY": "header:X-Tenant,path:/tenants/{key}/"}


def test_every_request_goes_straight_to_its_owner(cluster: Cluster) -> None:
    ring = StaticMembership(cluster.urls).ring
    before = counters(cluster)
    transport = AffinityTransport(environ=env_of(cluster))
    sent = 0
    with httpx.Client(base_url="http://app.invalid", transport=transport, trust_env=False) as client:
        for tenant in TENANTS:
            owner = ring.owner_of(tenant).id  # type: ignore[union-attr]
            r = client.get("/probe/stats", headers={"X-Tenant": tenant})
            assert r.status_code == 200 and r.headers["x-affinity-served-by"] == owner
            r = client.post(f"/tenants/{tenant}/hits")  # the key from the path, and a POST
            assert r.status_code == 200 and r.headers["x-affinity-served-by"] == owner
            sent += 2
        # No key: any node, in turn; the node's middleware decides (a keyless request is served where it lands).
        served = {client.get("/probe/stats").headers["x-affinity-served-by"] for _ in range(6)}
        assert served == set(cluster.urls)
    after = counters(cluster)
    assert sum(after[u]["forwarded"] - before[u]["forwarded"] for u in cluster.urls) == 0
    assert sum(after[u]["local_owner"] - before[u]["local_owner"] for u in cluster.urls) == sent


def test_the_async_transport_does_the_same(cluster: Cluster) -> None:
    ring = StaticMembership(cluster.urls).ring
    before = counters(cluster)

    async def run() -> list[tuple[str, str]]:
        transport = AsyncAffinityTransport(environ=env_of(cluster))
        async with httpx.AsyncClient(base_url="http://app.invalid", transport=transport, trust_env=False) as client:
            responses = await asyncio.gather(*(client.get("/probe/stats", headers={"X-Tenant": t}) for t in TENANTS))
        return [(t, r.headers["x-affinity-served-by"]) for t, r in zip(TENANTS, responses, strict=True)]

    for tenant, served_by in asyncio.run(run()):
        assert served_by == ring.owner_of(tenant).id  # type: ignore[union-attr]
    after = counters(cluster)
    assert sum(after[u]["forwarded"] - before[u]["forwarded"] for u in cluster.urls) == 0


def test_a_dead_owners_requests_go_to_its_successor(tmp_path: Path) -> None:
    with Cluster(tmp_path, env={"AFFINITY_KEY": "header:X-Tenant"}) as c:
        ring = StaticMembership(c.urls).ring
        victim = c.nodes[1]
        kill(victim)
        env = {"AFFINITY_PEERS": ",".join(c.urls), "AFFINITY_KEY": "header:X-Tenant"}
        expected = {}
        for tenant in TENANTS:
            order = [n.id for n in ring.successors(ring.key_hash(tenant))]
            expected[tenant] = order[1] if order[0] == victim.url else order[0]
        assert victim.url in {ring.owner_of(t).id for t in TENANTS}  # type: ignore[union-attr]
        live = [u for u in c.urls if u != victim.url]
        before = {u: node_metrics(u)["counters"] for u in live}
        with httpx.Client(base_url="http://app.invalid", transport=AffinityTransport(environ=env)) as client:
            for tenant in TENANTS:
                r = client.get("/probe/stats", headers={"X-Tenant": tenant})
                assert r.status_code == 200 and r.headers["x-affinity-served-by"] == expected[tenant]

        async def run() -> dict[str, str]:
            transport = AsyncAffinityTransport(environ=env)
            async with httpx.AsyncClient(base_url="http://app.invalid", transport=transport) as client:
                served = {}
                for tenant in TENANTS:
                    r = await client.get("/probe/stats", headers={"X-Tenant": tenant})
                    served[tenant] = r.headers["x-affinity-served-by"]
                return served

        assert asyncio.run(run()) == expected
        # Straight to the successor. The successor's own middleware still tries the dead owner until it sets it
        # aside (AFFINITY_EJECT_AFTER=5 refused connects), so each live node counts at most those 5 forwards; a
        # transport that sent requests anywhere would make the live nodes forward about 2 in 3 of 120 requests.
        after = {u: node_metrics(u)["counters"] for u in live}
        assert all(after[u]["forwarded"] - before[u]["forwarded"] <= 5 for u in live)
