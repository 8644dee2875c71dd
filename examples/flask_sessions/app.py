"""A Flask app whose per-tenant state lives in memory, routed by the tenant in Flask's own session cookie.

``POST /login?tenant=acme`` puts the tenant in the (signed) session. From then on every request carries the
session cookie, and affinity-mw routes it by the cookie's verified ``tenant`` field to the tenant's owner, where
``POST /hits`` counts it in that process's memory. The forwarding node verifies the signature but never loads
or trusts the session itself.
"""

from __future__ import annotations

import os
from collections import Counter

from flask import Flask, jsonify, request, session

from affinity_mw.contrib.flask import Affinity, current_decision

NODE = os.environ.get("AFFINITY_SELF", "standalone")

app = Flask(__name__)
app.config["SECRET_KEY"] = os.environ.get("FLASK_SECRET_KEY", "dev-only-secret-change-me")
app.config.setdefault("AFFINITY_KEY", os.environ.get("AFFINITY_KEY", "signed-cookie:session:tenant"))
counters: Counter[str] = Counter()


@app.post("/login")
def login():  # type: ignore[no-untyped-def]
    tenant = request.args.get("tenant", "").strip()
    if not tenant:
        return jsonify(error="pass ?tenant=NAME"), 400
    session["tenant"] = tenant
    return jsonify(tenant=tenant, node=NODE)


@app.post("/hits")
def hit():  # type: ignore[no-untyped-def]
    tenant = session.get("tenant")
    if tenant is None:
        return jsonify(error="log in first: POST /login?tenant=NAME"), 401
    counters[tenant] += 1
    decision = current_decision()
    return jsonify(tenant=tenant, count=counters[tenant], node=NODE, hops=decision.hops if decision else 0)


@app.get("/healthz")
def healthz():  # type: ignore[no-untyped-def]
    return jsonify(node=NODE, status="ok")


Affinity(app)
