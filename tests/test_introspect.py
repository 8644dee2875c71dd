"""Introspection and metrics: access rules, owner lookups, JSON and Prometheus output (unit level; the cluster
and browser tests are in test_cluster_observe.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cluster import SECRET as CLUSTER_SECRET
from cluster import Cluster
from itsdangerous import TimestampSigner

from affinity_mw.core import AffinityCore
from affinity_mw.introspect import AUTH_HEADER, render_page, sign_drain, sign_request
from affinity_mw.membership import StaticMembership
from affinity_mw.ring import hash_key

URLS = ["http://127.0.0.1:1", "http://127.0.0.2:1", "http://127.0.0.3:1"]
SECRET = "introspect-secret-0123456789"


def core(**options: Any) -> AffinityCore:
    return AffinityCore(environ={}, peers=URLS, self_url=URLS[0], secret=SECRET, key="header:X", **options)


def ask(c: AffinityCore, path: str = "/_affinity", query: str = "", client: str | None = "203.0.113.5",
        headers: dict[str, str] | None = None, method: str = "GET") -> Any:  # fmt: skip
    hdrs = {k.lower(): v for k, v in (headers or {}).items()}
    return c.internal_response(method, path, client, query, hdrs.get)


def test_default_is_signed_requests_only() -> None:
    c = core()
    assert ask(c) is None, "unsigned requests fall through to the app"
    assert ask(c, client="127.0.0.1") is None
    status, body, ctype = ask(c, headers={AUTH_HEADER: sign_request(SECRET)})
    assert status == 200 and ctype == "application/json" and json.loads(body)["node"] == URLS[0]
    assert ask(c, headers={AUTH_HEADER: sign_request("another-secret-0123456789")}) is None
    stale = TimestampSigner(SECRET, salt="affinity-mw.introspect.v1")
    stale.get_timestamp = lambda: int(time.time()) - 120  # type: ignore[method-assign]
    assert ask(c, headers={AUTH_HEADER: stale.sign("introspect").decode()}) is None


def test_networks_on_and_off() -> None:
    nets = core(introspection="signed,127.0.0.0/8,10.0.0.0/8")
    assert ask(nets, client="10.1.2.3")[0] == 200
    assert ask(nets, client="192.0.2.1") is None
    assert ask(nets, client="not-an-ip") is None
    assert ask(core(introspection="on"))[0] == 200
    assert ask(core(introspection="off"), headers={AUTH_HEADER: sign_request(SECRET)}) is None


def test_status_json_describes_members_shares_and_health() -> None:
    c = core(introspection="on")
    c.health.draining(URLS[2])
    data = json.loads(ask(c, "/_affinity/status.json")[1])
    assert data["ring"]["checksum"] == c.membership.ring.checksum
    members = {m["id"]: m for m in data["ring"]["members"]}
    assert set(members) == set(URLS)
    assert members[URLS[0]]["health"] == "self" and members[URLS[1]]["health"] == "ok"
    assert members[URLS[2]]["health"] == "draining"
    assert abs(sum(m["share"] for m in members.values()) - 1) < 1e-3


def test_owner_of_key_and_failover_order() -> None:
    c = core(introspection="on")
    data = json.loads(ask(c, query="key=acme")[1])
    order = [n.id for n in StaticMembership(URLS).ring.successors(hash_key("acme"))]
    assert data["owner"] == order[0] and data["failover_order"] == order
    assert data["key_hash"] == f"{hash_key('acme'):016x}"


def test_html_page_for_browsers_is_self_contained() -> None:
    c = core(introspection="on")
    status, body, ctype = ask(c, headers={"Accept": "text/html,application/xhtml+xml"})
    page = body.decode()
    assert status == 200 and ctype.startswith("text/html")
    # No external assets: no scripts, styles, fonts or images fetched from anywhere.
    for asset in ("src=", "<link", "@import", "url(", "https://"):
        assert asset not in page
    rest = page.replace(URLS[0], "").replace(URLS[1], "").replace(URLS[2], "").replace("http://www.w3.org/2000/svg", "")
    assert "http://" not in rest
    for url in URLS:
        assert url in page
    # Nothing in the data can close the script element it is embedded in.
    hostile = render_page({"node": "</script><script>alert(1)</script>", "ring": {}}, "/_affinity")
    assert "</script><script>alert" not in hostile


def test_metrics_json_and_prometheus_names() -> None:
    c = core(introspection="on")
    c.counters["forwarded"] += 3
    c.counters["local_owner"] += 7
    c.counters["hop"] += 2
    c.counters["misroute"] += 1
    c.metrics.observe_forward(URLS[1], 0.0007)
    c.metrics.observe_forward(URLS[1], 0.3)
    snapshot = json.loads(ask(c, "/_affinity/metrics.json")[1])
    assert snapshot["counters"]["forwarded"] == 3
    assert snapshot["locality_ratio"] == (7 + 2 - 1) / (7 + 2)
    assert snapshot["forward_latency_seconds"][URLS[1]]["count"] == 2
    status, text, ctype = ask(c, "/_affinity/metrics")
    text = text.decode()
    assert status == 200 and ctype.startswith("text/plain")
    assert "affinity_forwarded_requests_total 3.0" in text
    assert "affinity_local_requests_total 7.0" in text
    assert f'affinity_forward_duration_seconds_bucket{{le="0.001",peer="{URLS[1]}"}} 1.0' in text
    assert f'affinity_forward_duration_seconds_count{{peer="{URLS[1]}"}} 2.0' in text
    assert "affinity_locality_ratio 0.888" in text
    assert f'affinity_ring_info{{checksum="{c.membership.ring.checksum}",node="{URLS[0]}"}} 1.0' in text


def test_unknown_subpath_and_methods() -> None:
    c = core(introspection="on")
    assert ask(c, "/_affinity/nope")[0] == 404
    assert ask(c, method="POST")[0] == 405
    assert ask(c, "/_affinityx") is None


def test_locality_ratio_covers_the_recent_window_not_the_process_lifetime() -> None:
    """An hour of steady traffic, then a 10-minute outage (every request a failover), then recovery: the ratio
    shows the outage while it lasts and is back to 1 one window after it, whatever the process's age."""
    c = core(introspection="on")
    metrics, counters = c.metrics, c.counters
    now = [0.0]
    metrics.clock = lambda: now[0]

    def minute(**served: int) -> float | None:
        for name, count in served.items():
            counters[name] += count
        now[0] += 60
        return metrics.locality_ratio()  # one scrape a minute

    for _ in range(60):
        assert minute(local_owner=900, hop=100) == 1.0
    during = [minute(failover=1000) for _ in range(10)]
    assert during[-1] == 0.0, "ten minutes of failover only: the last five minutes were all away from the owners"
    assert during[0] is not None and during[0] < 0.85
    after = [minute(local_owner=1000) for _ in range(10)]
    assert after[-1] == 1.0, after
    idle = [minute() for _ in range(6)]
    assert idle[0] == 1.0 and idle[-1] is None, "no keyed request in the window: no ratio (the gauge reads 1)"
    assert "affinity_locality_ratio 1.0" in ask(c, "/_affinity/metrics")[1].decode()


