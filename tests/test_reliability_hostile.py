"""Hostile input against real 2-node clusters (ASGI under uvicorn, WSGI under gunicorn): every forged marker and
bad token is refused, no input yields a 500, and what a client adds can neither stop a forward nor strip what the
forwarder adds (docs/design.md, "Rules each part keeps").

Each case names what the node receiving it must do: ``owner`` (routed by the honest key to its owner, node 2),
``no-key`` (no key could be verified: served locally under the default ``no_key=local`` policy), ``local`` (served
where it landed), or a 4xx status. The whole catalogue runs as one scenario per stack, so the reliability table gets
one row with the totals.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import httpx
import jwt
import pytest
from cluster import SECRET, Cluster, node_metrics
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from figures import Figures
from flask import Flask

from affinity_mw import HopSigner, StaticMembership, hash_key

STACKS = {"asgi": ("uvicorn", "tests.apps.asgi_app:app"), "wsgi": ("gunicorn-gthread", "tests.apps.wsgi_app:app")}
PRIVATE = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PUBLIC_PEM = PRIVATE.public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
)
ISSUER = "https://issuer.example.com/"
AUDIENCE = "tenants-api"
OLD_COOKIE_SECRET, NEW_COOKIE_SECRET = "rotated-out-cookie-secret-0123", "current-cookie-secret-0123456"
ENV = {
    "AFFINITY_KEY": "jwt:tenant,signed-cookie:session:tenant,header:X-Tenant,query:tenant",
    "AFFINITY_JWT_KEY": PUBLIC_PEM.decode(),
    "AFFINITY_JWT_ALGORITHMS": "RS256",
    "AFFINITY_JWT_AUDIENCE": AUDIENCE,
    "AFFINITY_JWT_ISSUER": ISSUER,
    # Rotation: the old secret is still accepted, the newest (last) signs.
    "AFFINITY_COOKIE_SECRET": f"{OLD_COOKIE_SECRET},{NEW_COOKIE_SECRET}",
    "AFFINITY_INTROSPECTION": "127.0.0.0/8",
}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(tenant: str, **extra: object) -> dict[str, object]:
    return {"tenant": tenant, "exp": int(time.time()) + 300, "aud": AUDIENCE, "iss": ISSUER, **extra}


def rs256(payload: dict[str, object], **headers: object) -> str:
    return jwt.encode(payload, PRIVATE, algorithm="RS256", headers=headers or None)


def hs256_with_public_key(payload: dict[str, object]) -> str:
    """The classic key-confusion attack: HS256 keyed with the RSA public key (pyjwt refuses to make one)."""
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(PUBLIC_PEM, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def flask_cookie(data: dict[str, object], secret: str) -> str:
    app = Flask(__name__)
    app.secret_key = secret
    serializer = app.session_interface.get_signing_serializer(app)
    assert serializer is not None
    return str(serializer.dumps(data))


@dataclass
class Case:
    name: str
    kind: str  # marker, header, jwt, cookie, key
    expect: str  # owner, no-key, local, or a status code as text
    headers: dict[str, str | bytes] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    check: Callable[[httpx.Response], None] | None = None


def catalogue(c: Cluster) -> tuple[list[Case], str]:
    ring = StaticMembership(c.urls).ring
    owned = [t for t in (f"h{i}" for i in range(2000)) if ring.owner_of(t).id == c.urls[1]]  # type: ignore[union-attr]
    t, other = owned[0], owned[1]
    signer = HopSigner(SECRET)
    valid = signer.sign(sender=c.urls[1], key_hash=hash_key(t), ring_checksum=ring.checksum).decode()
    with mock.patch("affinity_mw.hop.time.time", return_value=time.time() - 60):
        stale = signer.sign(sender=c.urls[1], key_hash=hash_key(t), ring_checksum=ring.checksum).decode()
    with mock.patch("affinity_mw.hop.time.time", return_value=time.time() + 60):
        future = signer.sign(sender=c.urls[1], key_hash=hash_key(t), ring_checksum=ring.checksum).decode()
    replay = signer.sign(sender=c.urls[1], key_hash=hash_key(other), ring_checksum=ring.checksum).decode()
    foreign = HopSigner("another-cluster-secret-0123456789").sign(
        sender=c.urls[1], key_hash=hash_key(t), ring_checksum=ring.checksum
    )
    tampered = valid[:-3] + ("A" if valid[-3] != "A" else "B") + valid[-2:]
    tenant = {"X-Tenant": t}

    def hops_one(r: httpx.Response) -> None:
        # The owner saw the forwarder's marker (one hop): "Connection: <our header>" did not strip it.
        assert r.json()["decision"]["hops"] == 1, r.json()["decision"]

    def no_injected_header(r: httpx.Response) -> None:
        # Neither the response nor the request the app saw (after a forward, if any) grew an "X-Injected" header.
        assert "x-injected" not in r.headers
        assert all(name.lower() != "x-injected" for name, _ in r.json()["headers"])

    good_cookie = flask_cookie({"tenant": t}, NEW_COOKIE_SECRET)
    with mock.patch("itsdangerous.timed.time.time", return_value=time.time() - 40 * 24 * 3600):
        expired_cookie = flask_cookie({"tenant": t}, NEW_COOKIE_SECRET)
    cases = [
        # Hop markers: only an authentic, fresh marker stops routing; everything else is stripped and ignored.
        Case("marker: other cluster's secret", "marker", "owner", {**tenant, "X-Affinity-Hop": foreign.decode()}),
        Case("marker: random text", "marker", "owner", {**tenant, "X-Affinity-Hop": "abc.def.ghi"}),
        Case("marker: stale (60 s old)", "marker", "owner", {**tenant, "X-Affinity-Hop": stale}),
        Case("marker: from the future (60 s)", "marker", "owner", {**tenant, "X-Affinity-Hop": future}),
        Case("marker: tampered signature", "marker", "owner", {**tenant, "X-Affinity-Hop": tampered}),
        Case("marker: empty", "marker", "owner", {**tenant, "X-Affinity-Hop": ""}),
        Case("marker: 6 KB of junk", "marker", "owner", {**tenant, "X-Affinity-Hop": "x" * 6000}),
        Case("marker: non-ASCII bytes", "marker", "owner", {**tenant, "X-Affinity-Hop": b"\xe9\xff.\xfe"}),
        Case("marker: valid, underscore name", "marker", "owner", {**tenant, "X_Affinity_Hop": valid}),
        Case("marker: valid, mixed-case underscore", "marker", "owner", {**tenant, "x_AFFINITY-hop": valid}),
        # An authentic marker is served where it lands, even for another key (loop safety beats replay refusal;
        # docs/design.md): counted as marker_key_mismatch.
        Case("marker: genuine, replayed for another key", "replay", "local", {**tenant, "X-Affinity-Hop": replay}),
        # Hop-by-hop tricks: the forwarder's own headers are added after the client's hop-by-hop ones are stripped.
        Case(
            "Connection: names our marker",
            "header",
            "owner",
            {**tenant, "Connection": "x-affinity-hop, x-forwarded-for, keep-alive"},
            check=hops_one,
        ),
        Case(
            "spoofed X-Affinity-Attempt / Served-By",
            "header",
            "owner",
            {**tenant, "X-Affinity-Attempt": "9", "X-Affinity-Served-By": "evil", "X-Affinity-Ring": "0"},
        ),
        # JWT (RS256 configured, exact aud and iss).
        Case("jwt: valid RS256", "jwt-ok", "owner", {"Authorization": f"Bearer {rs256(claims(t))}"}),
        Case(
            "jwt: alg none",
            "jwt",
            "no-key",
            {"Authorization": "Bearer " + jwt.encode(claims(t), None, algorithm="none")},
        ),
        Case(
            "jwt: HS256 keyed with the RSA public key",
            "jwt",
            "no-key",
            {"Authorization": f"Bearer {hs256_with_public_key(claims(t))}"},
        ),
        Case(
            "jwt: expired", "jwt", "no-key", {"Authorization": f"Bearer {rs256(claims(t, exp=int(time.time()) - 120))}"}
        ),
        Case(
            "jwt: no exp",
            "jwt",
            "no-key",
            {"Authorization": f"Bearer {rs256({'tenant': t, 'aud': AUDIENCE, 'iss': ISSUER})}"},
        ),
        Case("jwt: wrong aud", "jwt", "no-key", {"Authorization": f"Bearer {rs256(claims(t, aud='other-api'))}"}),
        Case("jwt: prefix-only iss", "jwt", "no-key", {"Authorization": f"Bearer {rs256(claims(t, iss=ISSUER[:-6]))}"}),
        Case(
            "jwt: iss with a suffix",
            "jwt",
            "no-key",
            {"Authorization": f"Bearer {rs256(claims(t, iss=ISSUER + 'evil'))}"},
        ),
        Case(
            "jwt: unknown crit",
            "jwt",
            "no-key",
            {"Authorization": f"Bearer {rs256(claims(t), crit=['x-unknown'], **{'x-unknown': 1})}"},
        ),
        Case("jwt: garbage", "jwt", "no-key", {"Authorization": "Bearer not.a.jwt"}),
        Case("jwt: 8 KB of base64", "jwt", "no-key", {"Authorization": "Bearer " + "QUFB" * 2000}),
        Case(
            "jwt: claim is an object",
            "jwt",
            "no-key",
            {"Authorization": f"Bearer {rs256(claims(t) | {'tenant': {'a': 1}})}"},
        ),
        # itsdangerous-signed session cookie, with a rotated-out secret still in the list.
        Case("cookie: signed with the current secret", "cookie-ok", "owner", {"Cookie": f"session={good_cookie}"}),
        Case(
            "cookie: signed with the rotated-out secret",
            "cookie-ok",
            "owner",
            {"Cookie": f"session={flask_cookie({'tenant': t}, OLD_COOKIE_SECRET)}"},
        ),
        Case(
            "cookie: tampered",
            "cookie",
            "no-key",
            {"Cookie": f"session={good_cookie[:4]}{'A' if good_cookie[4] != 'A' else 'B'}{good_cookie[5:]}"},
        ),
        Case("cookie: expired (40 days)", "cookie", "no-key", {"Cookie": f"session={expired_cookie}"}),
        Case(
            "cookie: unknown secret",
            "cookie",
            "no-key",
            {"Cookie": f"session={flask_cookie({'tenant': t}, 'some-other-secret-0123456789')}"},
        ),
        Case("cookie: garbage", "cookie", "no-key", {"Cookie": "session=%%%;;;==="}),
        # Key values: control characters, oversized keys.
        Case(
            "key: CR/LF in a query key", "key", "200", params={"tenant": "a\r\nX-Injected: 1"}, check=no_injected_header
        ),
        Case("key: NUL and tab in a query key", "key", "200", params={"tenant": "a\x00b\tc"}),
        Case("key: 2 KB (over the 1 KiB key limit)", "key", "no-key", {"X-Tenant": "k" * 2048}),
    ]
    return cases, t


HUGE = {
    # Too big for any server's header or request-line limits: the server or the middleware answers 4xx (or, where
    # the server gives up without an answer, closes the connection). Raw sockets: httpx refuses URLs over 64 KiB.
    # A server that takes them serves the request as keyless (keys over 1 KiB are no key), never forwarding it.
    "key: 100 KB header": b"GET /probe/x/echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Tenant: "
    + b"k" * 100_000
    + b"\r\n\r\n",
    "key: 100 KB query": b"GET /probe/x/echo?tenant="
    + b"k" * 100_000
    + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
}


def raw_status(url: str, request: bytes) -> tuple[int, bytes]:
    """The status and body a raw request gets; status 0 if the server closes without answering."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        with contextlib.suppress(OSError):
            s.sendall(request)
        data = b""
        with contextlib.suppress(OSError):
            while chunk := s.recv(65536):
                data += chunk
    if not data.startswith(b"HTTP/1."):
        return 0, b""
    return int(data.split(b" ", 2)[1]), data.partition(b"\r\n\r\n")[2]


