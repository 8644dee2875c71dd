"""What a forwarded websocket costs: ``python bench/ws_bench.py [--json PATH] [--write docs/benchmarks.md]``.

Two uvicorn nodes (one worker each, asyncio + h11, 127.0.0.1 and 127.0.0.2) serve ``bench/ws_app.py``, an echo
behind the ASGI middleware routing by ``path:/ws/{key}``, with a key that node B owns:

* ``direct``     the client connects to B, the owner: the middleware decides "local" and the app echoes.
* ``forwarded``  the client connects to A, which relays the websocket to B (the signed hop marker on the
                 handshake, then every message through A both ways).

Measured per round, the scenarios alternating: the round trip of one 32-byte text message at concurrency 1
(median and p99 over ``--messages`` sequential echoes on one connection, after a warm-up), and messages per
second with ``--connections`` connections each echoing sequentially for ``--duration`` seconds. The client
runs in this process (the ``websockets`` asyncio client). The summary is the median over ``--rounds``; the
forward's cost is forwarded minus direct at c=1, and forwarded over direct in messages per second.

Every server starts in its own process group and is stopped in a ``finally``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from docblock import write_block  # noqa: E402
from websockets.asyncio.client import connect  # noqa: E402

from affinity_mw.membership import StaticMembership  # noqa: E402

BEGIN, END = "<!-- ws-results:start -->", "<!-- ws-results:end -->"
SECRET = "bench-secret-0123456789abcdef"
PAYLOAD = "x" * 32


def start_nodes(port: int) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    urls = [f"http://127.0.0.{i}:{port}" for i in (1, 2)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFFINITY_")}
    env.update(
        AFFINITY_PEERS=",".join(urls), AFFINITY_SECRET=SECRET, AFFINITY_KEY="path:/ws/{key}", PYTHONPATH=str(ROOT)
    )
    procs = []
    for i, url in enumerate(urls):
        cmd = [
            sys.executable, "-m", "uvicorn", "bench.ws_app:app", "--host", f"127.0.0.{i + 1}", "--port", str(port),
            "--http", "h11", "--loop", "asyncio", "--log-level", "warning", "--no-access-log",
        ]  # fmt: skip
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=dict(env, AFFINITY_SELF=url), start_new_session=True))
    for url in urls:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    return procs, urls


def stop_nodes(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def key_owned_by(urls: list[str], owner: str) -> str:
    ring = StaticMembership(urls, urls[0]).ring
    for i in range(10000):
        key = f"room-{i}"
        node = ring.owner_of(key)
        if node is not None and node.id == owner:
            return key
    raise RuntimeError("no key found")


async def latency(url: str, messages: int) -> dict[str, float]:
    async with connect(url, compression=None) as ws:
        for _ in range(200):
            await ws.send(PAYLOAD)
            await ws.recv()
        samples = []
        for _ in range(messages):
            started = time.perf_counter()
            await ws.send(PAYLOAD)
            await ws.recv()
            samples.append(time.perf_counter() - started)
    samples.sort()
    return {"p50_ms": 1000 * statistics.median(samples), "p99_ms": 1000 * samples[int(0.99 * (len(samples) - 1))]}


async def throughput(url: str, connections: int, duration: float) -> float:
    deadline = time.perf_counter() + duration
    counts = [0] * connections

    async def one(i: int) -> None:
        async with connect(url, compression=None) as ws:
            while time.perf_counter() < deadline:
                await ws.send(PAYLOAD)
                await ws.recv()
                counts[i] += 1

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(connections)))
    return sum(counts) / (time.perf_counter() - started)


def render(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [
        f"Websocket echo, 32-byte text messages, two uvicorn nodes (asyncio + h11), {result['rounds']} rounds "
        f"(medians); `make bench` at {result['commit']} on {result['machine']}:",
        "",
        f"| scenario | round trip p50 (c=1) | p99 (c=1) | messages/s ({result['connections']} connections) |",
        "|---|---|---|---|",
    ]
    for name in ("direct", "forwarded"):
        row = s[name]
        lines.append(f"| {name} | {row['p50_ms']:.3f} ms | {row['p99_ms']:.3f} ms | {row['msgs_per_s']:.0f} |")
    lines += [
        "",
        f"A forwarded websocket adds **{s['added_ms']:.3f} ms** to a round trip at c=1 and carries "
        f"**{s['ratio']:.2f} x** the messages per second of a direct one (the relay node parses, and writes, "
        "every message once more each way).",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument("--port", type=int, default=28731)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--write", type=Path, help="rewrite the websocket block of this markdown file")
    args = parser.parse_args(argv)
    procs, urls = start_nodes(args.port)
    try:
        key = key_owned_by(urls, urls[1])
        targets = {
            "direct": f"ws://127.0.0.2:{args.port}/ws/{key}",
            "forwarded": f"ws://127.0.0.1:{args.port}/ws/{key}",
        }
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        for round_ in range(args.rounds):
            order = list(targets) if round_ % 2 == 0 else list(reversed(targets))
            for name in order:
                row = asyncio.run(latency(targets[name], args.messages))
                row["msgs_per_s"] = asyncio.run(throughput(targets[name], args.connections, args.duration))
                runs[name].append(row)
                print(f"round {round_ + 1} {name}: {row}", flush=True)
    finally:
        stop_nodes(procs)
    summary: dict[str, Any] = {
        name: {field: statistics.median(r[field] for r in rows) for field in rows[0]} for name, rows in runs.items()
    }
    summary["added_ms"] = summary["forwarded"]["p50_ms"] - summary["direct"]["p50_ms"]
    summary["ratio"] = summary["forwarded"]["msgs_per_s"] / summary["direct"]["msgs_per_s"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    result = {
        "rounds": args.rounds,
        "messages": args.messages,
        "connections": args.connections,
        "duration": args.duration,
        "runs": runs,
        "summary": summary,
        "commit": commit.stdout.strip() or "unknown",
        "machine": f"{os.cpu_count()} cores, Python {platform.python_version()}",
    }
    print(render(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.write and not write_block(args.write, BEGIN, END, render(result)):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