# ----------------------------------------------------------------------------------------------------------
# Draining is its own purpose, bound to the node and the action
# ----------------------------------------------------------------------------------------------------------


def drain(c: AffinityCore, auth: str | None, method: str = "POST") -> int:
    headers = {AUTH_HEADER: auth} if auth is not None else {}
    return int(ask(c, "/_affinity/health/drain", headers=headers, method=method)[0])


def test_status_token_cannot_drain() -> None:
    c = core()
    assert ask(c, headers={AUTH_HEADER: sign_request(SECRET)})[0] == 200  # it does open the status page
    assert drain(c, sign_request(SECRET)) == 403
    assert drain(c, None) == 403
    assert not c.draining


def test_drain_token_is_bound_to_node_and_action() -> None:
    c = core()
    assert drain(c, sign_drain(SECRET, URLS[1])) == 403, "signed for another node"
    assert drain(c, sign_drain(SECRET, None)) == 403, "signed for a non-member"
    assert drain(c, sign_drain(SECRET, URLS[0], undo=True)) == 403, "an undo token does not drain"
    assert drain(c, sign_drain("another-secret-0123456789", URLS[0])) == 403
    assert not c.draining
    assert drain(c, sign_drain(SECRET, URLS[0])) == 200 and c.draining
    assert drain(c, sign_drain(SECRET, URLS[0]), method="DELETE") == 403, "a drain token does not undo"
    assert c.draining
    assert drain(c, sign_drain(SECRET, URLS[0], undo=True), method="DELETE") == 200 and not c.draining
    # A drain token opens nothing else: not the status page, not the health details.
    assert ask(c, headers={AUTH_HEADER: sign_drain(SECRET, URLS[0])}) is None
    stale = TimestampSigner(SECRET, salt="affinity-mw.drain.v1")
    stale.get_timestamp = lambda: int(time.time()) - 120  # type: ignore[method-assign]
    assert drain(c, stale.sign(f"drain {URLS[0]}").decode()) == 403


