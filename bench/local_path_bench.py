"""What the local path costs in-process, without HTTP noise: ``python bench/local_path_bench.py [--json PATH]``.

The HTTP benchmark measures the local path as a req/s ratio, which on a shared 2-core machine moves by several
percent from run to run. This measures the same work directly: ``AffinityMiddleware.__call__`` for a request
whose key this node owns, around an ASGI app that does nothing, driven without an event loop (the coroutine
is stepped once and completes), minus the same app called bare. That difference is exactly what the
middleware adds to every locally served request. It also times the pieces (request view, key extraction,
hash, ring lookup, the whole decision) and prints a cProfile of the local path.

Two header sets: wrk's (``host`` and ``x-tenant``, what ``http_bench.py`` sends) and a browser-like request
with 12 headers, since the middleware scans the headers. Timings are the best of 7 runs (the least disturbed).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import platform
import pstats
import sys
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from affinity_mw import AffinityMiddleware, RequestView, StaticMembership, hash_key

PEERS = ["http://127.0.0.1:8000", "http://127.0.0.2:8000"]
SECRET = "bench-cluster-secret-0123456789abcdef"
N = 50_000
REPEAT = 7


def tenant_owned_by_self() -> str:
    ring = StaticMembership(PEERS).ring
    for i in range(10_000):
        node = ring.owner_of(f"tenant-{i:04d}")
        if node is not None and node.id == PEERS[0]:
            return f"tenant-{i:04d}"
    raise RuntimeError("no key owned by " + PEERS[0])


def scope_for(tenant: str, browser: bool) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1:8000"), (b"x-tenant", tenant.encode())]
    if browser:
        headers = [
            (b"host", b"app.example.com"),
            (b"user-agent", b"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
            (b"accept", b"text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
            (b"accept-language", b"en-GB,en;q=0.5"),
            (b"accept-encoding", b"gzip, deflate, br, zstd"),
            (b"referer", b"https://app.example.com/dashboard"),
            (b"x-forwarded-for", b"203.0.113.7"),
            (b"x-forwarded-proto", b"https"),
            (b"cookie", b"sid=0123456789abcdef; theme=dark; _ga=GA1.2.123456789.1700000000"),
            (b"connection", b"keep-alive"),
            (b"sec-fetch-mode", b"navigate"),
            (b"x-tenant", tenant.encode()),
        ]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": f"/t/{tenant}",
        "raw_path": f"/t/{tenant}".encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }


async def noop_app(scope: Any, receive: Any, send: Any) -> None:
    return None


async def receive() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def send(message: Any) -> None:
    return None


def step(app: Any, scope: dict[str, Any]) -> None:
    """Run one ASGI call whose app never awaits anything: a single send() completes the coroutine."""
    coro = app(scope, receive, send)
    try:
        coro.send(None)
    except StopIteration:
        return
    raise RuntimeError("the call suspended; this benchmark needs an app that completes at once")


def best_us(stmt: str, namespace: dict[str, Any]) -> float:
    runs = timeit.repeat(stmt, globals=namespace, number=N, repeat=REPEAT)
    return min(runs) / N * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--profile-top", type=int, default=15, help="rows of the cProfile table (15)")
    args = parser.parse_args(argv)

    tenant = tenant_owned_by_self()
    mw = AffinityMiddleware(noop_app, peers=PEERS, self_url=PEERS[0], secret=SECRET, key="header:X-Tenant")
    router = mw.router
    ring = router.membership.ring
    extractor = router.extractor
    rows = []
    for label, browser in (("wrk headers (2)", False), ("browser headers (12)", True)):
        scope = scope_for(tenant, browser)
        step(mw, dict(scope))  # the decision must be local/owner, or this is not the local path
        ns: dict[str, Any] = {
            "step": step,
            "mw": mw,
            "app": noop_app,
            "scope": scope,
            "dict": dict,
            "RequestView": RequestView,
            "router": router,
            "ring": ring,
            "hash_key": hash_key,
            "extractor": extractor,
            "tenant": tenant,
        }
        view = RequestView("GET", scope["path"], b"", scope["headers"], "127.0.0.1", "http")
        ns["view"] = view
        decision = router.decide(view, None)
        if (decision.action, decision.reason) != ("local", "owner"):
            raise RuntimeError(f"expected a local/owner decision, got {decision!r}")
        # Both calls get a fresh copy of the scope, as a server would hand each request its own.
        bare = best_us("step(app, dict(scope))", ns)
        wrapped = best_us("step(mw, dict(scope))", ns)
        row = {
            "headers": label,
            "bare_call_us": round(bare, 3),
            "middleware_call_us": round(wrapped, 3),
            "added_us": round(wrapped - bare, 3),
            "request_view_us": round(
                best_us("RequestView('GET', scope['path'], b'', scope['headers'], '127.0.0.1', 'http')", ns), 3
            ),
            "extract_us": round(best_us("extractor(view)", ns), 3),
            "hash_key_us": round(best_us("hash_key(tenant)", ns), 3),
            "ring_owner_us": round(best_us("ring.owner(12345678901234567)", ns), 3),
            "decide_us": round(best_us("router.decide(view, None)", ns), 3),
        }
        rows.append(row)

    header = ("headers", "added us", "decide", "view", "extract", "hash", "lookup")
    keys = ("headers", "added_us", "decide_us", "request_view_us", "extract_us", "hash_key_us", "ring_owner_us")
    print("AffinityMiddleware local path, per request (us; best of 7 x 50,000):")
    print(f"{header[0]:<22}" + "".join(f"{h:>10}" for h in header[1:]))
    for row in rows:
        print(f"{row['headers']:<22}" + "".join(f"{row[k]:>10.2f}" for k in keys[1:]))
    print("('added' = middleware call minus the bare app call; 'decide' includes extract, hash and lookup)")

    profiler = cProfile.Profile()
    scope = scope_for(tenant, False)
    profiler.enable()
    for _ in range(N):
        step(mw, dict(scope))
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(args.profile_top)
    text = out.getvalue()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
    print(f"\ncProfile of {N:,} local-path calls (wrk headers), by own time (profiling inflates every call):")
    print("\n".join(lines[start:]))

    if args.json:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from http_bench import code_version

        commit, dirty = code_version()
        result = {
            "git_commit": commit,
            "affinity_mw_uncommitted_changes": dirty,
            "python": platform.python_version(),
            "n": N,
            "repeat": REPEAT,
            "rows": rows,
            "cprofile_top": lines[start:],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
