"""Per-route policy (affinity_mw.routes): the AFFINITY_ROUTES grammar and its answers."""

from __future__ import annotations

import pytest

from affinity_mw.routes import RoutePolicy


def test_exclusions_only_route_everything_else() -> None:
    policy = RoutePolicy.parse("!GET|HEAD /static/*, !/healthz")
    assert policy is not None
    assert not policy.routed("GET", "/static/app.css")
    assert not policy.routed("HEAD", "/static/app.css")
    assert policy.routed("POST", "/static/app.css")  # another method
    assert policy.routed("GET", "/static/css/app.css")  # * stops at '/'
    assert not policy.routed("DELETE", "/healthz")  # no method: every method
    assert policy.routed("GET", "/tenants/acme")


def test_inclusions_route_only_what_they_name_and_the_first_match_wins() -> None:
    policy = RoutePolicy.parse("!GET /tenants/*/reports/**, POST /tenants/*/orders, /tenants/**")
    assert policy is not None
    assert not policy.routed("GET", "/tenants/acme/reports/2024/q1")
    assert policy.routed("POST", "/tenants/acme/reports/x")  # the exclusion is for GET only
    assert policy.routed("POST", "/tenants/acme/orders")
    assert policy.routed("GET", "/tenants/acme/cart/items")
    assert not policy.routed("GET", "/about")  # an inclusion exists: what no rule names is served here
    assert not policy.routed("POST", "/tenants")  # '/tenants/**' needs the slash


def test_patterns_match_literally_but_for_stars() -> None:
    policy = RoutePolicy.parse("!/a.b/(x)+/*.json")
    assert policy is not None
    assert not policy.routed("GET", "/a.b/(x)+/data.json")
    assert policy.routed("GET", "/aXb/(x)+/data.json")
    assert policy.routed("GET", "/a.b/xx/data.json")


def test_excluding_puts_framework_rules_first() -> None:
    policy = RoutePolicy(["/tenants/**"]).excluding(["GET /tenants/*/export", "!/tenants/*/ping"])
    assert policy.rules[:2] == ("!GET /tenants/*/export", "!/tenants/*/ping")
    assert not policy.routed("GET", "/tenants/a/export")
    assert policy.routed("POST", "/tenants/a/export")
    assert not policy.routed("GET", "/tenants/a/ping")


def test_empty_text_means_no_policy() -> None:
    assert RoutePolicy.parse("") is None
    assert RoutePolicy.parse(" , ") is None


@pytest.mark.parametrize("text", ["GET", "GET static/*", "G3T /x", "!", "GET /a b", "get|/x /y"])
def test_bad_rules_are_refused_with_the_rule_named(text: str) -> None:
    with pytest.raises(ValueError, match="AFFINITY_ROUTES"):
        RoutePolicy.parse(text)