def test_non_member_is_drained_by_a_token_for_no_node() -> None:
    c = AffinityCore(environ={}, peers=URLS, secret=SECRET, key="header:X")
    assert c.self_id is None
    assert drain(c, sign_drain(SECRET, URLS[0])) == 403
    assert drain(c, sign_drain(SECRET, None)) == 200 and c.draining


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("drain"), n=2) as c:
        yield c


def node_status(url: str) -> str:
    r = httpx.get(f"{url}/_affinity/health", trust_env=False, timeout=10)
    return str(r.json()["status"])


def test_drain_on_real_nodes(two_nodes: Cluster) -> None:
    """On real uvicorn nodes: a status-page token (what `affinity-mw check` sends) and a drain token for the
    other node are refused; the node's own drain token drains it, and only an undo token undoes it."""
    a, b = two_nodes.urls
    path = "/_affinity/health/drain"
    for auth in (sign_request(CLUSTER_SECRET), sign_drain(CLUSTER_SECRET, b)):
        r = httpx.post(a + path, headers={AUTH_HEADER: auth}, trust_env=False, timeout=10)
        assert r.status_code == 403, r.text
    assert node_status(a) == "ok" and node_status(b) == "ok"
    token = sign_drain(CLUSTER_SECRET, a)
    assert httpx.post(a + path, headers={AUTH_HEADER: token}, trust_env=False, timeout=10).status_code == 200
    assert node_status(a) == "draining"
    # The captured drain token, replayed: not at the other node, not as an undo.
    assert httpx.post(b + path, headers={AUTH_HEADER: token}, trust_env=False, timeout=10).status_code == 403
    assert httpx.delete(a + path, headers={AUTH_HEADER: token}, trust_env=False, timeout=10).status_code == 403
    assert node_status(a) == "draining" and node_status(b) == "ok"
    undo = sign_drain(CLUSTER_SECRET, a, undo=True)
    assert httpx.delete(a + path, headers={AUTH_HEADER: undo}, trust_env=False, timeout=10).status_code == 200
    assert node_status(a) == "ok"


def test_drain_command_on_a_real_node(two_nodes: Cluster) -> None:
    """`affinity-mw drain URL` learns the node's id from the node itself (no AFFINITY_SELF in its environment,
    as in a preStop hook of a DNS-membership pod) and signs for that node and action."""
    url = two_nodes.urls[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFFINITY_")}
    env["AFFINITY_SECRET"] = CLUSTER_SECRET
    command = [sys.executable, "-m", "affinity_mw.cli", "drain", url]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    assert node_status(url) == "draining"
    done = subprocess.run([*command, "--undo"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    assert node_status(url) == "ok"
    # Signed for the other node (--node): refused, exit status 1.
    other = [*command, "--node", two_nodes.urls[0]]
    done = subprocess.run(other, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and node_status(url) == "ok"
