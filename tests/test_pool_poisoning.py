"""A peer cannot poison a forwarder's connection pool: one user's response never reaches another user.

Real clusters: every forwarding client (the built-in asyncio one, aiohttp and httpx under uvicorn; urllib3 and
httpx under gunicorn) forwards to one owner running uvicorn with httptools (uvicorn[standard]) or with h11. The
owner's app answers user A with a status that carries no body by rule (304, 204, or any status to a HEAD) and a
``content-length`` for a forged response, whose bytes it writes 30 ms later; user B's request right after goes
to the same owner, and must get its own answer, never A's late bytes or A's ``set-cookie``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from cluster import Cluster
from figures import Figures

from affinity_mw import StaticMembership

FORWARDERS = [
    ("uvicorn=tests.apps.poison_app:app", "asyncio"),
    ("uvicorn=tests.apps.poison_app:app", "aiohttp"),
    ("uvicorn=tests.apps.poison_app:app", "httpx"),
    ("gunicorn-gthread=tests.apps.poison_app:wsgi", "urllib3"),
    ("gunicorn-gthread=tests.apps.poison_app:wsgi", "httpx"),
]
ROUNDS = 10
ATTACKS = [("GET", "304"), ("GET", "204"), ("HEAD", "200")]


@pytest.fixture(scope="module", params=["uvicorn-httptools", "uvicorn"], ids=["owner-httptools", "owner-h11"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    servers = [server for server, _ in FORWARDERS] + [f"{request.param}=tests.apps.poison_app:app"]
    node_env = [
        {"AFFINITY_TRANSPORT": "httpx" if t == "httpx" else "asyncio" if t == "urllib3" else t} for _, t in FORWARDERS
    ]
    node_env.append({})
    with Cluster(tmp_path_factory.mktemp("poison"), n=len(servers), server=servers, node_env=node_env) as c:
        yield c


def owned_by(c: Cluster, url: str, prefix: str) -> str:
    ring = StaticMembership(c.urls).ring
    return next(f"{prefix}{i}" for i in range(10_000) if getattr(ring.owner_of(f"{prefix}{i}"), "id", None) == url)


@pytest.mark.reliability
def test_a_bodiless_answer_with_late_bytes_never_reaches_the_next_user(cluster: Cluster, figures: Figures) -> None:
    owner = cluster.urls[-1]
    user_a, user_b = owned_by(cluster, owner, "a"), owned_by(cluster, owner, "b")
    leaks: list[str] = []
    sent = 0
    for (server, transport), url in zip(FORWARDERS, cluster.urls[:-1], strict=True):
        with httpx.Client(trust_env=False, timeout=10) as client:
            for i in range(ROUNDS):
                method, status = ATTACKS[i % len(ATTACKS)]
                a = client.request(method, f"{url}/poison/{user_a}/{status}", headers={"X-Tenant": user_a})
                b = client.get(f"{url}/whoami", headers={"X-Tenant": user_b, "X-User": "b"})
                sent += 2
                seen = f"{b.status_code} {b.headers.get_list('set-cookie')} {b.content[:80]!r}"
                if (
                    b.status_code != 200
                    or b.content != b"you are b"
                    or b.headers.get("x-affinity-node") not in (None, owner)
                    or b.headers.get_list("set-cookie")
                ):
                    leaks.append(
                        f"{server.split('=')[0]}/{transport}, A {method} {status} ({a.status_code}): B got {seen}"
                    )
            time.sleep(0.05)  # the last late bytes land before the next forwarder's turn
    owner_kind = cluster.nodes[-1].cmd[cluster.nodes[-1].cmd.index("--http") + 1]
    figures.record(
        f"pool poisoning: bodiless answer with late bytes (owner uvicorn {owner_kind})",
        stack="asgi+wsgi",
        sent=sent,
        failed=len(leaks),
        notes=(
            f"{len(FORWARDERS)} forwarding clients (asyncio, aiohttp, httpx; urllib3, httpx) x {ROUNDS} rounds of "
            "304/204/HEAD then another user's request; failed = that user's answer was not its own"
        ),
    )
    assert "Traceback" not in "\n".join(n.log.read_text() for n in cluster.nodes[:-1])
    assert not leaks, "\n".join(leaks)
