"""Django: real clusters (Django under uvicorn, Django under gunicorn gthread, and a mixed Django + FastAPI + Flask
cluster), the decision on the Django request, the settings bridge and the system checks.

Every Django node runs the probe project with its application wrapped (``wrap(get_asgi_application())`` or
``wrap(get_wsgi_application())``) and affinity-mw's middleware first in MIDDLEWARE. The mixed cluster has three
Django nodes: one under uvicorn whose middleware chain runs async, one under uvicorn where a sync-only middleware
makes Django run the chain synchronously, and one under gunicorn. All must stream, and every kind of node must
forward to every other kind. The gunicorn-only cluster uses the reject policy for requests without a key, the
others serve them locally.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import json
import logging
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
import httpx
import jwt
import pytest
from cluster import ROOT, SECRET, Cluster, kill
from django.conf import settings
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, HttpResponse
from django.test.utils import override_settings
from django.urls import path

import affinity_mw.contrib.django as integration
from affinity_mw import ConfigurationError, HashRing, HopSigner, StaticMembership, hash_key
from affinity_mw.contrib.django import MIDDLEWARE_PATH, check_affinity, wrap

if not settings.configured:
    settings.configure(
        SECRET_KEY="unit-tests",
        ALLOWED_HOSTS=["*"],
        DATABASES={},
        USE_TZ=True,
        INSTALLED_APPS=["affinity_mw.contrib.django.AffinityConfig"],
        MIDDLEWARE=[MIDDLEWARE_PATH],
        ROOT_URLCONF=__name__,
    )
    django.setup()

DJANGO_ASGI = "tests.apps.django_app.asgi:application"
DJANGO_WSGI = "tests.apps.django_app.wsgi:application"
FASTAPI_APP = "tests.apps.asgi_app:app"
FLASK_APP = "tests.apps.wsgi_app:app"
JWT_SECRET = "jwt-test-secret-0123456789abcdef0123"
ENV = {
    # The probe settings say `header:X-Region`; the environment wins over settings.AFFINITY.
    "AFFINITY_KEY": "jwt:tenant,cookie:sessionid,header:X-Tenant",
    "AFFINITY_JWT_KEY": JWT_SECRET,
    "AFFINITY_JWT_ALGORITHMS": "HS256",
}
STACKS: dict[str, dict[str, Any]] = {
    "django-uvicorn": {"server": "uvicorn", "app": DJANGO_ASGI},
    "django-gunicorn-gthread": {"server": "gunicorn-gthread", "app": DJANGO_WSGI, "env": {"AFFINITY_NO_KEY": "reject"}},
    "mixed": {
        "server": [
            f"uvicorn={DJANGO_ASGI}",
            f"uvicorn={DJANGO_ASGI}",
            f"uvicorn={FASTAPI_APP}",
            f"gunicorn-gthread={FLASK_APP}",
            f"gunicorn-gthread={DJANGO_WSGI}",
        ],
        "node_env": [{}, {"DJANGO_PROBE_SYNC_ONLY": "1"}, {}, {}, {}],
    },
}


@pytest.fixture(scope="module", params=list(STACKS))
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    spec = STACKS[request.param]
    servers = spec["server"]
    c = Cluster(
        tmp_path_factory.mktemp(request.param),
        n=3 if isinstance(servers, str) else len(servers),
        server=servers,
        app=spec.get("app", DJANGO_ASGI),
        env={**ENV, **spec.get("env", {})},
        node_env=spec.get("node_env"),
    )
    with c:
        yield c


@pytest.fixture()
def client() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=30.0) as c:
        yield c


def django_urls(c: Cluster) -> list[str]:
    """The Django nodes, in order: the entry points of the Django-specific checks."""
    return [node.url for node in c.nodes if any("django_app" in part for part in node.cmd)]


def django_wsgi(c: Cluster, url: str) -> bool:
    node = c.nodes[c.urls.index(url)]
    return "gunicorn" in node.cmd and any("django_app" in part for part in node.cmd)


@functools.cache
def _ring(urls: tuple[str, ...]) -> HashRing:
    return StaticMembership(urls).ring


def owner(c: Cluster, key: str) -> str:
    node = _ring(tuple(c.urls)).owner_of(key)
    assert node is not None
    return node.id


def tenant_owned_by(c: Cluster, url: str, prefix: str = "t") -> str:
    return next(f"{prefix}{i}" for i in range(10_000) if owner(c, f"{prefix}{i}") == url)


def tenant_not_owned_by(c: Cluster, url: str, prefix: str = "t") -> str:
    return next(f"{prefix}{i}" for i in range(10_000) if owner(c, f"{prefix}{i}") != url)


def kill_last(c: Cluster, prefix: str, count: int) -> tuple[str, list[tuple[str, str]]]:
    """Kill the last node: its URL, and up to ``count`` keys it owned, each with the node that owns it next."""
    ring = _ring(tuple(c.urls))
    dead = c.nodes[-1]
    kill(dead)
    tenants = [t for t in (f"{prefix}{i}" for i in range(400)) if owner(c, t) == dead.url][:count]
    assert tenants
    return dead.url, [(t, ring.successors(hash_key(t), 2)[1].id) for t in tenants]


def policy(c: Cluster) -> str:
    return c.nodes[0].env.get("AFFINITY_NO_KEY", "local")


# ------------------------------------------------------------------------------------------------ cluster suite


def test_every_tenant_meets_one_memory(cluster: Cluster, client: httpx.Client) -> None:
    rng = random.Random(11)
    tenants = [f"tenant-{i}" for i in range(40)]
    sent: Counter[str] = Counter()
    hops: Counter[int] = Counter()
    for _ in range(3):
        for tenant in tenants:
            url = rng.choice(cluster.urls)
            r = client.post(f"{url}/tenants/{tenant}/hits", headers={"X-Tenant": tenant})
            assert r.status_code == 200, r.text
            sent[tenant] += 1
            body = r.json()
            assert body["node"] == owner(cluster, tenant)
            assert r.headers["x-affinity-served-by"] == body["node"]
            assert body["count"] == sent[tenant]  # one counter per tenant: every request met the same memory
            assert body["hops"] == (0 if url == body["node"] else 1)
            hops[body["hops"]] += 1
    assert hops[0] > 0 and hops[1] > 0


def test_every_node_forwards_to_every_other(cluster: Cluster, client: httpx.Client) -> None:
    for entry in cluster.urls:
        for target in cluster.urls:
            tenant = tenant_owned_by(cluster, target, prefix=f"pair-{len(entry)}-")
            r = client.get(f"{entry}/probe/{tenant}/echo", headers={"X-Tenant": tenant})
            assert r.status_code == 200, (entry, target, r.text)
            if entry == target and cluster.nodes[cluster.urls.index(entry)].env.get("DJANGO_PROBE_SYNC_ONLY"):
                assert r.headers["x-sync-only"] == "1"  # Django ran this node's middleware chain synchronously
            decision = r.json()["decision"]
            assert r.json()["node"] == target
            assert decision["hops"] == (0 if entry == target else 1)
            assert decision["sender"] == (None if entry == target else entry)


def test_20mb_post_forwarded_intact(cluster: Cluster, client: httpx.Client) -> None:
    payload = os.urandom(20 * 1024 * 1024)
    digest = hashlib.sha256(payload).hexdigest()
    # From each Django node to another node, and in the mixed cluster from FastAPI into a Django owner.
    routes = [(url, tenant_not_owned_by(cluster, url, "big")) for url in django_urls(cluster)]
    if len(cluster.urls) > 3:
        routes.append((cluster.urls[2], tenant_owned_by(cluster, cluster.urls[0], "big")))
    for entry, tenant in routes:
        r = client.post(f"{entry}/probe/{tenant}/sha256", content=payload, headers={"X-Tenant": tenant})
        assert r.status_code == 200, r.text
        assert r.json() == {"node": owner(cluster, tenant), "sha256": digest, "size": len(payload)}


def test_chunked_post_forwarded_intact(cluster: Cluster, client: httpx.Client) -> None:
    parts = [os.urandom(100_000) for _ in range(20)]
    expected = hashlib.sha256(b"".join(parts)).hexdigest()
    routes = []
    for entry in django_urls(cluster):
        # Django under WSGI reads no chunked body at all (its request stream stops at CONTENT_LENGTH), with or
        # without affinity-mw, so only owners that can read one are used here.
        candidates = (f"chunked{i}" for i in range(10_000))
        tenant = next(
            (t for t in candidates if owner(cluster, t) != entry and not django_wsgi(cluster, owner(cluster, t))), None
        )
        if tenant is not None:
            routes.append((entry, tenant))
    if not routes:
        pytest.skip("every owner here is Django under WSGI, which cannot read a chunked body")
    for entry, tenant in routes:
        r = client.post(f"{entry}/probe/{tenant}/sha256", content=iter(parts), headers={"X-Tenant": tenant})
        assert r.status_code == 200, r.text
        assert r.json() == {"node": owner(cluster, tenant), "sha256": expected, "size": 2_000_000}


def test_streamed_response_arrives_chunk_by_chunk(cluster: Cluster, client: httpx.Client) -> None:
    for entry in django_urls(cluster)[:2]:
        tenant = tenant_not_owned_by(cluster, entry, "stream")
        arrivals: list[float] = []
        chunks: list[bytes] = []
        start = time.monotonic()
        url = f"{entry}/probe/{tenant}/stream?chunks=5&pause=0.25"
        with client.stream("GET", url, headers={"X-Tenant": tenant}) as r:
            assert r.headers["x-affinity-served-by"] == owner(cluster, tenant)
            for chunk in r.iter_raw():
                arrivals.append(time.monotonic() - start)
                chunks.append(chunk)
        assert b"".join(chunks) == b"".join(f"chunk {i}\n".encode() for i in range(5))
        # The owner pauses 0.25 s after each chunk: a buffering relay would deliver everything at the end.
        assert len(chunks) >= 4, chunks
        assert arrivals[-1] - arrivals[0] > 0.6


def test_large_streamed_download(cluster: Cluster, client: httpx.Client) -> None:
    entry = django_urls(cluster)[-1]
    tenant = tenant_not_owned_by(cluster, entry, "dl")
    size = 8 * 1024 * 1024 + 17
    block = bytes(range(256)) * 256
    expected = hashlib.sha256((block * (size // len(block) + 1))[:size]).hexdigest()
    digest = hashlib.sha256()
    with client.stream("GET", f"{entry}/probe/{tenant}/download?size={size}", headers={"X-Tenant": tenant}) as r:
        for chunk in r.iter_raw():
            digest.update(chunk)
    assert digest.hexdigest() == expected


def test_three_set_cookies_survive_byte_for_byte(cluster: Cluster, client: httpx.Client) -> None:
    for entry in django_urls(cluster):
        tenant = tenant_not_owned_by(cluster, entry, "cookie")
        path = f"/probe/{tenant}/cookies?who=u1"
        relayed = client.get(entry + path, headers={"X-Tenant": tenant})
        direct = client.get(owner(cluster, tenant) + path, headers={"X-Tenant": tenant})
        assert relayed.headers["x-affinity-served-by"] != entry
        cookies = relayed.headers.get_list("set-cookie")
        assert len(cookies) == 3
        assert [c.split(";")[0] for c in cookies] == ["a_u1=value-a-u1", "b_u1=value-b-u1", "c_u1=value-c-u1"]
        assert all("httponly" in c.lower() and "path=/" in c.lower() for c in cookies)
        # Exactly the owner's lines, attributes, order and spelling included.
        assert cookies == direct.headers.get_list("set-cookie")


def test_set_cookie_never_leaks_to_another_client(cluster: Cluster) -> None:
    entry = django_urls(cluster)[0]
    tenant = tenant_not_owned_by(cluster, entry, "leak")
    with httpx.Client(trust_env=False) as alice, httpx.Client(trust_env=False) as bob:
        r = alice.get(f"{entry}/probe/{tenant}/cookies?who=alice", headers={"X-Tenant": tenant})
        assert len(r.headers.get_list("set-cookie")) == 3
        for _ in range(3):
            r = bob.get(f"{entry}/probe/{tenant}/echo", headers={"X-Tenant": tenant})
            assert [v for k, v in r.json()["headers"] if k == "cookie"] == []
            assert r.json()["node"] != entry


def test_gzip_response_byte_identical(cluster: Cluster, client: httpx.Client) -> None:
    expected = gzip.compress(b"affinity " * 5000, mtime=0)
    for entry in django_urls(cluster):
        tenant = tenant_not_owned_by(cluster, entry, "gz")
        headers = {"X-Tenant": tenant, "Accept-Encoding": "gzip"}
        with client.stream("GET", f"{entry}/probe/{tenant}/gzip", headers=headers) as r:
            raw = b"".join(r.iter_raw())
            assert r.headers["content-encoding"] == "gzip"
            assert r.headers["x-affinity-served-by"] == owner(cluster, tenant)
            assert int(r.headers["content-length"]) == len(expected)
        assert raw == expected


def test_owner_sees_the_request_as_the_first_node_did(cluster: Cluster) -> None:
    entry_index = cluster.urls.index(django_urls(cluster)[0])
    tenant = tenant_not_owned_by(cluster, cluster.urls[entry_index], "raw")
    # A raw socket request: no Accept, Accept-Encoding or User-Agent; the owner must see none either.
    s = socket.create_connection((cluster.nodes[entry_index].host, cluster.port), timeout=10)
    s.sendall(
        f"GET /probe/{tenant}/echo HTTP/1.1\r\nHost: app.example\r\nX-Tenant: {tenant}\r\n"
        "Connection: close\r\n\r\n".encode()
    )
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    if b"chunked" in head.lower():
        body = _dechunk(body)
    echoed = json.loads(body)
    names = [k for k, _ in echoed["headers"]]
    assert echoed["node"] == owner(cluster, tenant)
    for injected in ("accept", "accept-encoding", "user-agent", "cookie", "content-type", "transfer-encoding"):
        assert injected not in names
    assert dict(echoed["headers"])["host"] == "app.example"
    assert "x-forwarded-for" not in names and "x-forwarded-proto" not in names and "x-affinity-hop" not in names
    assert echoed["client"] == "127.0.0.1"
    assert echoed["scheme"] == "http"
    assert echoed["decision"]["hops"] == 1
    assert echoed["decision"]["sender"] == cluster.urls[entry_index]


def _dechunk(body: bytes) -> bytes:
    out = b""
    while True:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            return out
        out += rest[:size]
        body = rest[size + 2 :]


def test_hop_by_hop_headers_dropped_and_marker_kept(cluster: Cluster, client: httpx.Client) -> None:
    entry = django_urls(cluster)[0]
    tenant = tenant_not_owned_by(cluster, entry, "hbh")
    r = client.get(
        f"{entry}/probe/{tenant}/echo",
        headers={
            "X-Tenant": tenant,
            "Connection": "keep-alive, X-Affinity-Hop, X-Secret-Hop",
            "X-Secret-Hop": "seen as it would be locally",
            "Keep-Alive": "timeout=5",
            "X-Forwarded-For": "203.0.113.9",
        },
    )
    echoed = r.json()
    names = {k for k, _ in echoed["headers"]}
    assert echoed["node"] == owner(cluster, tenant)
    assert echoed["decision"]["hops"] == 1
    assert "keep-alive" not in names
    # A name the client's Connection lists is not removed: the owner's app sees what it would have served locally.
    assert "x-secret-hop" in names
    assert dict(echoed["headers"])["x-forwarded-for"] == "203.0.113.9"


@pytest.mark.parametrize("marker", ["garbage", "", "http://127.0.0.1:1|0000000000000000|x|1|||http|.AAAA.BBBB", None])
def test_forged_hop_marker_does_not_stop_forwarding(cluster: Cluster, client: httpx.Client, marker: str | None) -> None:
    for entry in django_urls(cluster)[:2]:
        tenant = tenant_not_owned_by(cluster, entry, "forged")
        if marker is None:  # validly shaped and signed, but with another cluster's secret
            value = HopSigner("another-cluster-secret-0123456789").sign(
                sender=cluster.urls[1], key_hash=hash_key(tenant), ring_checksum="x"
            )
            marker_value = value.decode()
        else:
            marker_value = marker
        r = client.get(f"{entry}/probe/{tenant}/echo", headers={"X-Tenant": tenant, "X-Affinity-Hop": marker_value})
        assert r.status_code == 200
        assert r.json()["node"] == owner(cluster, tenant)
        assert r.json()["decision"]["sender"] == entry


def test_valid_marker_is_served_where_it_lands(cluster: Cluster, client: httpx.Client) -> None:
    entry = django_urls(cluster)[0]
    tenant = tenant_not_owned_by(cluster, entry, "valid")
    marker = HopSigner(SECRET).sign(sender=cluster.urls[1], key_hash=hash_key(tenant), ring_checksum="x")
    r = client.get(f"{entry}/probe/{tenant}/echo", headers={"X-Tenant": tenant, "X-Affinity-Hop": marker.decode()})
    assert r.json()["node"] == entry
    assert r.json()["decision"]["reason"] == "hop"
    assert "x-affinity-hop" not in {k for k, _ in r.json()["headers"]}


def test_head_and_204_304_invent_no_body(cluster: Cluster, client: httpx.Client) -> None:
    entry = django_urls(cluster)[0]
    tenant = tenant_not_owned_by(cluster, entry, "empty")
    r = client.head(f"{entry}/probe/{tenant}/gzip", headers={"X-Tenant": tenant})
    assert r.status_code == 200 and r.content == b""
    for code in (204, 304):
        r = client.get(f"{entry}/probe/{tenant}/status/{code}", headers={"X-Tenant": tenant})
        assert r.status_code == code and r.content == b""
        assert r.headers["x-affinity-served-by"] == owner(cluster, tenant)


def test_session_cookie_routes_without_touching_the_database(cluster: Cluster, client: httpx.Client) -> None:
    # `cookie:sessionid` routes by the session key itself. The probe project has no database and Django's
    # SessionMiddleware installed: loading a session anywhere would be a 500.
    entry = django_urls(cluster)[0]
    sid = tenant_not_owned_by(cluster, entry, "sessionkey")
    r = client.get(f"{entry}/probe/x/echo", headers={"Cookie": f"sessionid={sid}"})
    assert r.status_code == 200, r.text
    assert r.json()["node"] == owner(cluster, sid)
    assert r.json()["decision"]["key"] == sid


def _token(key: str = JWT_SECRET, **claims: Any) -> str:
    payload = {"tenant": "acme", "exp": int(time.time()) + 300, **claims}
    return jwt.encode(payload, key, algorithm="HS256")


BAD_KEY_HEADERS: dict[str, dict[str, str]] = {
    "garbage-jwt": {"Authorization": "Bearer not.a.jwt"},
    "expired-jwt": {"Authorization": f"Bearer {_token(exp=int(time.time()) - 60)}"},
    "wrong-key-jwt": {"Authorization": f"Bearer {_token(key='another-secret-0123456789abcdef0123')}"},
    "claim-not-a-string": {"Authorization": f"Bearer {_token(tenant={'nested': 1})}"},
    "huge-header": {"X-Tenant": "a" * 6000},
    "empty-header": {"X-Tenant": ""},
    "garbage-cookie": {"Cookie": "%%%;;;===; sessionid"},
    "empty-session-cookie": {"Cookie": "sessionid="},
    "bearer-without-token": {"Authorization": "Bearer"},
}


def test_bad_key_input_follows_policy_never_500(cluster: Cluster, client: httpx.Client) -> None:
    for entry in django_urls(cluster):
        for name, headers in BAD_KEY_HEADERS.items():
            r = client.get(f"{entry}/probe/x/echo", headers=headers)
            if policy(cluster) == "reject":
                assert r.status_code == 400, (name, r.status_code, r.text)
                assert b"affinity key" in r.content
            else:
                assert r.status_code == 200, (name, r.status_code, r.text)
                assert r.json()["node"] == entry
                assert r.json()["decision"]["reason"] == "no-key"
        # A bad token falls through to the next source; odd but valid keys route like any other.
        for tenant in ("a b", "x" * 1024, "../../etc", "%00;,"):
            r = client.get(f"{entry}/probe/x/echo", headers={"Authorization": "Bearer not.a.jwt", "X-Tenant": tenant})
            assert r.status_code == 200, (tenant, r.text)
            assert r.json()["node"] == owner(cluster, tenant), (tenant, r.json())


def test_utf8_key_bytes_cross_one_hop(cluster: Cluster, client: httpx.Client) -> None:
    tenant = "t\u00e9nant-\u6771\u4eac"
    for entry in django_urls(cluster):
        r = client.get(f"{entry}/probe/x/echo", headers=[("X-Tenant", tenant.encode("utf-8"))])
        assert r.status_code == 200
        assert r.json()["node"] == owner(cluster, tenant.encode("utf-8").decode("latin-1"))
        assert r.json()["decision"]["hops"] <= 1


def test_latin1_key_bytes_cross_one_hop_unchanged(cluster: Cluster, client: httpx.Client) -> None:
    # The default clients (asyncio, urllib3) write header bytes as they came. aiohttp (AFFINITY_TRANSPORT=aiohttp)
    # re-encodes values as UTF-8, so an obsolete non-UTF-8 byte would arrive altered (still served: one hop).
    tenant = "t\u00e9nant"
    for entry in django_urls(cluster):
        r = client.get(f"{entry}/probe/x/echo", headers=[("X-Tenant", tenant.encode("latin-1"))])
        assert r.status_code == 200
        assert r.json()["node"] == owner(cluster, tenant)
        assert dict(r.json()["headers"])["x-tenant"] == tenant


def test_no_key_policy(cluster: Cluster, client: httpx.Client) -> None:
    for entry in django_urls(cluster):
        r = client.get(f"{entry}/probe/anything/echo")
        if policy(cluster) == "reject":
            assert r.status_code == 400
            assert r.headers["content-type"].startswith("text/plain")
        else:
            assert r.status_code == 200
            assert r.json()["node"] == entry
            assert r.json()["decision"]["reason"] == "no-key"


def test_health_path_is_answered_before_routing(cluster: Cluster, client: httpx.Client) -> None:
    for entry in django_urls(cluster):
        r = client.get(f"{entry}/_affinity/health")  # no key: answered even under the reject policy
        assert r.status_code == 200
        assert r.json()["status"] == "ok"
        assert r.headers["content-type"] == "application/json"


def test_logs_show_no_server_errors(cluster: Cluster) -> None:
    logs = cluster.logs()
    assert "Traceback" not in logs, logs
    # Django warns (and buffers the whole body) when an ASGI response has a sync iterator.
    assert "must consume synchronous iterators" not in logs, logs


def test_dead_peer_keys_go_to_next_successor(cluster: Cluster, client: httpx.Client) -> None:
    """Runs last for each cluster: it kills the last node.

    GET, not POST: the entries may still hold pooled keep-alive connections to the killed node, and a request
    that meets one has been sent; an idempotent one is retried on the next node, a POST is answered 502 (never
    sent twice), which is right but not what this test is about.
    """
    _, moved = kill_last(cluster, "dead-", 8)
    for tenant, successor in moved:
        for entry in django_urls(cluster)[:2]:  # live Django nodes
            r = client.get(f"{entry}/tenants/{tenant}/hits", headers={"X-Tenant": tenant})
            assert r.status_code == 200, r.text
            assert r.json()["node"] == successor


# ------------------------------------------------------------------------------ WSGI and ASGI, each on its own


@pytest.mark.parametrize(("server", "app"), [("gunicorn-gthread", DJANGO_WSGI), ("uvicorn", DJANGO_ASGI)])
def test_wrapped_django_routes_forwards_fails_over_and_exposes_the_decision(
    tmp_path: Path, server: str, app: str
) -> None:
    """Django under gunicorn (WSGI, sync) and under uvicorn (ASGI, async), wrapped: a node serves the keys it owns,
    forwards the others to their owner, and when an owner dies its keys go to the next successor; every view sees
    the decision that brought the request there on ``request.affinity``."""
    with Cluster(tmp_path, server=server, app=app, env=ENV) as c, httpx.Client(trust_env=False, timeout=30) as client:
        for entry in c.urls:
            for target in c.urls:
                tenant = tenant_owned_by(c, target, f"own-{c.urls.index(entry)}-")
                r = client.get(f"{entry}/probe/{tenant}/echo", headers={"X-Tenant": tenant})
                assert r.status_code == 200, r.text
                decision = r.json()["decision"]
                assert r.json()["node"] == target
                assert (decision["key"], decision["owner"], decision["served_by"]) == (tenant, target, target)
                expected = ("owner", 0, None) if entry == target else ("hop", 1, entry)
                assert (decision["reason"], decision["hops"], decision["sender"]) == expected
        dead, moved = kill_last(c, "gone-", 6)
        for tenant, successor in moved:
            for entry in c.urls[:-1]:
                r = client.get(f"{entry}/probe/{tenant}/echo", headers={"X-Tenant": tenant})
                assert r.status_code == 200, r.text
                decision = r.json()["decision"]
                assert r.json()["node"] == successor
                assert (decision["key"], decision["owner"], decision["served_by"]) == (tenant, dead, successor)
                expected = ("failover", 0, None) if entry == successor else ("hop", 1, entry)
                assert (decision["reason"], decision["hops"], decision["sender"]) == expected
        assert "Traceback" not in c.logs(), c.logs()


# ------------------------------------------------------------------------------------------------------ example


def test_example_region_cache_meets_one_node(tmp_path: Path) -> None:
    """examples/django_regions under uvicorn: each region is built once, on its owner, whatever node is called."""
    example = ROOT / "examples" / "django_regions"
    env = {
        "AFFINITY_KEY": "region:X-Region",  # what settings.AFFINITY says; Cluster's default would override it
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(example)]),
        "REGION_BUILD_SECONDS": "0.05",
        "DJANGO_SETTINGS_MODULE": "settings",
    }
    with Cluster(tmp_path, app="asgi:application", env=env) as c, httpx.Client(trust_env=False) as client:
        for region in ("eu-west", "us-east", "ap-south"):
            for i, url in enumerate(c.urls * 2):
                r = client.get(f"{url}/prices", headers={"X-Region": region.upper()})
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["node"] == owner(c, region)
                assert (body["cache"], body["hits"]) == ("miss" if i == 0 else "hit", i + 1)
        assert client.get(f"{c.urls[0]}/prices").status_code == 400


# ---------------------------------------------------------------------------------------- in-process requests


def view(request: HttpRequest) -> HttpResponse:
    """What the in-process tests serve: the decision Django's request carries, and the body it read."""
    seen.append(request)
    return HttpResponse(request.body, status=201)


