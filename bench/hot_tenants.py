"""Hot tenants on a real cluster: what one heavy tenant does to the busiest node, with and without bounded loads.

Three uvicorn nodes on 127.0.0.1-3, each serving ``bench.hot_tenants:app``: an app that serves 100 requests per
second (2 slots of 20 ms, so its capacity is known), inside :class:`~affinity_mw.AffinityMiddleware` keyed on
``X-Tenant``. Requests arrive open-loop (Poisson) at 65 % of the cluster's capacity, each at a random node, as a
load balancer without affinity would spread them: one tenant (``hot``) has 35 % of the requests, the other 65 %
are Zipf(1.1) over 200 tenants. Each configuration (``--factors``: ``none`` routes every key to its owner,
``1.25`` sets ``AFFINITY_BALANCE_FACTOR=1.25``) runs on a fresh cluster for the same seed, so the runs are side
by side; the report gives the busiest node's share against the mean, latency from each request's *scheduled*
time (a late request counts its wait; no coordinated omission), errors, and the other tenants' locality (share
of their requests served by their key's owner). About 45 s per configuration; every process is stopped.

    .venv/bin/python bench/hot_tenants.py                       # none and 1.25, 30 s each
    .venv/bin/python bench/hot_tenants.py --factors none,1.25,1.5 --seconds 20 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import os
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
sys.path.insert(0, str(ROOT / "bench"))

SLOTS = int(os.environ.get("HOT_SLOTS", "2"))
SERVICE = float(os.environ.get("HOT_SERVICE_MS", "20")) / 1000
_BODY = b'{"ok": true}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode())]
_slots: asyncio.Semaphore | None = None


async def work(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The app: every request holds one of ``SLOTS`` slots for ``SERVICE`` seconds, queueing for one in
    arrival order, like a worker pool of known capacity."""
    global _slots
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if _slots is None:
        _slots = asyncio.Semaphore(SLOTS)
    async with _slots:
        await asyncio.sleep(SERVICE)
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})


