"""Instructions the middleware itself adds per request, in-process: ``python bench/middleware_instructions.py``.

``instructions_bench.py`` counts whole servers; this isolates the middleware, so a change to its code shows up
exactly. Each case calls the middleware around an app that does nothing (the ASGI coroutine is stepped once, no
event loop), and the same app bare; both run under ``valgrind --tool=cachegrind --cache-sim=no`` for 2,000 and
12,000 calls, and the difference over 10,000 is the count per call. Cases:

* ``asgi-local``: a GET whose ``X-Tenant`` this node owns, with wrk's two headers (what ``http_bench.py`` sends);
* ``asgi-local-browser``: the same with a browser's twelve headers;
* ``asgi-hop``: the owner's side of a forward, a GET carrying a valid hop marker (and, as by default, no
  ``X-Forwarded-*`` added by the forwarder);
* ``asgi-forward``: the forwarding node's side of a forward (decision, marker, the built-in asyncio client, the
  relay), to a real owner: a bare uvicorn server on 127.0.0.2 that this process starts (natively, not counted);
  driven one request at a time by an event loop, so the loop's own work is in the count, and it depends a little
  on how the owner's answer arrives (one read or two): compare runs on a quiet machine;
* ``wsgi-local``: ``AffinityWSGIMiddleware`` with the environ gunicorn builds for wrk's GET;
* ``sign`` and ``verify``: one hop marker.

Needs valgrind (``bash bench/setup.sh --valgrind``). About 3 minutes. ``--child CASE N`` is the process valgrind runs.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PEERS = ["http://127.0.0.1:8000", "http://127.0.0.2:8000"]
CASES = ("asgi-local", "asgi-local-browser", "asgi-hop", "asgi-forward", "wsgi-local", "sign", "verify")
CALLS = (2_000, 12_000)


def child(case: str, calls: int, bare: bool) -> None:
    """Runs under valgrind: build the case, then call it ``calls`` times."""
    sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
    if case == "asgi-forward":
        forward(calls, bare)
        return
    self_url = PEERS[1] if case in ("asgi-hop", "verify") else PEERS[0]
    os.environ.update(
        AFFINITY_PEERS=",".join(PEERS), AFFINITY_SELF=self_url, AFFINITY_SECRET="s" * 32, AFFINITY_KEY="header:X-Tenant"
    )
    from local_path_bench import noop_app, scope_for

    from affinity_mw import AffinityMiddleware, AffinityWSGIMiddleware, StaticMembership
    from affinity_mw.hop import HopSigner
    from affinity_mw.ring import hash_key

    ring = StaticMembership(PEERS).ring
    tenant = next(t for t in (f"tenant-{i:04d}" for i in range(9999)) if ring.owner_of(t).id == self_url)  # type: ignore[union-attr]
    signer = HopSigner("s" * 32)
    marker = {"sender": PEERS[0], "key_hash": hash_key(tenant), "ring_checksum": ring.checksum}
    token = signer.sign(**marker, client=("127.0.0.1", 40000))  # type: ignore[arg-type]
    if case in ("sign", "verify"):
        for _ in range(calls):
            if bare:
                pass
            elif case == "sign":
                signer.sign(**marker, client=("127.0.0.1", 40000))  # type: ignore[arg-type]
            else:
                signer.verify(token)
        return
    if case == "wsgi-local":

        def noop_wsgi(environ: Any, start_response: Any) -> list[bytes]:
            return [b""]

        environ = {
            "wsgi.errors": None, "wsgi.version": (1, 0), "wsgi.multithread": True, "wsgi.multiprocess": False,
            "wsgi.run_once": False, "wsgi.file_wrapper": None, "wsgi.input_terminated": True,
            "SERVER_SOFTWARE": "gunicorn/23.0.0", "wsgi.input": None, "gunicorn.socket": None,
            "REQUEST_METHOD": "GET", "QUERY_STRING": "", "RAW_URI": f"/t/{tenant}", "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_HOST": "127.0.0.1:8000", "HTTP_X_TENANT": tenant, "wsgi.url_scheme": "http",
            "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "40000", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
            "PATH_INFO": f"/t/{tenant}", "SCRIPT_NAME": "",
        }  # fmt: skip
        wsgi_app = noop_wsgi if bare else AffinityWSGIMiddleware(noop_wsgi)
        for _ in range(calls):
            wsgi_app(dict(environ), None)
        return
    scope = scope_for(tenant, browser=case == "asgi-local-browser")
    if case == "asgi-hop":
        scope["headers"] = [*scope["headers"], (b"x-affinity-hop", token)]  # what a forward carries by default
    app = noop_app if bare else AffinityMiddleware(noop_app)
    for _ in range(calls):
        coro = app(dict(scope), None, None)  # type: ignore[arg-type]
        try:  # noqa: SIM105 - contextlib.suppress would add its own calls to what is counted
            coro.send(None)
        except StopIteration:
            pass


def forward(calls: int, bare: bool) -> None:
    """``calls`` GETs through the middleware to a real owner, one at a time, on one event loop."""
    import asyncio
    from types import SimpleNamespace

    from http_bench import Server, free_port, tenant_owned_by
    from local_path_bench import noop_app, scope_for

    from affinity_mw import AffinityMiddleware

    port = free_port(["127.0.0.1", "127.0.0.2"])
    peers = [f"http://127.0.0.1:{port}", f"http://127.0.0.2:{port}"]
    os.environ.update(
        AFFINITY_PEERS=",".join(peers), AFFINITY_SELF=peers[0], AFFINITY_SECRET="s" * 32, AFFINITY_KEY="header:X-Tenant"
    )
    log_dir = Path(tempfile.mkdtemp(prefix="affinity-owner-"))
    args = SimpleNamespace(log_dir=log_dir, wsgi=False, loop="asyncio", http="h11")
    owner = Server("owner", "bench.app:bare", "127.0.0.2", port, {}, args)  # the benchmark's bare server
    owner.start()
    try:
        owner.wait_ready()
        tenant = tenant_owned_by(peers, peers[1])
        scope = scope_for(tenant, browser=False)
        app = noop_app if bare else AffinityMiddleware(noop_app)

        async def run() -> None:
            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            statuses = []

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    statuses.append(message["status"])

            for _ in range(calls):
                await app(dict(scope), receive, send)  # type: ignore[arg-type]
            assert bare or statuses == [200] * calls, statuses[:3]
            if not bare:
                await app.transport.aclose()  # type: ignore[union-attr]

        asyncio.run(run())
    finally:
        owner.stop()
        shutil.rmtree(log_dir, ignore_errors=True)


def count(case: str, calls: int, bare: bool, tmp: Path) -> int:
    out = tmp / f"{case}.{calls}.{int(bare)}"
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}", sys.executable]
    cmd += [__file__, "--child", case, str(calls)] + (["--bare"] if bare else [])
    subprocess.run(cmd, env=dict(os.environ, PYTHONHASHSEED="0"), capture_output=True, check=True, timeout=600)
    match = re.search(r"^summary:\s+(\d+)", out.read_text(), re.M)
    assert match is not None, f"no summary in {out}"
    return int(match.group(1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated: " + ", ".join(CASES))
    parser.add_argument("--child", nargs=2, metavar=("CASE", "CALLS"), help=argparse.SUPPRESS)
    parser.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], int(args.child[1]), args.bare)
        return 0
    print("| case | instructions per call, middleware | bare app | added by the middleware |")
    print("|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="affinity-mwir-") as tmp:
        for case in args.cases.split(","):
            per_call = []
            for bare in (False, True):
                low, high = (count(case, n, bare, Path(tmp)) for n in CALLS)
                per_call.append((high - low) // (CALLS[1] - CALLS[0]))
            print(f"| {case} | {per_call[0]:,} | {per_call[1]:,} | {per_call[0] - per_call[1]:,} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