seen: list[HttpRequest] = []
urlpatterns = [path("x", view)]  # this module is ROOT_URLCONF of the in-process tests


def wsgi_environ(body: bytes = b"", **extra: str) -> dict[str, Any]:
    return {"REQUEST_METHOD": "POST", "PATH_INFO": "/x", "SERVER_NAME": "testserver", "SERVER_PORT": "80",
            "wsgi.input": io.BytesIO(body), "wsgi.url_scheme": "http", **extra}  # fmt: skip


def call(app: Any, environ: dict[str, Any]) -> tuple[int, bytes]:
    statuses: list[str] = []
    body = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
    try:
        data = b"".join(body)
    finally:
        getattr(body, "close", lambda: None)()
    return int(statuses[0].split()[0]), data


# ------------------------------------------------------------------------------------------------ system checks


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("AFFINITY_"):
            monkeypatch.delenv(name)
    return monkeypatch


PEERS = ["http://10.0.0.1:8000", "http://10.0.0.2:8000"]
GOOD = {"peers": PEERS, "self_url": PEERS[0], "secret": "s" * 32, "key": "header:X-Region"}


def ids(messages: list[Any]) -> list[str]:
    return [m.id for m in messages]


def test_check_passes_a_good_configuration(clean_env: pytest.MonkeyPatch) -> None:
    with override_settings(AFFINITY=GOOD, MIDDLEWARE=[MIDDLEWARE_PATH, "x.Y"]):
        assert check_affinity() == []


