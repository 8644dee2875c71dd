"""Verified key sources on a real 2-node cluster: JWT claims and signed session cookies route; bad tokens and
tampered cookies follow the no-key policy (served locally, or 400 with reject), never a 500."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import httpx
import jwt
import pytest
from cluster import Cluster
from flask import Flask

from affinity_mw import StaticMembership

JWT_SECRET = "jwt-test-secret-0123456789abcdef0123"
COOKIE_SECRET = "flask-secret-key-0123456789"
ENV = {
    "AFFINITY_KEY": "jwt:tenant,signed-cookie:session:tenant,header:X-Tenant",
    "AFFINITY_JWT_KEY": JWT_SECRET,
    "AFFINITY_JWT_ALGORITHMS": "HS256",
    "AFFINITY_JWT_AUDIENCE": "tenants-api",
    "AFFINITY_COOKIE_SECRET": COOKIE_SECRET,
}


@pytest.fixture(scope="module", params=["local", "reject"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    env = dict(ENV, AFFINITY_NO_KEY=request.param)
    with Cluster(tmp_path_factory.mktemp(f"keys-{request.param}"), n=2, env=env) as c:
        yield c


def token(tenant: object = "acme", key: str = JWT_SECRET, **claims: object) -> str:
    payload = {"tenant": tenant, "exp": int(time.time()) + 300, "aud": "tenants-api", **claims}
    return jwt.encode(payload, key, algorithm="HS256")


def flask_cookie(data: dict[str, object], secret: str = COOKIE_SECRET) -> str:
    app = Flask(__name__)
    app.secret_key = secret
    serializer = app.session_interface.get_signing_serializer(app)  # type: ignore[attr-defined]
    assert serializer is not None
    return str(serializer.dumps(data))


def tenant_owned_by_second(c: Cluster) -> str:
    ring = StaticMembership(c.urls).ring
    return next(t for t in (f"k{i}" for i in range(500)) if ring.owner_of(t).id == c.urls[1])  # type: ignore[union-attr]


def get(c: Cluster, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(f"{c.urls[0]}/probe/x/echo", headers=headers, trust_env=False, timeout=10)


def test_jwt_claim_routes_to_owner(cluster: Cluster) -> None:
    tenant = tenant_owned_by_second(cluster)
    r = get(cluster, {"Authorization": f"Bearer {token(tenant)}"})
    assert r.status_code == 200
    assert r.json()["node"] == cluster.urls[1]
    assert r.json()["decision"]["key"] == tenant


def test_flask_session_cookie_routes_to_owner(cluster: Cluster) -> None:
    tenant = tenant_owned_by_second(cluster)
    r = get(cluster, {"Cookie": f"session={flask_cookie({'tenant': tenant, 'user': 7})}"})
    assert r.json()["node"] == cluster.urls[1]
    assert r.json()["decision"]["key"] == tenant


def _alg_none() -> str:
    return jwt.encode({"tenant": "acme", "exp": int(time.time()) + 300, "aud": "tenants-api"}, None, algorithm="none")


BAD_TOKENS = {
    "garbage": "not.a.jwt",
    "truncated": token()[:-10],
    "expired": token(exp=int(time.time()) - 60),
    "wrong-signature": token(key="another-secret-0123456789abcdef0123"),
    "wrong-audience": token(aud="other-api"),
    "no-exp": jwt.encode({"tenant": "acme", "aud": "tenants-api"}, JWT_SECRET, algorithm="HS256"),
    "alg-none": _alg_none(),
    "claim-not-a-string": token(tenant={"nested": 1}),
    "huge": "a" * 6000,
    "crlf": "abc\tdef",
}


@pytest.mark.parametrize("name", sorted(BAD_TOKENS))
def test_bad_jwt_follows_no_key_policy(cluster: Cluster, name: str) -> None:
    r = get(cluster, {"Authorization": f"Bearer {BAD_TOKENS[name]}"})
    policy = cluster.nodes[0].env["AFFINITY_NO_KEY"]
    if policy == "reject":
        assert r.status_code == 400
    else:
        assert r.status_code == 200
        assert r.json()["node"] == cluster.urls[0]
        assert r.json()["decision"]["reason"] == "no-key"


@pytest.mark.parametrize(
    "cookie",
    [
        "tampered",
        "expired",
        "wrong-secret",
        "garbage",
    ],
)
def test_bad_signed_cookie_follows_no_key_policy(cluster: Cluster, cookie: str) -> None:
    good = flask_cookie({"tenant": "acme"})
    values = {
        "tampered": good[:5] + ("A" if good[5] != "A" else "B") + good[6:],
        "wrong-secret": flask_cookie({"tenant": "acme"}, secret="not-the-secret-0123456789"),
        "garbage": "%%%;;;===",
    }
    if cookie == "expired":
        # Signed 40 days ago: older than the 31-day AFFINITY_COOKIE_MAX_AGE default (Flask's session lifetime).
        with mock.patch("itsdangerous.timed.time.time", return_value=time.time() - 40 * 24 * 3600):
            values["expired"] = flask_cookie({"tenant": "acme"})
    r = get(cluster, {"Cookie": f"session={values[cookie]}"})
    if cluster.nodes[0].env["AFFINITY_NO_KEY"] == "reject":
        assert r.status_code == 400
    else:
        assert r.status_code == 200
        assert r.json()["decision"]["reason"] == "no-key"


def test_bad_token_falls_through_to_next_source(cluster: Cluster) -> None:
    tenant = tenant_owned_by_second(cluster)
    r = get(cluster, {"Authorization": f"Bearer {BAD_TOKENS['expired']}", "X-Tenant": tenant})
    assert r.status_code == 200
    assert r.json()["node"] == cluster.urls[1]


def test_cluster_logs_show_no_server_errors(cluster: Cluster, tmp_path: Path) -> None:
    assert "Traceback" not in cluster.logs()
