"""The Flask extension: configuration from app.config, and routing by Flask's own session on a real cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cluster import Cluster
from flask import Flask, jsonify

from affinity_mw import AffinityWSGIMiddleware, StaticMembership
from affinity_mw.config import ConfigurationError
from affinity_mw.contrib.flask import Affinity, current_decision
from affinity_mw.request import RequestView

PEERS = ["http://127.0.0.1:5001", "http://127.0.0.2:5001"]


def make_app(**config: object) -> Flask:
    app = Flask(__name__)
    app.config.update({"SECRET_KEY": "flask-test-secret-0123456789", **config})

    @app.get("/who")
    def who():  # type: ignore[no-untyped-def]
        decision = current_decision()
        return jsonify(reason=decision.reason if decision else None)

    return app


def test_affinity_wraps_wsgi_app_and_reads_app_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AFFINITY_NO_KEY", "local")
    app = make_app(AFFINITY_KEY="header:X-Tenant", AFFINITY_NO_KEY="reject", AFFINITY_DEBUG_HEADERS=True)
    ext = Affinity(app)
    assert isinstance(app.wsgi_app, AffinityWSGIMiddleware)
    assert app.extensions["affinity"] is ext
    settings = ext.middleware.core.settings  # type: ignore[union-attr]
    # app.config beats the environment; booleans and lists are understood.
    assert settings.no_key == "reject" and settings.debug_headers is True
    assert app.test_client().get("/who").status_code == 400
    r = app.test_client().get("/who", headers={"X-Tenant": "t"})
    assert r.json == {"reason": "single-node"}


def test_init_app_factory_pattern_and_keyword_precedence() -> None:
    ext = Affinity(no_key="local")
    app = make_app(
        AFFINITY_KEY="header:X-Tenant",
        AFFINITY_NO_KEY="reject",
        AFFINITY_PEERS=PEERS,
        AFFINITY_SELF=PEERS[0],
        AFFINITY_SECRET="cluster-secret-0123456789",
    )
    ext.init_app(app)
    core = ext.middleware.core  # type: ignore[union-attr]
    assert core.settings.no_key == "local"
    assert core.settings.peers == tuple(PEERS)


def test_session_secret_defaults_to_secret_key_with_fallbacks() -> None:
    app = make_app(SECRET_KEY_FALLBACKS=["old-flask-secret-0123456789"], AFFINITY_KEY="signed-cookie:session:tenant")
    core = Affinity(app).middleware.core  # type: ignore[union-attr]
    assert core.settings.cookie_secret == ("old-flask-secret-0123456789", "flask-test-secret-0123456789")
    assert core.settings.cookie_max_age == 31 * 24 * 3600


def _session_cookie(app: Flask, **values: object) -> str:
    """A session cookie exactly as this Flask app sets it (its own SECRET_KEY and signer)."""

    @app.get("/set-session")
    def set_session():  # type: ignore[no-untyped-def]
        from flask import session

        session.update(values)
        return "ok"

    (set_cookie,) = app.test_client().get("/set-session").headers.getlist("Set-Cookie")
    return set_cookie.split(";", 1)[0]


def _key_of(ext: Affinity, cookie: str) -> str | None:
    extractor = ext.middleware.core.settings.extractor  # type: ignore[union-attr]
    assert extractor is not None
    return extractor(RequestView("GET", "/", b"", [(b"cookie", cookie.encode("latin-1"))]))


# Flask's quickstart: `python -c 'import secrets; print(secrets.token_bytes(16))'`, bytes that are not UTF-8.
BYTES_KEY = b"\xa7\x1f\xff\x00\x9c_\xde\x01 ,\x80"


def test_non_utf8_bytes_secret_key_without_a_signed_cookie_source() -> None:
    app = make_app(SECRET_KEY=BYTES_KEY, AFFINITY_KEY="header:X-Tenant")
    Affinity(app)
    assert app.test_client().get("/who", headers={"X-Tenant": "t"}).json == {"reason": "single-node"}


def test_non_utf8_bytes_secret_key_verifies_the_session() -> None:
    app = make_app(SECRET_KEY=BYTES_KEY, AFFINITY_KEY="signed-cookie:session:tenant")
    ext = Affinity(app)
    assert ext.middleware.core.settings.cookie_secret == (BYTES_KEY,)  # type: ignore[union-attr]
    assert _key_of(ext, _session_cookie(app, tenant="acme")) == "acme"


@pytest.mark.parametrize("secret", [" padded secret ", "with,comma-0123456789", "\tboth, ends\n"])
def test_secret_key_is_opaque(secret: str) -> None:
    old = "old, fallback "
    app = make_app(SECRET_KEY=secret, SECRET_KEY_FALLBACKS=[old], AFFINITY_KEY="signed-cookie:session:tenant")
    ext = Affinity(app)
    assert ext.middleware.core.settings.cookie_secret == (old, secret)  # type: ignore[union-attr]
    assert _key_of(ext, _session_cookie(app, tenant="acme")) == "acme"
    # A cookie signed by the fallback (before rotation) still verifies.
    before = make_app(SECRET_KEY=old)
    assert _key_of(ext, _session_cookie(before, tenant="globex")) == "globex"


def test_app_config_cookie_secret_list_is_opaque() -> None:
    app = make_app(AFFINITY_COOKIE_SECRET=["a,b-0123456789 ", b"\xff\xfe"], AFFINITY_KEY="signed-cookie:session:tenant")
    ext = Affinity(app)
    assert ext.middleware.core.settings.cookie_secret == ("a,b-0123456789 ", b"\xff\xfe")  # type: ignore[union-attr]


def test_bad_app_config_fails_at_init() -> None:
    with pytest.raises(ConfigurationError, match="AFFINITY_NO_KEY"):
        Affinity(make_app(AFFINITY_NO_KEY="maybe"))


@pytest.fixture(scope="module")
def session_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    env = {"AFFINITY_KEY": "signed-cookie:session:tenant", "FLASK_SECRET_KEY": "flask-cluster-secret-0123456789"}
    with Cluster(
        tmp_path_factory.mktemp("flask"), server="gunicorn-gthread", app="tests.apps.wsgi_app:app", env=env
    ) as c:
        yield c


def test_flask_session_routes_every_request_to_the_tenants_owner(session_cluster: Cluster) -> None:
    c = session_cluster
    ring = StaticMembership(c.urls).ring
    for tenant in ("acme", "globex", "initech", "umbrella", "hooli"):
        with httpx.Client(trust_env=False, timeout=10) as browser:
            r = browser.post(f"{c.urls[0]}/login", params={"tenant": tenant})
            assert r.status_code == 200
            # Behind a load balancer all nodes share one host name; here each has its own, so the test carries
            # the session cookie to every node itself.
            cookie = {"Cookie": f"session={browser.cookies['session']}"}
            owner = ring.owner_of(tenant).id  # type: ignore[union-attr]
            for i, url in enumerate(c.urls * 2):
                r = httpx.post(f"{url}/hits", headers=cookie, trust_env=False, timeout=10)
                assert r.status_code == 200, r.text
                assert r.json() == {"tenant": tenant, "count": i + 1, "node": owner, "hops": int(url != owner)}


def test_tampered_session_is_served_locally_not_500(session_cluster: Cluster, tmp_path: Path) -> None:
    c = session_cluster
    with httpx.Client(trust_env=False, timeout=10) as browser:
        browser.post(f"{c.urls[0]}/login", params={"tenant": "acme"})
        cookie = browser.cookies["session"]
        for url in c.urls:
            tampered = cookie[:-3] + ("AAA" if not cookie.endswith("AAA") else "BBB")
            r = httpx.post(f"{url}/hits", headers={"Cookie": f"session={tampered}"}, trust_env=False)
            # No verified tenant: served where it landed (Flask itself then rejects the session: 401).
            assert r.status_code == 401
            assert r.headers["x-affinity-served-by"] == url
