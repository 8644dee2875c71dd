"""A client's ``Connection`` header cannot change what the owner's app sees: a forwarded request looks the same as
the same request served locally, on real 2-node clusters (ASGI under uvicorn, WSGI under gunicorn).

The client names in ``Connection`` every header that identifies it or routes it: those a front proxy adds
(``Forwarded``, ``X-Forwarded-*``, ``X-Real-IP``), its credentials (``Authorization``, ``Cookie``), the key's
own header and one of its own. Sent to the key's owner it is served there; sent to the other node it is
forwarded; the owner's app must see the same headers both times (hop-by-hop ones aside, which no app sees the
same way behind a proxy).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from cluster import Cluster
from figures import Figures

from affinity_mw import StaticMembership
from affinity_mw.forward import HOP_BY_HOP

STACKS = {"asgi": ("uvicorn", "tests.apps.asgi_app:app"), "wsgi": ("gunicorn-gthread", "tests.apps.wsgi_app:app")}
NAMED = {
    "Forwarded": "for=203.0.113.9;proto=https",
    "X-Forwarded-For": "203.0.113.9",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "shop.example",
    "X-Real-IP": "203.0.113.9",
    "Authorization": "Bearer user-token",
    "Cookie": "sid=user-session",
    "X-Custom": "kept",
}
ATTACKS = [
    "forwarded, x-forwarded-for, x-forwarded-proto, x-forwarded-host, x-real-ip",
    "authorization, cookie",
    "x-tenant",
    "keep-alive, X-Custom",
    ", ".join([*NAMED, "X-Tenant"]),
]


@pytest.fixture(scope="module", params=list(STACKS))
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    server, app = STACKS[request.param]
    # Nobody here is a trusted proxy: uvicorn and gunicorn must pass X-Forwarded-* to the app untouched.
    env = {"FORWARDED_ALLOW_IPS": "192.0.2.1"}
    with Cluster(tmp_path_factory.mktemp(f"connection-{request.param}"), n=2, server=server, app=app, env=env) as c:
        yield c


def seen_by_app(client: httpx.Client, url: str, tenant: str, connection: str) -> list[tuple[str, str]]:
    r = client.get(
        f"{url}/probe/{tenant}/echo",
        headers={"Host": "app.example", "X-Tenant": tenant, "Connection": connection, **NAMED},
    )
    assert r.status_code == 200, r.text
    return sorted((k, v) for k, v in r.json()["headers"] if k.encode() not in HOP_BY_HOP)


@pytest.mark.reliability
def test_connection_cannot_strip_what_the_owner_app_sees(cluster: Cluster, figures: Figures) -> None:
    first, owner = cluster.urls
    ring = StaticMembership(cluster.urls).ring
    tenant = next(f"t{i}" for i in range(10_000) if getattr(ring.owner_of(f"t{i}"), "id", None) == owner)
    differences: list[str] = []
    with httpx.Client(trust_env=False, timeout=15) as client:
        for connection in ATTACKS:
            local = seen_by_app(client, owner, tenant, connection)
            forwarded = seen_by_app(client, first, tenant, connection)
            if forwarded != local:
                missing = sorted(set(local) - set(forwarded))
                extra = sorted(set(forwarded) - set(local))
                differences.append(f"Connection: {connection}: missing {missing}, extra {extra}")
    figures.record(
        "Connection abuse: client's Connection names identity and key headers",
        stack="asgi" if "uvicorn" in cluster.nodes[0].cmd else "wsgi",
        sent=2 * len(ATTACKS),
        failed=len(differences),
        notes=(
            f"{len(ATTACKS)} Connection values naming Forwarded, X-Forwarded-*, X-Real-IP, Authorization, Cookie, "
            "the key's header; failed = the owner's app saw other headers than when served locally"
        ),
    )
    assert not differences, "\n".join(differences)