@pytest.mark.parametrize(
    ("affinity", "fragment"),
    [
        ({**GOOD, "bogus_option": 1}, "Unknown affinity-mw option(s): bogus_option"),
        ({**GOOD, "self_url": "http://10.0.0.9:8000"}, "is not one of the peers"),
        ({**GOOD, "peers": ["ftp://x"]}, "must start with http:// or https://"),
        ({**GOOD, "secret": "short"}, "at least 16 characters"),
        ({**GOOD, "no_key": "maybe"}, "AFFINITY_NO_KEY"),
        ({**GOOD, "max_attempts": "three"}, "AFFINITY_MAX_ATTEMPTS"),
        ({"peers": PEERS, "self_url": PEERS[0]}, "secret"),
        (["peers"], "settings.AFFINITY must be a dict"),
    ],
)
def test_check_reports_invalid_settings(clean_env: pytest.MonkeyPatch, affinity: Any, fragment: str) -> None:
    with override_settings(AFFINITY=affinity, MIDDLEWARE=[MIDDLEWARE_PATH]):
        messages = check_affinity()
    assert ids(messages) == ["affinity_mw.E001"]
    assert fragment in messages[0].msg


def test_environment_wins_over_settings(clean_env: pytest.MonkeyPatch) -> None:
    with override_settings(AFFINITY={**GOOD, "no_key": "maybe"}, MIDDLEWARE=[MIDDLEWARE_PATH]):
        clean_env.setenv("AFFINITY_NO_KEY", "reject")
        assert check_affinity() == []
        core = wrap(wsgi_app).core
        assert core.settings.no_key == "reject"
        assert core.settings.key == "header:X-Region"  # not overridden: from settings.AFFINITY
        clean_env.setenv("AFFINITY_KEY", "cookie:sessionid")
        assert wrap(wsgi_app).core.settings.key == "cookie:sessionid"
        assert wrap(wsgi_app, key="query:k").core.settings.key == "query:k"  # wrap()'s arguments win over both
        clean_env.setenv("AFFINITY_NO_KEY", "sometimes")
        assert "AFFINITY_NO_KEY" in check_affinity()[0].msg
        with pytest.raises(ConfigurationError, match="AFFINITY_NO_KEY"):
            wrap(wsgi_app)  # the server does not boot


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("204 No Content", [])
    return []


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    raise AssertionError("not called")


