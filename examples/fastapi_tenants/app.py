"""A FastAPI app with per-tenant state in memory, behind affinity-mw.

Each tenant's counter lives in one process's memory. Without affinity, requests for a tenant spread over the
nodes and each node counts its own share; with affinity-mw every request for a tenant meets the same counter,
on whichever node owns the tenant now. Configuration comes from ``AFFINITY_*`` environment variables (see
``run_cluster.py`` beside this file), so the code carries no deploy details.
"""

from __future__ import annotations

import os
from collections import Counter

from fastapi import FastAPI, Request

from affinity_mw import AffinityMiddleware

NODE = os.environ.get("AFFINITY_SELF", "standalone")

app = FastAPI(title="affinity-mw tenant counter")
counters: Counter[str] = Counter()


@app.post("/tenants/{tenant}/hits")
async def hit(tenant: str, request: Request) -> dict[str, object]:
    """Count one hit for ``tenant``; the answer says which node's memory counted it."""
    counters[tenant] += 1
    decision = request.state.affinity
    # served_by is this node's id as the middleware knows it (from AFFINITY_SELF, or found through DNS).
    return {"tenant": tenant, "count": counters[tenant], "node": decision.served_by or NODE, "hops": decision.hops}


@app.get("/tenants/{tenant}/hits")
async def hits(tenant: str) -> dict[str, object]:
    return {"tenant": tenant, "count": counters[tenant], "node": NODE}


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"node": NODE, "status": "ok"}


app.add_middleware(AffinityMiddleware)
