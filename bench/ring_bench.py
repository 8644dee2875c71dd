"""Measure what the ring costs on the hot path: ``python bench/ring_bench.py [--json out.json]``.

Every keyed request pays one ``hash_key`` and one ``owner`` lookup, so those two numbers bound the routing
overhead the middleware can add; max/mean load shows what 160 virtual nodes buy in balance, and build time
what a membership change costs. Timings are the best of 5 runs (the least disturbed by the rest of the
machine) over 100,000 precomputed keys, and include the Python loop and call, as a caller would pay them.
Runs in a few seconds.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import timeit
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from affinity_mw.ring import DEFAULT_VNODES, HashRing, Node, hash_key

LOOKUPS = 100_000
REPEAT = 5


def make_nodes(count: int) -> list[Node]:
    return [
        Node(f"http://10.0.{i // 256}.{i % 256}:8000", f"http://10.0.{i // 256}.{i % 256}:8000") for i in range(count)
    ]


def best_ns_per_call(stmt: str, namespace: dict[str, Any]) -> float:
    """Best of REPEAT runs, in ns per lookup: the minimum is the run least disturbed by other processes."""
    runs = timeit.repeat(stmt, globals=namespace, number=1, repeat=REPEAT)
    return min(runs) / LOOKUPS * 1e9


def measure(count: int, vnodes: int, keys: list[str], hashes: list[int]) -> dict[str, Any]:
    nodes = make_nodes(count)
    builds = []
    for _ in range(3):
        started = time.perf_counter()
        ring = HashRing(nodes, vnodes=vnodes)
        builds.append(time.perf_counter() - started)
    namespace: dict[str, Any] = {
        "owner": ring.owner,
        "owner_of": ring.owner_of,
        "hashes": hashes,
        "keys": keys,
    }
    empty_loop = best_ns_per_call("for h in hashes: pass", namespace)
    lookup = best_ns_per_call("for h in hashes: owner(h)", namespace)
    hash_lookup = best_ns_per_call("for k in keys: owner_of(k)", namespace)
    loads = Counter(ring.owner(h) for h in hashes)
    max_mean = max(loads.values()) / (LOOKUPS / count)
    return {
        "nodes": count,
        "vnodes": vnodes,
        "points": vnodes * count,
        "lookup_ns": round(lookup, 1),
        "hash_lookup_ns": round(hash_lookup, 1),
        "loop_overhead_ns": round(empty_loop, 1),
        "max_mean_load": round(max_mean, 3),
        "max_mean_share": round(max(ring.shares().values()) * count, 3),
        "build_ms": round(min(builds) * 1e3, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--vnodes", type=int, default=DEFAULT_VNODES, help="points per node (default 160)")
    parser.add_argument("--nodes", default="3,10,100", help="comma-separated cluster sizes (default 3,10,100)")
    args = parser.parse_args(argv)

    keys = [f"tenant-{i}" for i in range(LOOKUPS)]
    hashes = [hash_key(k) for k in keys]
    rows = [measure(int(c), args.vnodes, keys, hashes) for c in args.nodes.split(",")]

    header = ("nodes", "vnodes", "lookup ns", "hash+lookup ns", "max/mean load", "build ms")
    fields = ("nodes", "vnodes", "lookup_ns", "hash_lookup_ns", "max_mean_load", "build_ms")
    widths = [max(len(h), 8) for h in header]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(str(row[f]).rjust(w) for f, w in zip(fields, widths, strict=True)))
    print(
        f"(best of {REPEAT} x {LOOKUPS:,} lookups, Python loop and call included; "
        f"an empty loop costs {rows[0]['loop_overhead_ns']} ns per item; "
        f"{platform.python_implementation()} {platform.python_version()} on {platform.machine()})"
    )
    if args.json:
        result = {
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "machine": platform.machine(),
            "lookups": LOOKUPS,
            "repeat": REPEAT,
            "results": rows,
        }
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
