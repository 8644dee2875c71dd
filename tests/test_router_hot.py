"""The router with bounded loads, hot keys, a route policy and shadow mode (unit tests, no servers)."""

from __future__ import annotations

from affinity_mw import keys
from affinity_mw.balance import Balancer, BoundedLoads
from affinity_mw.hop import HopSigner
from affinity_mw.hotkeys import HotKeys
from affinity_mw.membership import StaticMembership
from affinity_mw.request import RequestView
from affinity_mw.ring import hash_key
from affinity_mw.router import Router
from affinity_mw.routes import RoutePolicy

URLS = ["http://127.0.0.1:1", "http://127.0.0.2:1", "http://127.0.0.3:1"]
SIGNER = HopSigner("router-test-secret-0123456789")
RING = StaticMembership(URLS).ring


def router(self_url: str = URLS[0], factor: float | None = None, **kw: object) -> Router:
    hot = HotKeys(16, 256)
    balancer = Balancer(BoundedLoads(factor, floor=1), len(URLS), hot) if factor else None
    return Router(
        membership=StaticMembership(URLS, self_url),
        extractor=keys.header("X-Tenant"),
        signer=SIGNER,
        hot=hot,
        balancer=balancer,
        **kw,  # type: ignore[arg-type]
    )


def view(tenant: str, method: str = "GET", path: str = "/") -> RequestView:
    return RequestView(method, path, b"", [(b"x-tenant", tenant.encode())], "127.0.0.9")


def owned_by(url: str, n: int = 40) -> list[str]:
    return [t for t in (f"t{i}" for i in range(2000)) if RING.owner_of(t).id == url][:n]  # type: ignore[union-attr]


def test_a_hot_key_spills_to_its_successors_while_cold_keys_stay_home() -> None:
    r = router(factor=1.25)
    assert r.balancer is not None
    r.balancer.loads.inflight = 5  # busy: above the floor
    hot = owned_by(URLS[0], 1)[0]
    order = [n.id for n in RING.successors(hash_key(hot))]
    cold = [t for url in URLS for t in owned_by(url, 21) if t != hot]
    spilled = []
    for i in range(3000):
        if i % 2:
            d = r.decide(view(hot))
            spilled.append(d.reason == "spill")
            if d.reason == "spill":
                # The key's next successors, in ring order: the first one served here or forwarded to.
                target = r.membership.self_id if d.action == "local" else d.candidates[0].id
                assert target in order[1:] and d.owner.id == order[0]  # type: ignore[union-attr]
        else:
            d = r.decide(view(cold[i % len(cold)]))
            assert d.reason == "owner", d  # never moved: far below (factor - 1) / n of the requests each
    assert 0.2 < sum(spilled[-500:]) / 500 < 0.8
    assert r.counters["spilled"] == sum(spilled)
    assert sum(r.balancer.spilled_to.values()) == sum(spilled)
    assert r.balancer.spilled_keys == {hot: sum(spilled)}
    assert r.hot is not None and r.hot.top(1)[0][0] == hot


def test_without_a_factor_nothing_spills_but_hot_keys_are_counted() -> None:
    r = router()
    hot = owned_by(URLS[1], 1)[0]
    for _ in range(500):
        d = r.decide_by_header(hot.encode(), "GET", "/")
        assert d.reason == "owner" and d.action == "forward"
    assert r.hot is not None and r.hot.top(1) == [(hot, 1.0)]
    assert r.counters["spilled"] == 0


def test_the_header_fast_path_counts_hot_keys_and_spreads_like_decide() -> None:
    by_view, by_header = router(factor=1.25), router(factor=1.25)
    for r in (by_view, by_header):
        assert r.balancer is not None
        r.balancer.loads.inflight = 5
    hot = owned_by(URLS[0], 1)[0]
    for _ in range(400):
        a = by_view.decide(view(hot))
        b = by_header.decide_by_header(hot.encode(), "GET", "/")
        assert (a.action, a.reason, [n.id for n in a.candidates]) == (b.action, b.reason, [n.id for n in b.candidates])
    assert by_view.counters == by_header.counters
    assert by_header.counters["spilled"] > 0


