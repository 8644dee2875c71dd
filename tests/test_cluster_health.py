"""Membership changes under load on real clusters: a node SIGKILLed and restarted, a rolling restart with
draining, and nodes that disagree about membership."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest
from cluster import SECRET, Cluster, ServerNode, node_metrics
from figures import Figures
from load import Load

from affinity_mw import StaticMembership, hash_key
from affinity_mw.introspect import AUTH_HEADER, sign_drain, sign_request

KEYS = [f"k{i}" for i in range(100)]
STACKS = {
    "asgi": ("uvicorn", "tests.apps.asgi_app:app"),
    "wsgi": ("gunicorn-gthread", "tests.apps.wsgi_app:app"),
}
ENV = {"AFFINITY_EJECT_TIME": "2", "AFFINITY_HEALTH_INTERVAL": "0.3"}


def wait_until(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def served_by(url: str, key: str) -> str | None:
    try:
        r = httpx.get(f"{url}/tenants/{key}/hits", headers={"X-Tenant": key}, trust_env=False, timeout=5)
        return r.headers.get("x-affinity-served-by")
    except httpx.HTTPError:
        return None


@pytest.mark.reliability
@pytest.mark.parametrize("stack", list(STACKS))
def test_sigkill_moves_only_the_dead_nodes_keys_and_restart_brings_them_back(
    tmp_path: Path, stack: str, figures: Figures
) -> None:
    server, app = STACKS[stack]
    with Cluster(tmp_path, server=server, app=app, env=ENV) as c:
        ring = StaticMembership(c.urls).ring
        owner = {k: ring.owner_of(k).id for k in KEYS}  # type: ignore[union-attr]
        successor = {k: ring.successors(hash_key(k), 2)[1].id for k in KEYS}
        victim = c.nodes[2]
        assert any(owner[k] == victim.url for k in KEYS)
        with Load(list(c.urls), KEYS, threads=4) as load:
            time.sleep(1.5)
            load.ready(victim.url, False)  # the load balancer stops sending to it...
            killed_at = time.monotonic()
            victim.stop(signal.SIGKILL)  # ...as it dies
            time.sleep(2.0)
            # While it is down: its keys are served by their ring successors, every other key by its owner.
            for key in KEYS:
                assert served_by(c.urls[0], key) == (successor[key] if owner[key] == victim.url else owner[key])
            victim.start()
            victim.wait_ready()
            load.ready(victim.url, True)
            wait_until(
                lambda: all(served_by(c.urls[0], k) == victim.url for k in KEYS if owner[k] == victim.url),
                15,
                "the restarted node to get its keys back",
            )
            time.sleep(0.5)
        results = load.snapshot()
        assert len(results) > 200
        # The only failures allowed: requests the client had sent straight to the victim when it died.
        failed = [r for r in results if r.status != 200]
        in_flight = [r for r in failed if r.url == victim.url and r.started <= killed_at]
        figures.record(
            "peer SIGKILLed under GET load, then restarted",
            stack=stack,
            sent=len(results),
            failed=len(failed) - len(in_flight),
            notes=f"{len(in_flight)} GETs sent straight to the victim as it died (the load balancer's, not ours)",
        )
        assert failed == in_flight, failed[:5]
        assert len(in_flight) <= 4  # at most one per load thread
        for r in results:
            if r.status == 200 and r.ended < killed_at:
                assert r.served_by == owner[r.key]


@pytest.mark.reliability
@pytest.mark.parametrize("stack", list(STACKS))
def test_rolling_restart_with_draining_fails_no_request(tmp_path: Path, stack: str, figures: Figures) -> None:
    server, app = STACKS[stack]
    with Cluster(tmp_path, server=server, app=app, env=ENV) as c:
        with Load(list(c.urls), KEYS, threads=4) as load:
            time.sleep(1.0)
            resets = {}
            for node in c.nodes:
                others = [n.url for n in c.nodes if n is not node]
                before = {u: retries(u) for u in others}
                restart_with_draining(node, load)
                # No peer may meet a reset from the stopping node (a retry): requests must never reach a listener
                # that no longer accepts. A 502 from such a reset is a matter of timing; the retry is not.
                resets[node.url] = sum(retries(u) - before[u] for u in others)
            time.sleep(1.0)
        results = load.snapshot()
        assert len(results) > 300
        assert set(resets.values()) == {0}, resets
        failed = [r for r in results if r.status != 200]
        figures.record(
            "rolling restart of all 3 nodes with draining", stack=stack, sent=len(results), failed=len(failed)
        )
        assert failed == [], failed[:5]


def retries(url: str) -> int:
    return int(node_metrics(url)["counters"]["retries"])


def restart_with_draining(node: ServerNode, load: Load) -> None:
    """What a Kubernetes preStop hook plus SIGTERM do: drain, let peers and the load balancer notice, stop,
    start again, become ready."""
    r = httpx.post(
        f"{node.url}/_affinity/health/drain",
        headers={AUTH_HEADER: sign_drain(SECRET, node.url)},
        trust_env=False,
        timeout=5,
    )
    assert r.status_code == 200
    assert httpx.get(f"{node.url}/_affinity/health", trust_env=False).status_code == 503
    load.ready(node.url, False)
    time.sleep(1.0)
    node.stop(signal.SIGTERM)
    node.start()
    node.wait_ready()
    load.ready(node.url, True)
    time.sleep(0.5)


def test_membership_skew_is_counted_and_visible_with_one_hop(tmp_path: Path) -> None:
    c = Cluster(tmp_path, n=3)
    u = c.urls
    c.nodes[0].env["AFFINITY_PEERS"] = ",".join(u)  # node 1 knows all three
    c.nodes[1].env["AFFINITY_PEERS"] = ",".join(u[:2])  # node 2 has not seen node 3 yet
    c.nodes[2].env["AFFINITY_PEERS"] = ",".join(u)
    with c:
        signed = {AUTH_HEADER: sign_request(SECRET)}
        health = [httpx.get(f"{url}/_affinity/health", headers=signed, trust_env=False).json() for url in u]
        assert health[0]["ring_checksum"] == health[2]["ring_checksum"] != health[1]["ring_checksum"]
        ring_all = StaticMembership(u).ring
        skewed = 0
        for i in range(100):
            key = f"s{i}"
            r = httpx.get(f"{u[0]}/probe/{key}/echo", headers={"X-Tenant": key}, trust_env=False)
            body = r.json()
            assert body["node"] == ring_all.owner_of(key).id  # type: ignore[union-attr]
            assert body["decision"]["hops"] <= 1
            if body["node"] == u[1]:
                assert body["decision"]["ring_skew"] is True
                skewed += 1
        assert skewed > 0
        counters = httpx.get(f"{u[1]}/_affinity/health", headers=signed, trust_env=False).json()["counters"]
        assert counters["ring_skew"] == skewed
        assert counters["hop"] == skewed