def __getattr__(name: str) -> object:
    # Built on first access (by uvicorn in a node), configured from AFFINITY_* like a 12-factor deploy.
    if name == "app":
        from affinity_mw import AffinityMiddleware

        app = AffinityMiddleware(work)
        globals()["app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------------------------- the load


class _Client:
    """A minimal HTTP/1.1 keep-alive client per node: enough for GETs with a Content-Length answer, cheap enough
    that the generator does not compete with the nodes for the two cores."""

    IDLE = 1.0  # seconds an idle connection is reused: well below the servers' keep-alive (uvicorn: 5 s)

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self.open: set[asyncio.StreamWriter] = set()

    async def get(self, path: str, tenant: str) -> tuple[int, dict[bytes, bytes]]:
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self.idle:
            reader, writer, since = self.idle.pop()
            if now - since < self.IDLE and not reader.at_eof():
                break
            writer.close()
            self.open.discard(writer)
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self.open.add(writer)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\nX-Tenant: {tenant}\r\n\r\n".encode())
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            status = int(lines[0].split(b" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            await reader.readexactly(int(headers.get(b"content-length", b"0")))
        except BaseException:
            writer.close()
            self.open.discard(writer)
            raise
        self.idle.append((reader, writer, loop.time()))
        return status, headers

    def close(self) -> None:
        for writer in self.open:
            writer.close()


def tenant_mix(tenants: int, exponent: float, hot_share: float) -> list[tuple[str, float]]:
    from affinity_mw.loadsim import zipf_mix

    return zipf_mix(tenants, exponent, hot_share)


async def generate(urls: list[str], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Open-loop arrivals for ``warmup + seconds``; each request's record, scheduled time first."""
    rng = random.Random(args.seed)
    mix = tenant_mix(args.tenants, args.zipf, args.hot_share)
    keys = [key for key, _ in mix]
    cumulative = list(itertools.accumulate(weight for _, weight in mix))
    rate = args.load * len(urls) * SLOTS / SERVICE
    clients = [_Client(url.split("//")[1].rsplit(":", 1)[0], int(url.rsplit(":", 1)[1])) for url in urls]
    records: list[dict[str, Any]] = []
    lag: list[float] = []  # how late the generator itself sent requests (a starved machine shows here)
    tasks: set[asyncio.Task[None]] = set()
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2
    end = args.warmup + args.seconds

    async def one(at: float, tenant: str, entry: int) -> None:
        record: dict[str, Any] = {"t": at, "tenant": tenant, "entry": urls[entry]}
        try:
            status, headers = await asyncio.wait_for(clients[entry].get(f"/t/{tenant}", tenant), args.timeout)
            record["status"] = status
            record["served_by"] = headers.get(b"x-affinity-served-by", b"").decode()
            record["owner"] = headers.get(b"x-affinity-owner", b"").decode()
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            record["error"] = type(exc).__name__
        record["latency"] = loop.time() - start - at
        records.append(record)

    at = 0.0
    while True:
        at += rng.expovariate(rate)
        if at >= end:
            break
        tenant = keys[bisect.bisect_left(cumulative, rng.random() * cumulative[-1])]
        entry = rng.randrange(len(urls))
        delay = start + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            lag.append(-delay)
        task = asyncio.ensure_future(one(at, tenant, entry))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=args.timeout + 1)
    for client in clients:
        client.close()
    records.append({"generator_lag_max": max(lag, default=0.0)})
    return records


def _run(coroutine: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)  # the generator's own CPU is less of the machine's


def summarize(records: list[dict[str, Any]], urls: list[str], args: argparse.Namespace) -> dict[str, Any]:
    lag = records.pop()["generator_lag_max"]
    measured = [r for r in records if r["t"] >= args.warmup]
    ok = [r for r in measured if r.get("status") == 200]
    served = {url: 0 for url in urls}
    for r in ok:
        if r["served_by"] in served:
            served[r["served_by"]] += 1
    mean = sum(served.values()) / len(served)
    latencies = sorted(r["latency"] for r in measured)
    errors = Counter(str(r.get("error", r.get("status"))) for r in measured if r.get("status") != 200)

    def locality(rows: list[dict[str, Any]]) -> float | None:
        return round(sum(r["served_by"] == r["owner"] for r in rows) / len(rows), 4) if rows else None

    def pct(q: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else 0.0

    return {
        "requests": len(measured),
        "rate": round(len(measured) / args.seconds, 1),
        "errors": len(measured) - len(ok),
        "served": served,
        "busiest_over_mean": round(max(served.values()) / mean, 3) if mean else None,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": round(1000 * latencies[-1], 1) if latencies else 0.0,
        "generator_lag_max_ms": round(1000 * lag, 1),
        "loadavg": os.getloadavg()[0],
        "error_kinds": dict(errors),
        "locality_others": locality([r for r in ok if r["tenant"] != "hot"]),
        "locality_hot": locality([r for r in ok if r["tenant"] == "hot"]),
    }


def run_one(factor: str, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    from http_bench import Server

    hosts = [f"127.0.0.{i + 1}" for i in range(args.nodes)]
    urls = [f"http://{host}:{args.port}" for host in hosts]
    env = {
        "AFFINITY_PEERS": ",".join(urls),
        "AFFINITY_SECRET": "hot-tenants-bench-secret-0123456789",
        "AFFINITY_KEY": "header:X-Tenant",
        "AFFINITY_DEBUG_HEADERS": "1",
        "HOT_SLOTS": str(SLOTS),
        "HOT_SERVICE_MS": str(SERVICE * 1000),
    }
    env["AFFINITY_BALANCE_FACTOR"] = "off" if factor == "none" else factor
    if args.floor is not None:
        env["AFFINITY_BALANCE_FLOOR"] = str(args.floor)
    options = SimpleNamespace(log_dir=log_dir, loop="asyncio", http="h11", wsgi=False)
    servers = []
    for i, (host, url) in enumerate(zip(hosts, urls, strict=True)):
        name = f"hot-{factor}-node{i + 1}"
        servers.append(Server(name, "bench.hot_tenants:app", host, args.port, dict(env, AFFINITY_SELF=url), options))
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
        started = time.monotonic()
        records = _run(generate(urls, args))
        result = summarize(records, urls, args)
        result["factor"] = None if factor == "none" else float(factor)
        result["wall_seconds"] = round(time.monotonic() - started, 1)
        return result
    finally:
        for server in servers:
            server.stop()


def render(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        "| AFFINITY_BALANCE_FACTOR | requests (req/s) | busiest / mean | per node | p50 | p99 | errors | "
        "others' locality | hot tenant's locality |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        total = sum(r["served"].values()) or 1
        shares = " / ".join(f"{100 * count / total:.1f}%" for count in r["served"].values())
        lines.append(
            f"| {r['factor'] if r['factor'] is not None else 'off'} | {r['requests']} ({r['rate']}) | "
            f"**{r['busiest_over_mean']}** | {shares} | {r['p50_ms']} ms | **{r['p99_ms']} ms** | {r['errors']} | "
            f"{100 * (r['locality_others'] or 0):.2f}% | {100 * (r['locality_hot'] or 0):.1f}% |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--factors", default="none,1.25", help="comma-separated: none or a balance factor")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument(
        "--port",
        type=int,
        default=21851,
        help="one port on every 127.0.0.x (the ring hashes it; below the ephemeral range)",
    )
    parser.add_argument("--load", type=float, default=0.65, help="arrival rate as a share of the capacity")
    parser.add_argument("--hot-share", type=float, default=0.35)
    parser.add_argument("--tenants", type=int, default=200)
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--seconds", type=float, default=30.0, help="measured seconds per configuration")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before measuring")
    parser.add_argument("--timeout", type=float, default=10.0, help="a request's limit (then counted as an error)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--floor", type=int, help="AFFINITY_BALANCE_FLOOR (default: the middleware's)")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--write", type=Path, help="replace the table between the hot-tenants markers in this file")
    args = parser.parse_args(argv)
    if args.seconds + args.warmup > 300:
        parser.error("--seconds plus --warmup is limited to 300")
    results = []
    with tempfile.TemporaryDirectory(prefix="hot-tenants-") as tmp:
        for factor in (part.strip() for part in args.factors.split(",")):
            if factor != "none":
                float(factor)  # a bad factor fails here, before a cluster starts
            result = run_one(factor, args, Path(tmp))
            results.append(result)
            print(json.dumps(result), flush=True)
    print()
    print(render(results, args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        setup = {k: v for k, v in vars(args).items() if k not in ("json", "write")}
        args.json.write_text(json.dumps({"setup": setup, "results": results}, indent=2) + "\n")
    if args.write:
        write_table(args.write, render(results, args))
    return 0


MARKERS = ("<!-- hot-tenants:start -->", "<!-- hot-tenants:end -->")


def write_table(path: Path, table: str) -> None:
    """Replace what is between the markers in ``path`` (a doc keeps its own words around the table)."""
    text = path.read_text()
    start, end = text.find(MARKERS[0]), text.find(MARKERS[1])
    if start < 0 or end < start:
        raise SystemExit(f"{path}: no {MARKERS[0]} ... {MARKERS[1]} block to replace")
    from http_bench import code_version

    commit, dirty = code_version()
    note = f"\n\nMeasured at commit `{(commit or 'unknown')[:7]}`{' with uncommitted changes' if dirty else ''}."
    path.write_text(text[: start + len(MARKERS[0])] + "\n" + table + note + "\n" + text[end:])


if __name__ == "__main__":
    sys.exit(main())