def test_callable_key_and_transport_object_are_kept(clean_env: pytest.MonkeyPatch) -> None:
    client = httpx.Client(trust_env=False)
    with override_settings(AFFINITY={**GOOD, "key": lambda view: view.header("x-region"), "transport": client}):
        assert check_affinity() == []
        assert callable(wrap(wsgi_app).core.settings.key)
        # A sync client cannot serve an ASGI application: said at start-up, not at the first forward.
        with pytest.raises(ConfigurationError, match=r"httpx\.AsyncClient or AsyncTransport under ASGI"):
            wrap(asgi_app)
    client.close()


def test_lists_reach_the_settings_as_given(clean_env: pytest.MonkeyPatch) -> None:
    secrets = ["old,secret-with-a-comma", "new-secret-0123456789abcdef"]  # never joined on commas and split again
    with override_settings(AFFINITY={**GOOD, "secret": secrets}):
        assert check_affinity() == []
        assert wrap(wsgi_app).core.settings.secret == tuple(secrets)


def test_wrap_picks_the_adapter_by_the_application_kind(clean_env: pytest.MonkeyPatch) -> None:
    from django.core.handlers.asgi import ASGIHandler

    from affinity_mw import AffinityMiddleware, AffinityWSGIMiddleware

    with override_settings(AFFINITY=GOOD, MIDDLEWARE=[MIDDLEWARE_PATH]):
        assert type(wrap(WSGIHandler())) is AffinityWSGIMiddleware
        assert type(wrap(ASGIHandler())) is AffinityMiddleware
        assert type(wrap(asgi_app)) is AffinityMiddleware
        assert type(wrap(wsgi_app)) is AffinityWSGIMiddleware