@pytest.fixture(scope="module", params=list(STACKS))
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    server, app = STACKS[request.param]
    with Cluster(tmp_path_factory.mktemp(f"hostile-{request.param}"), n=2, server=server, app=app, env=ENV) as c:
        yield c


def counter(url: str, name: str) -> int:
    return int(node_metrics(url)["counters"][name])


@pytest.mark.reliability
def test_hostile_input_is_refused_and_never_a_500(cluster: Cluster, figures: Figures, tmp_path: Path) -> None:
    cases, _ = catalogue(cluster)
    first, owner = cluster.urls
    stack = "asgi" if "uvicorn" in cluster.nodes[0].cmd else "wsgi"
    failures: list[str] = []
    statuses: dict[int, int] = {}
    refused = {"marker": [0, 0], "jwt": [0, 0], "cookie": [0, 0]}
    mismatch_before = counter(first, "marker_key_mismatch")
    with httpx.Client(trust_env=False, timeout=15) as client:
        for case in cases:
            r = client.get(f"{first}/probe/x/echo", headers=case.headers, params=case.params)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            try:
                assert r.status_code < 500, f"status {r.status_code}"
                if case.expect.isdigit():
                    assert r.status_code == int(case.expect), r.status_code
                else:
                    assert r.status_code == 200, r.status_code
                    decision = r.json()["decision"]
                    node = r.json()["node"]
                    if case.expect == "owner":
                        assert node == owner, (node, decision)
                    elif case.expect == "no-key":
                        assert (node, decision["reason"]) == (first, "no-key"), decision
                    elif case.expect == "local":
                        assert node == first, decision
                if case.check is not None:
                    case.check(r)
                if case.kind in refused:
                    refused[case.kind][0] += 1
            except AssertionError as exc:
                failures.append(f"{case.name}: {exc}")
            if case.kind in refused:
                refused[case.kind][1] += 1
        for name, raw in HUGE.items():
            status, body = raw_status(first, raw)
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                if b'"reason":"no-key"' not in body.replace(b" ", b"") or first.encode() not in body:
                    failures.append(f"{name}: served, but not as a keyless local request: {body[:200]!r}")
            elif not (status == 0 or 400 <= status < 500):
                failures.append(f"{name}: status {status}")
    assert counter(first, "marker_key_mismatch") == mismatch_before + 1
    assert "Traceback" not in cluster.logs()
    sent = len(cases) + len(HUGE)
    figures.record(
        "hostile input: markers, tokens, cookies, keys",
        stack=stack,
        sent=sent,
        failed=len(failures) + sum(n for s, n in statuses.items() if s >= 500),
        notes=(
            f"refused: markers {refused['marker'][0]}/{refused['marker'][1]}, JWTs {refused['jwt'][0]}/"
            f"{refused['jwt'][1]}, cookies {refused['cookie'][0]}/{refused['cookie'][1]}; statuses "
            + ", ".join(f"{s or 'closed'}x{n}" for s, n in sorted(statuses.items()))
        ),
    )
    assert not failures, "\n".join(failures)
    assert not any(s >= 500 for s in statuses)


