"""Introspection and metrics: access rules, owner lookups, JSON and Prometheus output (unit level; the cluster
and browser tests are in test_cluster_observe.py)."""

from __future__ import annotations

import json
import time
from typing import Any

from itsdangerous import TimestampSigner

from affinity_mw.core import AffinityCore
from affinity_mw.introspect import AUTH_HEADER, render_page, sign_request
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
