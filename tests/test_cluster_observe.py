"""Observability on a real cluster: counters move on the right nodes, Prometheus names, and the status page
rendered by a real headless Chromium."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cluster import Cluster

from affinity_mw import StaticMembership

ENV = {"AFFINITY_INTROSPECTION": "127.0.0.0/8"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("observe"), env=ENV) as c:
        yield c


def metrics(url: str) -> dict:  # type: ignore[type-arg]
    r = httpx.get(f"{url}/_affinity/metrics.json", trust_env=False)
    assert r.status_code == 200
    return r.json()  # type: ignore[no-any-return]


def test_a_forward_moves_the_right_counters_on_both_nodes(cluster: Cluster) -> None:
    ring = StaticMembership(cluster.urls).ring
    a, b = cluster.urls[0], cluster.urls[1]
    tenant = next(t for t in (f"m{i}" for i in range(500)) if ring.owner_of(t).id == b)  # type: ignore[union-attr]
    local = next(t for t in (f"m{i}" for i in range(500)) if ring.owner_of(t).id == a)  # type: ignore[union-attr]
    before_a, before_b = metrics(a), metrics(b)
    for _ in range(3):
        assert httpx.get(f"{a}/probe/{tenant}/echo", headers={"X-Tenant": tenant}, trust_env=False).status_code == 200
    httpx.get(f"{a}/probe/{local}/echo", headers={"X-Tenant": local}, trust_env=False)
    httpx.get(f"{a}/probe/nokey/echo", trust_env=False)
    after_a, after_b = metrics(a), metrics(b)

    def delta(after: dict, before: dict, name: str) -> int:  # type: ignore[type-arg]
        return int(after["counters"][name] - before["counters"][name])

    assert delta(after_a, before_a, "forwarded") == 3
    assert delta(after_a, before_a, "local_owner") == 1
    assert delta(after_a, before_a, "no_key") == 1
    assert delta(after_a, before_a, "hop") == 0
    assert delta(after_b, before_b, "hop") == 3
    assert delta(after_b, before_b, "forwarded") == 0
    assert delta(after_b, before_b, "misroute") == 0
    latency = after_a["forward_latency_seconds"][b]
    assert latency["count"] - before_a["forward_latency_seconds"].get(b, {"count": 0})["count"] == 3
    assert after_b["locality_ratio"] == 1.0


def test_prometheus_text_on_a_live_node(cluster: Cluster) -> None:
    text = httpx.get(f"{cluster.urls[0]}/_affinity/metrics", trust_env=False).text
    for name in (
        "affinity_forwarded_requests_total",
        "affinity_local_requests_total",
        "affinity_hop_requests_total",
        "affinity_ring_members 3.0",
        "affinity_locality_ratio",
        "affinity_forward_duration_seconds_bucket",
        "affinity_peer_ejections_total",
    ):
        assert name in text


def test_introspection_is_not_public_by_default(tmp_path: Path) -> None:
    with Cluster(tmp_path, n=2) as c:
        r = httpx.get(f"{c.urls[0]}/_affinity/status.json", trust_env=False)
        assert r.status_code == 404  # the app's own answer: the path does not exist for the public
        assert "ring" not in r.text


def test_owner_lookup_on_a_live_node(cluster: Cluster) -> None:
    data = httpx.get(f"{cluster.urls[2]}/_affinity", params={"key": "acme"}, trust_env=False).json()
    ring = StaticMembership(cluster.urls).ring
    assert data["owner"] == ring.owner_of("acme").id  # type: ignore[union-attr]
    assert len(data["failover_order"]) == 3


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "Chromium is required for the status page test: run scripts/system-deps.sh (apt-get install chromium)"
    return exe


def run_chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", f"--user-data-dir={tmp / 'chromium-profile'}",
    ]  # fmt: skip
    return subprocess.run([chromium(), *flags, *args], capture_output=True, text=True, timeout=90)


def test_status_page_renders_members_in_a_real_browser(cluster: Cluster, tmp_path: Path) -> None:
    url = f"{cluster.urls[0]}/_affinity"
    # Chromium asks for text/html first: the page, with its script run (virtual time lets the refresh fire).
    dom = run_chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    for member in cluster.urls:
        assert f'data-member="{member}"' in html, f"{member} not rendered"
    assert 'data-counter="forwarded"' in html
    assert 'data-arcs="3"' in html and 'data-svg="true"' in html  # the ring chart was drawn as real SVG
    shot = tmp_path / "status.png"
    r = run_chromium(tmp_path, "--window-size=1100,650", f"--screenshot={shot}", "--virtual-time-budget=3000", url)
    assert r.returncode == 0, r.stderr[-2000:]
    assert shot.stat().st_size > 10_000
