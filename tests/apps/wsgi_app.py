"""The Flask example app plus the same probe routes as ``asgi_app`` (same paths, same JSON), so one set of
cluster tests runs against ASGI, WSGI and mixed clusters."""

from __future__ import annotations

import gzip
import hashlib
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from flask import Response, jsonify, request

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "flask_sessions"))

from app import NODE, app

from affinity_mw.contrib.flask import current_decision
from tests.patterns import pattern

tenant_counters: Counter[str] = Counter()
served: Counter[str] = Counter()
GZIP_BODY = gzip.compress(b"affinity " * 5000, mtime=0)
BLOCK = bytes(range(256)) * 256


@app.before_request
def count_served() -> None:
    # Runs inside the affinity middleware (which wraps app.wsgi_app): only requests served here are counted.
    served[request.path] += 1
    served["__all__"] += 1


@app.route("/tenants/<tenant>/hits", methods=["GET", "POST"])
def tenant_hits(tenant: str):  # type: ignore[no-untyped-def]
    if request.method == "POST":
        tenant_counters[tenant] += 1
    decision = current_decision()
    return jsonify(tenant=tenant, count=tenant_counters[tenant], node=NODE, hops=decision.hops if decision else 0)


@app.get("/probe/stats")
def stats():  # type: ignore[no-untyped-def]
    return jsonify(node=NODE, served=dict(served))


@app.post("/probe/<tenant>/sha256")
def sha256(tenant: str):  # type: ignore[no-untyped-def]
    digest = hashlib.sha256()
    size = 0
    stream = request.stream
    while chunk := stream.read(65536):
        digest.update(chunk)
        size += len(chunk)
    return jsonify(node=NODE, sha256=digest.hexdigest(), size=size)


@app.get("/probe/<tenant>/stream")
def stream(tenant: str):  # type: ignore[no-untyped-def]
    chunks = int(request.args.get("chunks", 5))
    pause = float(request.args.get("pause", 0.3))

    def body() -> Iterator[bytes]:
        for i in range(chunks):
            yield f"chunk {i}\n".encode()
            time.sleep(pause)

    return Response(body(), mimetype="text/plain")


@app.get("/probe/<tenant>/download")
def download(tenant: str):  # type: ignore[no-untyped-def]
    size = int(request.args.get("size", 1024))

    def body() -> Iterator[bytes]:
        left = size
        while left > 0:
            part = BLOCK[: min(left, len(BLOCK))]
            left -= len(part)
            yield part

    return Response(body(), mimetype="application/octet-stream")


@app.get("/probe/<tenant>/cookies")
def cookies(tenant: str):  # type: ignore[no-untyped-def]
    who = request.args.get("who", "anon")
    response = jsonify(node=NODE)
    for name in ("a", "b", "c"):
        response.set_cookie(f"{name}_{who}", f"value-{name}-{who}", httponly=True)
    return response


@app.route("/probe/<tenant>/gzip", methods=["GET", "HEAD"])
def gzipped(tenant: str):  # type: ignore[no-untyped-def]
    return Response(GZIP_BODY, mimetype="text/plain", headers={"Content-Encoding": "gzip", "X-Node": NODE})


@app.route("/probe/<tenant>/echo", methods=["GET", "POST", "PUT", "DELETE", "HEAD"])
def echo(tenant: str):  # type: ignore[no-untyped-def]
    body = request.get_data()
    decision = current_decision()
    return jsonify(
        node=NODE,
        method=request.method,
        headers=[[k.lower(), v] for k, v in request.headers.items()],
        client=request.remote_addr,
        scheme=request.scheme,
        body_size=len(body),
        decision=decision.as_dict() if decision else None,
    )


@app.get("/probe/<tenant>/status/<int:code>")
def status(tenant: str, code: int):  # type: ignore[no-untyped-def]
    return Response(status=code)


# Reliability suite (tests/test_reliability_faults.py): each execution is appended to $FAULT_EXEC_LOG (one
# O_APPEND write per line, which survives a SIGKILL right after it), so a test can count executions per id.
def _fault_record(method: str, id: str) -> None:
    import os

    path = os.environ.get("FAULT_EXEC_LOG")
    if path:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{NODE} {method} {id}\n".encode())
        finally:
            os.close(fd)


@app.route("/probe/<tenant>/fault-exec", methods=["GET", "POST"])
def fault_exec(tenant: str):  # type: ignore[no-untyped-def]
    request.get_data()
    ident = request.args.get("id", "")
    _fault_record(request.method, ident)
    pause = float(request.args.get("pause", 0))
    if pause:
        time.sleep(pause)
    return jsonify(node=NODE, id=ident, method=request.method)


@app.route("/probe/<tenant>/big-body", methods=["GET", "HEAD"])
def big_body(tenant: str):  # type: ignore[no-untyped-def]
    size = int(request.args.get("size", 0))
    seed = int(request.args.get("seed", 0))
    headers = {"X-Node": NODE}
    if request.args.get("encoding"):
        headers["Content-Encoding"] = request.args["encoding"]
    if request.args.get("mode", "fixed") == "fixed":
        headers["Content-Length"] = str(size)
    return Response(pattern(size, seed), mimetype="application/octet-stream", headers=headers)


@app.get("/probe/<tenant>/big-cookies")
def big_cookies(tenant: str):  # type: ignore[no-untyped-def]
    response = Response(b"cookies", mimetype="text/plain")
    for line in COOKIE_LINES:
        response.headers.add("Set-Cookie", line)
    return response


COOKIE_LINES = [
    "sid=1; Path=/a; HttpOnly",
    "sid=2; Path=/b; Secure; SameSite=Strict",
    "pref=x; Expires=Wed, 21 Oct 2035 07:28:00 GMT; Path=/",
]