@pytest.fixture(scope="module", params=[(s, n) for s in STACKS for n in (0, 1)], ids=lambda p: f"{p[0]}-trust{p[1]}")
def ip_cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    stack, trusted = request.param
    server, app = STACKS[stack]
    # uvicorn (and gunicorn, for the scheme) trust X-Forwarded-* from 127.0.0.1 unless told otherwise, and uvicorn
    # rewrites the client address before any middleware runs: on loopback that would be the test client itself.
    # Trust only an address nobody here has, so the middleware's own rule is what is tested (docs/configuration.md).
    env = {"AFFINITY_KEY": "ip", "AFFINITY_TRUSTED_PROXIES": str(trusted), "FORWARDED_ALLOW_IPS": "192.0.2.1"}
    with Cluster(tmp_path_factory.mktemp(f"xff-{stack}-{trusted}"), n=2, server=server, app=app, env=env) as c:
        yield c


@pytest.mark.reliability
def test_x_forwarded_for_spoofing(ip_cluster: Cluster, figures: Figures) -> None:
    """No trusted proxies: the key is the socket peer whatever X-Forwarded-For says. One trusted proxy: the
    rightmost value (the one that proxy appended), and a header with fewer values than that is ignored."""
    trusted = int(ip_cluster.nodes[0].env["AFFINITY_TRUSTED_PROXIES"])
    socket_ip = "127.0.0.1"  # httpx connects from the default source address
    spoofs = {
        None: socket_ip,
        "9.9.9.9": "9.9.9.9" if trusted else socket_ip,
        "1.1.1.1, 9.9.9.9": "9.9.9.9" if trusted else socket_ip,
        "1.1.1.1,9.9.9.9, 8.8.8.8": "8.8.8.8" if trusted else socket_ip,
        "not-an-ip": socket_ip,  # an unparseable value is ignored: the socket peer
        "": socket_ip,
    }
    failures = []
    with httpx.Client(trust_env=False, timeout=15) as client:
        for url in ip_cluster.urls:
            for xff, key in spoofs.items():
                headers = {"X-Forwarded-For": xff} if xff is not None else {}
                r = client.get(f"{url}/probe/x/echo", headers=headers)
                got = r.json()["decision"]["key"] if r.status_code == 200 else f"status {r.status_code}"
                if got != key:
                    failures.append(f"via {url}, X-Forwarded-For {xff!r}: key {got!r}, expected {key!r}")
    figures.record(
        f"X-Forwarded-For spoofing, {trusted} trusted prox{'y' if trusted == 1 else 'ies'}",
        stack="asgi" if "uvicorn" in ip_cluster.nodes[0].cmd else "wsgi",
        sent=len(spoofs) * len(ip_cluster.urls),
        failed=len(failures),
    )
    assert not failures, "\n".join(failures)
