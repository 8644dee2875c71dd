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


def test_marked_starlette_and_fastapi_routes_become_exclusions() -> None:
    from fastapi import APIRouter, Depends, FastAPI
    from starlette.applications import Starlette
    from starlette.routing import Mount, Route

    from affinity_mw.routes import app_exclusions, unrouted

    async def plain(request: object) -> None: ...

    @unrouted
    async def marked(request: object) -> None: ...

    @unrouted
    async def marked_post(request: object) -> None: ...

    app = Starlette(routes=[Route("/a/{x}", marked), Route("/c", plain),
                            Mount("/m", routes=[Route("/b/{p:path}", marked_post, methods=["POST"])])])  # fmt: skip
    assert app_exclusions(app) == ["!GET|HEAD /a/*", "!POST /m/b/**"]

    api = FastAPI()

    @api.get("/reports/{tenant}")
    @unrouted
    def report(tenant: str) -> None: ...

    @api.post("/orders/{tenant}")
    def orders(tenant: str) -> None: ...

    sub = APIRouter(dependencies=[Depends(unrouted)])

    @sub.get("/x/{a}")
    def x(a: str) -> None: ...

    api.include_router(sub, prefix="/sub")
    assert app_exclusions(api) == ["!GET /reports/*", "!GET /sub/x/*"]
    assert app_exclusions(object()) == []
    assert unrouted() is None  # as a dependency: nothing to do at request time


def test_marked_flask_views_become_exclusions_as_they_are_registered() -> None:
    import flask

    from affinity_mw.contrib.flask import Affinity
    from affinity_mw.routes import unrouted

    app = flask.Flask("t")
    app.config.update(AFFINITY_PEERS="http://127.0.0.1:1,http://127.0.0.2:1", AFFINITY_SELF="http://127.0.0.1:1",
                      AFFINITY_SECRET="s" * 20, AFFINITY_KEY="header:X-Tenant")  # fmt: skip

    @app.get("/before/<int:n>")
    @unrouted
    def before(n: int) -> str:
        return ""

    ext = Affinity(app)
    blueprint = flask.Blueprint("bp", "t")

    @blueprint.get("/r/<path:rest>")
    @unrouted
    def later(rest: str) -> str:
        return ""

    app.register_blueprint(blueprint, url_prefix="/bp")
    policy = ext.middleware.core.router.routes  # type: ignore[union-attr]
    assert policy is not None
    assert policy.rules == ("!GET|HEAD|OPTIONS /before/*", "!GET|HEAD|OPTIONS /bp/r/**")
    assert not policy.routed("GET", "/bp/r/a/b") and policy.routed("POST", "/bp/r/a")
