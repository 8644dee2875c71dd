"""Verified key sources on a real 2-node cluster: JWT claims and signed session cookies route; bad tokens and
tampered cookies follow the no-key policy (served locally, or 400 with reject), never a 500."""

from __future__ import annotations

import select
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import jwt
import pytest
from cluster import Cluster
from cryptography.hazmat.primitives.asymmetric import rsa
from figures import Figures
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


# ----------------------------------------------------------------------------------------------------------
# A hung JWKS issuer
# ----------------------------------------------------------------------------------------------------------


class HungIssuer:
    """A JWKS endpoint that accepts connections, reads the request and never answers (a hung identity
    provider). Counts the connections the node opens, and the most it holds open at once."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/.well-known/jwks.json"
        self.accepted = 0
        self.max_open = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        conns: list[socket.socket] = []
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([self.listener, *conns], [], [], 0.05)
                for sock in ready:
                    if sock is self.listener:
                        conn, _ = self.listener.accept()
                        conns.append(conn)
                        self.accepted += 1
                    elif not sock.recv(65536):  # the node gave up (its timeout): the connection is over
                        sock.close()
                        conns.remove(sock)
                self.max_open = max(self.max_open, len(conns))
        finally:
            for conn in conns:
                conn.close()

    def __enter__(self) -> HungIssuer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()


def rs256_token(kid: str, tenant: str = "acme") -> str:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    claims = {"tenant": tenant, "exp": int(time.time()) + 300}
    return jwt.encode(claims, private, algorithm="RS256", headers={"kid": kid})


@pytest.mark.reliability
@pytest.mark.parametrize(
    ("server", "app"), [("uvicorn", "tests.apps.asgi_app:app"), ("gunicorn-gthread", "tests.apps.wsgi_app:app")]
)
def test_hung_jwks_issuer_never_delays_a_request(tmp_path: Path, server: str, app: str, figures: Figures) -> None:
    """The key set is fetched off the request path: while the issuer hangs, a request without a token and one
    with an RS256 token (its key unknown) both answer at once, without a key (the no-key policy), and the node
    holds at most one connection to the issuer whatever the clients send."""
    tokens = [rs256_token("k1")] + [rs256_token(f"made-up-{i}") for i in range(11)]
    with HungIssuer() as issuer:
        env = {
            "AFFINITY_KEY": "jwt:tenant",
            "AFFINITY_JWT_KEY": issuer.url,
            "AFFINITY_JWT_ALGORITHMS": "RS256",
            "AFFINITY_NO_KEY": "local",
        }
        with Cluster(tmp_path, n=1, server=server, app=app, env=env) as c:
            url = f"{c.urls[0]}/probe/x/echo"

            def timed(headers: dict[str, str]) -> tuple[float, httpx.Response]:
                start = time.monotonic()
                r = client.get(url, headers=headers)
                return time.monotonic() - start, r

            # One client for all (building one costs more than the request being timed).
            with httpx.Client(trust_env=False, timeout=30) as client, ThreadPoolExecutor(max_workers=4) as pool:
                # Each round: token requests in flight, and a tokenless request sent while they are.
                with_token: list[Any] = []
                without: list[Any] = []
                for round_tokens in (tokens[:4], tokens[4:8], tokens[8:]):
                    with_token += [pool.submit(timed, {"Authorization": f"Bearer {t}"}) for t in round_tokens[:3]]
                    time.sleep(0.1)
                    without.append(pool.submit(timed, {}))
                    with_token.append(pool.submit(timed, {"Authorization": f"Bearer {round_tokens[3]}"}))
                token_results = [f.result() for f in with_token]
                plain_results = [f.result() for f in without]
            for _, r in token_results + plain_results:
                assert r.status_code == 200, r.text
                assert r.json()["decision"]["reason"] == "no-key"
            assert "Traceback" not in c.logs()
    token_max = max(t for t, _ in token_results)
    plain_max = max(t for t, _ in plain_results)
    token_median = statistics.median(t for t, _ in token_results)
    plain_median = statistics.median(t for t, _ in plain_results)
    slow = [t for t, _ in token_results + plain_results if t >= 1.0]
    figures.record(
        "hung JWKS issuer (accepts, never answers)",
        stack="asgi" if server == "uvicorn" else "wsgi",
        sent=len(token_results) + len(plain_results),
        failed=len(slow),
        notes=(
            f"slowest (median): {plain_max * 1000:.0f} ({plain_median * 1000:.0f}) ms without a token, "
            f"{token_max * 1000:.0f} ({token_median * 1000:.0f}) ms with an RS256 token; "
            f"issuer connections {issuer.accepted}, at most {issuer.max_open} at once"
        ),
    )
    assert not slow, f"requests took {sorted(slow)} s (a tokenless one up to {plain_max:.2f} s)"
    assert issuer.max_open <= 1
