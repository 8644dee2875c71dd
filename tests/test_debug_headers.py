"""The debug headers on real servers: ``X-Affinity-Served-By`` always, ``X-Affinity-Owner`` only when the request
had a key (an empty header says nothing, and some clients and proxies treat an empty value as an error)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from cluster import Cluster

STACKS = {
    "asgi": ("uvicorn", "tests.apps.asgi_app:app"),
    "wsgi": ("gunicorn-gthread", "tests.apps.wsgi_app:app"),
}


@pytest.mark.parametrize("stack", list(STACKS))
def test_keyless_requests_get_no_owner_header(tmp_path: Path, stack: str) -> None:
    server, app = STACKS[stack]
    with Cluster(tmp_path, n=2, server=server, app=app) as c:
        keyless = httpx.get(f"{c.urls[0]}/tenants/acme/hits", trust_env=False, timeout=10)
        assert keyless.status_code == 200
        assert keyless.headers["x-affinity-served-by"] == c.urls[0]
        assert "x-affinity-owner" not in keyless.headers, keyless.headers
        keyed = httpx.get(f"{c.urls[0]}/tenants/acme/hits", headers={"X-Tenant": "acme"}, trust_env=False, timeout=10)
        assert keyed.headers["x-affinity-owner"] in c.urls and keyed.headers["x-affinity-served-by"] in c.urls
