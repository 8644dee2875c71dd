"""Request-smuggling framing attacks against a node that does not own the key: the server in front of the
middleware must answer 400 and nothing may reach the owner (docs/design.md)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from cluster import Cluster
from figures import Figures

from affinity_mw import StaticMembership

ATTACKS = {
    "cl-and-te": b"POST /probe/{t}/sha256 HTTP/1.1\r\nHost: x\r\nX-Tenant: {t}\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two-content-lengths": b"POST /probe/{t}/sha256 HTTP/1.1\r\nHost: x\r\nX-Tenant: {t}\r\nContent-Length: 4\r\n"
    b"Content-Length: 5\r\n\r\nabcde",
    "bare-lf-chunk-lines": b"POST /probe/{t}/sha256 HTTP/1.1\r\nHost: x\r\nX-Tenant: {t}\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n4\nabcd\n0\n\n",
}
STACKS = {
    "uvicorn-h11": ("uvicorn", "tests.apps.asgi_app:app"),
    "uvicorn-httptools": ("uvicorn-httptools", "tests.apps.asgi_app:app"),
    "gunicorn-gthread": ("gunicorn-gthread", "tests.apps.wsgi_app:app"),
    "werkzeug-dev": ("werkzeug", "tests.apps.wsgi_app:app"),
}
# What each server does with each attack when nothing else is said, 400: answered 400 (by the server's parser
# or, where the parser lets the request through, by the middleware's own framing check).
# "stall": h11 needs CRLF after a chunk size, so the request never completes: no response until the client
# gives up, and the body never reaches the owner either (nothing can be smuggled; the timeout is the answer).
OUTCOME = {("uvicorn-h11", "bare-lf-chunk-lines"): "stall"}
# Accepted by the WSGI server itself; WSGI never shows the middleware the raw framing (one CONTENT_LENGTH, the
# body already de-chunked), so it cannot refuse them. The forward is framed from the bytes actually read, so the
# peer cannot be desynchronised. Known and reported; strict, so a server that starts refusing them is noticed.
KNOWN = {
    ("gunicorn-gthread", "bare-lf-chunk-lines"): "gunicorn 27 accepts bare-LF chunk-size lines",
    ("werkzeug-dev", "bare-lf-chunk-lines"): "Werkzeug's development server accepts bare-LF chunk-size lines",
    ("werkzeug-dev", "two-content-lengths"): "Werkzeug's development server keeps one of two Content-Lengths",
}


@pytest.fixture(scope="module", params=list(STACKS))
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    server, app = STACKS[request.param]
    with Cluster(tmp_path_factory.mktemp(f"framing-{request.param}"), server=server, app=app) as c:
        yield c


def served(c: Cluster, path: str) -> int:
    return sum(httpx.get(u + "/probe/stats", trust_env=False).json()["served"].get(path, 0) for u in c.urls)


@pytest.mark.reliability
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_framing_attack_is_400_and_never_forwarded(
    cluster: Cluster, attack: str, request: pytest.FixtureRequest, figures: Figures
) -> None:
    case = (request.node.callspec.params["cluster"], attack)
    if case in KNOWN:
        request.applymarker(pytest.mark.xfail(reason=KNOWN[case], strict=True))
    outcome = OUTCOME.get(case, "400")
    ring = StaticMembership(cluster.urls).ring
    tenant = next(k for k in (f"{attack}-{i}" for i in range(200)) if ring.owner_of(k).id != cluster.urls[0])  # type: ignore[union-attr]
    path = f"/probe/{tenant}/sha256"
    with socket.create_connection((cluster.nodes[0].host, cluster.port), timeout=3) as s:
        s.sendall(ATTACKS[attack].replace(b"{t}", tenant.encode()))
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except TimeoutError:
            pass
    time.sleep(0.3)
    reached = served(cluster, path)
    answer = data[:12].decode("latin-1") or "no answer"
    figures.record(
        f"framing attack: {attack}",
        stack=case[0],
        sent=1,
        failed=int(reached > 0 or not (data.startswith(b"HTTP/1.1 400") or (outcome == "stall" and not data))),
        notes=f"{answer}; reached an app: {reached}" + (f" (known: {KNOWN[case]})" if case in KNOWN else ""),
    )
    if outcome == "stall":
        assert data == b"", data[:80]
    else:
        assert data.startswith(b"HTTP/1.1 400"), data[:80]
    assert reached == 0, "the attack reached an app"
