"""Hot tenants on real clusters: bounded loads spread a hot key and leave the others home, excluded routes are
served where they land, shadow mode serves everything here and reports what routing would do."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import httpx
import pytest
from cluster import Cluster, node_metrics

from affinity_mw import StaticMembership, hash_key

APP = "bench.hot_tenants:app"  # every request holds one of 2 slots for 20 ms: a node of known capacity


def run_load(urls: list[str], pick: object, requests: int, threads: int = 9, path: str = "/t/{key}") -> list[dict]:  # type: ignore[type-arg]
    """``requests`` GETs from ``threads`` closed-loop clients, each to a random node; bounded in time too."""
    results: list[dict] = []  # type: ignore[type-arg]
    lock = threading.Lock()
    count = iter(range(requests))
    deadline = time.monotonic() + 60

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(trust_env=False, timeout=10) as client:
            while time.monotonic() < deadline:
                with lock:
                    if next(count, None) is None:
                        return
                key = pick(rng)  # type: ignore[operator]
                url = rng.choice(urls)
                r = client.get(url + path.format(key=key), headers={"X-Tenant": key})
                with lock:
                    results.append({"key": key, "entry": url, "status": r.status_code,
                                    "served_by": r.headers.get("x-affinity-served-by"),
                                    "owner": r.headers.get("x-affinity-owner")})  # fmt: skip

    workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=90)
    return results


def test_bounded_loads_spread_the_hot_key_and_leave_the_others_home(tmp_path: Path) -> None:
    env = {"AFFINITY_BALANCE_FACTOR": "1.25", "AFFINITY_INTROSPECTION": "127.0.0.0/8"}
    with Cluster(tmp_path, app=APP, env=env) as cluster:
        ring = StaticMembership(cluster.urls).ring
        cold = [f"cold{i}" for i in range(60)]

        def pick(rng: random.Random) -> str:
            return "hot" if rng.random() < 0.5 else rng.choice(cold)

        results = run_load(cluster.urls, pick, 2400)
        assert len(results) == 2400
        assert all(r["status"] == 200 for r in results), [r for r in results if r["status"] != 200][:3]
        owner = ring.owner_of("hot").id  # type: ignore[union-attr]
        hot = [r for r in results if r["key"] == "hot"]
        spilled = [r for r in hot if r["served_by"] != owner]
        assert len(spilled) > len(hot) // 10, "the hot key never left its owner"
        order = [n.id for n in ring.successors(hash_key("hot"))]
        assert {r["served_by"] for r in spilled} <= set(order[1:])
        others = [r for r in results if r["key"] != "hot"]
        assert all(r["owner"] == ring.owner_of(r["key"]).id for r in others)  # type: ignore[union-attr]
        locality = sum(r["served_by"] == r["owner"] for r in others) / len(others)
        assert locality >= 0.97
        # Every node shows the hot key, by its hash, and what it spilled where.
        status = httpx.get(f"{cluster.urls[0]}/_affinity/status.json", trust_env=False).json()
        assert status["hot_keys"][0]["key"] == f"{hash_key('hot'):016x}"
        assert "hot" not in str(status["hot_keys"])
        spilled_here = sum(node_metrics(url)["balance"]["spilled_to"].get(peer, 0)
                           for url in cluster.urls for peer in order[1:])  # fmt: skip
        assert spilled_here == len(spilled)
        text = httpx.get(f"{cluster.urls[0]}/_affinity/metrics", trust_env=False).text
        assert "affinity_hot_key_share{key=" in text and "affinity_spilled_requests_total{peer=" in text


def test_excluded_routes_are_served_where_they_land(tmp_path: Path) -> None:
    env = {"AFFINITY_ROUTES": "!GET /reports/**"}
    with Cluster(tmp_path, app=APP, env=env) as cluster:
        ring = StaticMembership(cluster.urls).ring
        a = cluster.urls[0]
        remote = next(t for t in (f"r{i}" for i in range(500)) if ring.owner_of(t).id != a)  # type: ignore[union-attr]
        with httpx.Client(trust_env=False, timeout=10) as client:
            report = client.get(f"{a}/reports/{remote}/q1", headers={"X-Tenant": remote})
            write = client.post(f"{a}/reports/{remote}/q1", headers={"X-Tenant": remote})
            other = client.get(f"{a}/orders/{remote}", headers={"X-Tenant": remote})
        assert report.status_code == write.status_code == other.status_code == 200
        assert report.headers["x-affinity-served-by"] == a
        assert write.headers["x-affinity-served-by"] == other.headers["x-affinity-served-by"] != a
        assert node_metrics(a)["counters"]["excluded"] == 1


def test_shadow_mode_serves_everything_here_and_reports_what_routing_would_do(tmp_path: Path) -> None:
    env = {"AFFINITY_MODE": "shadow", "AFFINITY_BALANCE_FACTOR": "1.25"}
    with Cluster(tmp_path, app=APP, env=env) as cluster:
        ring = StaticMembership(cluster.urls).ring
        keys = [f"s{i}" for i in range(30)]
        results = run_load(cluster.urls, lambda rng: rng.choice(keys), 600, threads=3)
        assert all(r["status"] == 200 for r in results)
        assert all(r["served_by"] == r["entry"] for r in results)  # nothing forwarded
        for url in cluster.urls:
            shadow = node_metrics(url)["shadow"]
            mine = [r for r in results if r["entry"] == url]
            assert shadow["keyed_requests"] == len(mine)
            today = sum(ring.owner_of(r["key"]).id == url for r in mine) / len(mine)  # type: ignore[union-attr]
            assert shadow["locality_today"] == pytest.approx(today, abs=1e-3)
            assert shadow["locality_routed"] == 1.0  # no key is heavy enough to spill
            assert sum(shadow["load"].values()) == pytest.approx(1.0, abs=1e-3)
            assert node_metrics(url)["counters"]["forwarded"] == 0


@pytest.mark.parametrize(
    ("server", "app"),
    [
        ("uvicorn", "tests.apps.unrouted_apps:fastapi_app"),
        ("gunicorn-gthread", "tests.apps.unrouted_apps:flask_app"),
        ("gunicorn-gthread", "tests.apps.django_unrouted.app:application"),
    ],
)
def test_views_marked_unrouted_are_served_where_they_land(tmp_path: Path, server: str, app: str) -> None:
    with Cluster(tmp_path, app=app, server=server) as cluster:
        ring = StaticMembership(cluster.urls).ring
        a = cluster.urls[0]
        remote = next(t for t in (f"u{i}" for i in range(500)) if ring.owner_of(t).id != a)  # type: ignore[union-attr]
        owner = ring.owner_of(remote).id  # type: ignore[union-attr]
        with httpx.Client(trust_env=False, timeout=10) as client:
            served = {
                path: client.get(f"{a}{path}", headers={"X-Tenant": remote}).headers["x-affinity-served-by"]
                for path in (f"/reports/{remote}", f"/orders/{remote}")
            }
            if "flask" not in app:  # a router-wide FastAPI dependency; a Django class-based view under include()
                r = client.get(f"{a}/exports/{remote}/2024/q1.csv", headers={"X-Tenant": remote})
                served["/exports"] = r.headers["x-affinity-served-by"]
        assert served[f"/reports/{remote}"] == a
        assert served[f"/orders/{remote}"] == owner
        assert served.get("/exports", a) == a