def test_excluded_routes_are_served_here_without_extracting_a_key() -> None:
    calls = []

    def extractor(v: RequestView) -> str | None:
        calls.append(v.path)
        return v.header("x-tenant")

    r = Router(
        membership=StaticMembership(URLS, URLS[0]), extractor=extractor, signer=SIGNER,
        routes=RoutePolicy.parse("!GET /reports/**"),
    )  # fmt: skip
    remote = owned_by(URLS[1], 1)[0]
    d = r.decide(view(remote, "GET", "/reports/2024"))
    assert (d.action, d.reason, d.key) == ("local", "excluded", None)
    assert calls == []  # no key extraction
    assert r.decide(view(remote, "POST", "/reports/2024")).action == "forward"
    assert r.counters["excluded"] == 1
    # The plain-header fast path obeys the same policy.
    header_router = router(routes=RoutePolicy.parse("!GET /reports/**"))
    assert header_router.decide_by_header(remote.encode(), "GET", "/reports/x").reason == "excluded"
    assert header_router.decide_by_header(remote.encode(), "GET", "/orders/x").action == "forward"
    # A hop is served where it lands, as always.
    marker = SIGNER.verify(SIGNER.sign(sender=URLS[2], key_hash=hash_key(remote), ring_checksum=RING.checksum))
    assert marker is not None
    assert r.decide(view(remote, "GET", "/reports/x"), marker).reason == "hop"


def test_shadow_mode_serves_here_and_counts_where_routing_would_go() -> None:
    r = router(shadow=True)
    remote, mine = owned_by(URLS[1], 1)[0], owned_by(URLS[0], 1)[0]
    d = r.decide(view(remote))
    assert (d.action, d.reason, d.owner.id, d.candidates[0].id) == ("local", "shadow", URLS[1], URLS[1])  # type: ignore[union-attr]
    assert r.decide_by_header(remote.encode(), "GET", "/").reason == "shadow"
    assert r.decide(view(mine)).reason == "owner"
    assert r.counters["shadow_forward"] == 2 and r.counters["forwarded"] == 0
    assert r.shadow_targets == {URLS[1]: 2, URLS[0]: 1}


def test_status_shows_hot_keys_as_hashes_unless_asked_and_the_balance_and_shadow_figures() -> None:
    from affinity_mw.balance import hot_status

    r = router(factor=1.25, shadow=True)
    assert r.balancer is not None
    r.balancer.loads.inflight = 5
    hot = owned_by(URLS[1], 1)[0]
    for i in range(400):
        r.decide(view(hot if i % 2 else f"c{i % 30}"))
    hidden, shown = hot_status(r), hot_status(r, show_keys=True)
    assert hidden["hot_keys"][0]["key"] == f"{hash_key(hot):016x}" and hot not in str(hidden)
    assert shown["hot_keys"][0]["key"] == hot
    assert shown["hot_keys"][0]["spilled"] == r.balancer.spilled_keys.get(hot, 0) > 0
    balance = hidden["balance"]
    assert balance["factor"] == 1.25 and balance["in_flight"] == 5 and sum(balance["spilled_to"].values()) > 0
    shadow = hidden["shadow"]
    assert shadow["keyed_requests"] == 400
    assert shadow["locality_routed"] == round(1 - r.counters["spilled"] / 400, 4)
    assert sum(shadow["load"].values()) == 1.0 and shadow["busiest_over_mean"] >= 1.0
    assert hot_status(router())["balance"] is None and hot_status(router())["shadow"] is None


def test_settings_refuse_bad_hot_tenant_options() -> None:
    import pytest

    from affinity_mw.config import ConfigurationError, Settings

    base = {"AFFINITY_PEERS": ",".join(URLS), "AFFINITY_SELF": URLS[0], "AFFINITY_SECRET": "s" * 20,
            "AFFINITY_KEY": "header:X-Tenant"}  # fmt: skip
    assert Settings.load(environ={**base, "AFFINITY_BALANCE_FACTOR": "1.25"}).balance_factor == 1.25
    assert Settings.load(environ={**base, "AFFINITY_BALANCE_FACTOR": "off"}).balance_factor is None
    for name, value in [("AFFINITY_BALANCE_FACTOR", "1"), ("AFFINITY_BALANCE_FACTOR", "x"),
                        ("AFFINITY_BALANCE_FLOOR", "-1"), ("AFFINITY_ROUTES", "GET reports"),
                        ("AFFINITY_MODE", "mirror")]:  # fmt: skip
        with pytest.raises(ConfigurationError, match=name):
            Settings.load(environ={**base, name: value})
    with pytest.raises(ConfigurationError, match="AFFINITY_HOT_KEYS"):
        Settings.load(environ={**base, "AFFINITY_BALANCE_FACTOR": "1.25", "AFFINITY_HOT_KEYS": "0"})