def test_check_warns_when_not_first_or_missing(clean_env: pytest.MonkeyPatch) -> None:
    session = "django.contrib.sessions.middleware.SessionMiddleware"
    with override_settings(AFFINITY=GOOD, MIDDLEWARE=[session, MIDDLEWARE_PATH]):
        messages = check_affinity()
        assert ids(messages) == ["affinity_mw.W001"]
        assert session in messages[0].msg
    with override_settings(AFFINITY=GOOD, MIDDLEWARE=[session]):
        assert ids(check_affinity()) == ["affinity_mw.W002"]
    with override_settings(AFFINITY=GOOD, MIDDLEWARE=[MIDDLEWARE_PATH, MIDDLEWARE_PATH]):
        assert ids(check_affinity()) == ["affinity_mw.E002"]


def _manage_check(
    env: dict[str, str], settings_module: str = "tests.apps.django_app.settings", path: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("AFFINITY_")}
    return subprocess.run(
        [sys.executable, "-m", "django", "check", "--settings", settings_module],
        cwd=path,
        env={**base, "PYTHONPATH": os.pathsep.join([str(path), str(ROOT)]), **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_manage_py_check_runs_the_checks() -> None:
    ok = _manage_check({})
    assert ok.returncode == 0, ok.stderr
    bad = _manage_check({"AFFINITY_PEERS": "http://10.0.0.1:8000,http://10.0.0.2:8000", "AFFINITY_SELF": "nope"})
    assert bad.returncode != 0
    assert "affinity_mw.E001" in bad.stderr
    assert "AFFINITY_SECRET" in bad.stderr or "secret" in bad.stderr


OLD_STYLE_SETTINGS = f"""
SECRET_KEY = "old-style-project"
DATABASES = {{}}
INSTALLED_APPS = ["affinity_mw.contrib.django.AffinityConfig"]
MIDDLEWARE = [{MIDDLEWARE_PATH!r}]
ROOT_URLCONF = "oldproj.urls"
WSGI_APPLICATION = "oldproj.wsgi.application"
ASGI_APPLICATION = "oldproj.asgi.application"
AFFINITY = {{"key": "header:X-Tenant"}}
"""


def test_old_style_configuration_gets_the_line_to_add(tmp_path: Path) -> None:
    """A project set up for the middleware that routed by itself: MIDDLEWARE and settings.AFFINITY as before, and
    wsgi.py / asgi.py as startproject wrote them. Nothing would be routed; manage.py check (and so runserver and
    migrate) fails with the line that wraps each application, and passes once it is there."""
    project = tmp_path / "oldproj"
    project.mkdir()
    (project / "__init__.py").write_text("")
    (project / "settings.py").write_text(OLD_STYLE_SETTINGS)
    (project / "urls.py").write_text("urlpatterns: list[object] = []\n")
    for kind in ("wsgi", "asgi"):
        (project / f"{kind}.py").write_text(
            f"from django.core.{kind} import get_{kind}_application\n\napplication = get_{kind}_application()\n"
        )
    old = _manage_check({}, "oldproj.settings", tmp_path)
    assert old.returncode != 0
    assert old.stderr.count("(affinity_mw.E003)") == 2, old.stderr
    for kind in ("wsgi", "asgi"):
        assert f"{project / kind}.py never calls affinity_mw, so nothing is routed" in old.stderr
        assert f"`application = wrap(get_{kind}_application())`" in old.stderr
    assert "`from affinity_mw.contrib.django import wrap`" in old.stderr
    # Importing is not wrapping.
    for kind in ("wsgi", "asgi"):
        source = (project / f"{kind}.py").read_text()
        (project / f"{kind}.py").write_text("from affinity_mw.contrib.django import wrap\n" + source)
    assert _manage_check({}, "oldproj.settings", tmp_path).stderr.count("(affinity_mw.E003)") == 2
    for kind in ("wsgi", "asgi"):
        source = (project / f"{kind}.py").read_text()
        wrapped = source.replace(f"= get_{kind}_application()", f"= wrap(get_{kind}_application())")
        (project / f"{kind}.py").write_text(wrapped)
    fixed = _manage_check({}, "oldproj.settings", tmp_path)
    assert fixed.returncode == 0, fixed.stderr


def test_unwrapped_application_logs_once_and_exposes_no_decision(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clean_env.setattr(integration, "_wrapped", False)  # as in a process whose wsgi.py never called wrap()
    integration._report_unwrapped.cache_clear()
    with override_settings(AFFINITY={"key": "header:X-Tenant"}, MIDDLEWARE=[MIDDLEWARE_PATH]):
        handler = WSGIHandler()
        with caplog.at_level(logging.ERROR, logger="affinity_mw"):
            for _ in range(3):
                assert call(handler, wsgi_environ(b"hi", CONTENT_LENGTH="2", HTTP_X_TENANT="acme")) == (201, b"hi")
                assert seen[-1].affinity is None  # type: ignore[attr-defined]
        errors = [r.getMessage() for r in caplog.records if r.name == "affinity_mw"]
        assert len(errors) == 1, errors
        assert "affinity_mw.E003" in errors[0] and "`application = wrap(get_wsgi_application())`" in errors[0]
        caplog.clear()
        # The same handler, wrapped: the view sees the decision, and nothing more is logged.
        wrapped = wrap(handler)
        assert call(wrapped, wsgi_environ(b"hi", CONTENT_LENGTH="2", HTTP_X_TENANT="acme")) == (201, b"hi")
        assert seen[-1].affinity.key == "acme"  # type: ignore[attr-defined]
        assert not caplog.records
    integration._report_unwrapped.cache_clear()


# ------------------------------------------------------------------------------- limits, in-process


class _BodyReadingTransport:
    """A sync transport that reads the forwarded body, as urllib3 would, and answers 200."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, request: Any) -> Any:
        self.sent.append(b"".join(request.body or []))
        raise AssertionError("the body should have gone over the limit first")

    def close(self) -> None:
        pass


def test_django_limits_431_413_before_routing(clean_env: pytest.MonkeyPatch) -> None:
    urls = ["http://127.0.0.1:1", "http://127.0.0.2:1"]
    ring = StaticMembership(urls).ring
    local = next(f"t{i}" for i in range(500) if ring.owner_of(f"t{i}").id == urls[0])  # type: ignore[union-attr]
    remote = next(f"t{i}" for i in range(500) if ring.owner_of(f"t{i}").id == urls[1])  # type: ignore[union-attr]
    transport = _BodyReadingTransport()
    config = {"peers": urls, "self_url": urls[0], "secret": "s" * 32, "key": "header:X-Tenant",
              "max_header_bytes": 400, "max_body": 10, "transport": transport}  # fmt: skip
    seen.clear()
    with override_settings(AFFINITY=config, MIDDLEWARE=[MIDDLEWARE_PATH]):
        app = wrap(WSGIHandler())

        def request(tenant: str, body: bytes = b"", **extra: str) -> int:
            return call(app, wsgi_environ(body, HTTP_X_TENANT=tenant, **extra))[0]

        for tenant in (local, remote):
            assert request(tenant, HTTP_X_BIG="v" * 400) == 431
            assert request(tenant, b"x" * 11, CONTENT_LENGTH="11") == 413
        assert seen == [] and transport.sent == [], "neither served nor forwarded"
        # A chunked body forwarded under WSGI is counted while it streams.
        assert request(remote, b"y" * 70_000, HTTP_TRANSFER_ENCODING="chunked") == 413
        assert transport.sent == []
        assert request(local, b"x" * 10, CONTENT_LENGTH="10") == 201
        assert seen[-1].affinity.key == local  # type: ignore[attr-defined]
