"""Compare the ring algorithms: ``python bench/ring_bench.py [--quick] [--json out.json]``.

For each algorithm (``ring``, ``maglev``, ``rendezvous``) and cluster size (3, 10, 50, 100 nodes) over
1,000,000 fixed keys (``--quick``: 100,000):

* **lookup ns**: ``owner(key_hash)`` per key, the median of 3 runs (each over the first 200,000 key hashes at
  most, so the O(N) rendezvous stays bounded), Python loop and call included; **hash+lookup ns** adds
  ``hash_key``, which the router memoizes per key;
* **max/mean load** over the keys (sampling alone puts about ``1 + 2.5 * sqrt(N / keys)`` here even for a
  perfect split: 1.025 at 100 nodes and 1M keys) and **max/mean share**, the exact keyspace share;
* **moved on add / remove** as a ratio to the ideal ``1/(N+1)`` / ``1/N``: the keys (of all of them) whose
  owner changed when one node joins, and when node ``N // 2`` leaves; **excess** is the exact keyspace
  fraction that moved beyond the leaving node's own share, averaged over up to 10 leaving nodes (0 when only
  the leaver's keys move);
* **successor agreement**: over the keys of up to 10 leaving nodes, how often ``successors(h)[1]`` is the
  owner once the leaver is gone (the failover order's promise);
* **memory** of the built structure (containers and ints, not the shared Node objects) and **build ms**.

Writes the raw rows with ``--json`` (``bench/results/ring.json`` by convention) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from affinity_mw.ring import (
    DEFAULT_ALGORITHM,
    DEFAULT_VNODES,
    MAGLEV_TABLE_SIZES,
    RING_ALGORITHMS,
    MaglevRing,
    Node,
    Ring,
    build_ring,
    hash_key,
)

KEYS = 1_000_000
QUICK_KEYS = 100_000
TIMED_KEYS = 200_000
RUNS = 3
LEAVERS = 10


def make_nodes(count: int, first: int = 0) -> list[Node]:
    return [
        Node(f"http://10.0.{i // 256}.{i % 256}:8000", f"http://10.0.{i // 256}.{i % 256}:8000")
        for i in range(first, first + count)
    ]


def deep_size(obj: Any, seen: set[int] | None = None) -> int:
    """Bytes of the containers and numbers reachable from ``obj``; Node objects (shared) are not counted."""
    seen = set() if seen is None else seen
    if id(obj) in seen or isinstance(obj, Node | str | type):
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, list | tuple | set | frozenset):
        size += sum(deep_size(item, seen) for item in obj)
    return size


def structure_size(ring: Ring) -> int:
    """The ring's own state (memos excluded: they are empty after a build and bounded later)."""
    seen: set[int] = set()
    total = sys.getsizeof(ring)
    for cls in type(ring).__mro__:
        for name in getattr(cls, "__slots__", ()):
            if name in ("_successors", "_memo", "_by_id", "_nodes", "_checksum"):
                continue
            total += deep_size(getattr(ring, name), seen)
    return total


def median_ns(run: Callable[[], object], count: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(RUNS):
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) / count * 1e9)
    return statistics.median(times), times


def moved(before: list[Node | None], after: Ring, hashes: list[int]) -> float:
    owner = after.owner
    return sum(1 for a, h in zip(before, hashes, strict=True) if a is None or owner(h).id != a.id) / len(hashes)  # type: ignore[union-attr]


def measure(algorithm: str, count: int, keys: list[str], hashes: list[int]) -> dict[str, Any]:
    nodes = make_nodes(count)
    builds = []
    for _ in range(RUNS):
        started = time.perf_counter()
        ring = build_ring(nodes, algorithm)
        builds.append(time.perf_counter() - started)
    memory = structure_size(ring)
    owner, owner_of = ring.owner, ring.owner_of
    timed, timed_keys = hashes[:TIMED_KEYS], keys[:TIMED_KEYS]
    loop_ns, _ = median_ns(lambda: [None for h in timed], len(timed))
    lookup_ns, lookup_runs = median_ns(lambda: [owner(h) for h in timed], len(timed))
    hash_lookup_ns, _ = median_ns(lambda: [owner_of(k) for k in timed_keys], len(timed))

    owners = [owner(h) for h in hashes]
    loads = Counter(n.id for n in owners if n is not None)
    mean = len(hashes) / count
    shares = ring.shares()

    joined = build_ring([*nodes, *make_nodes(1, first=1000)], algorithm)
    leaver = ring.nodes[count // 2]
    left = build_ring([n for n in nodes if n is not leaver], algorithm)
    moved_add = moved(owners, joined, hashes)
    moved_remove = moved(owners, left, hashes)

    # Exact structure-level excess and successor agreement over several leavers (a sample of the keys).
    step = max(1, count // LEAVERS)
    leavers = list(ring.nodes[::step][:LEAVERS])
    sample = hashes[:200_000]
    sample_owners = owners[:200_000]
    excess, agree, total = [], 0, 0
    for gone in leavers:
        without = left if gone is leaver else build_ring([n for n in nodes if n is not gone], algorithm)
        excess.append(ring.moved_fraction(without) - shares[gone.id])
        for h, o in zip(sample, sample_owners, strict=True):
            if o is gone:
                total += 1
                agree += ring.successors(h, 2)[1].id == without.owner(h).id  # type: ignore[union-attr]
    return {
        "algorithm": algorithm,
        "nodes": count,
        "keys": len(hashes),
        "lookup_ns": round(lookup_ns - loop_ns, 1),
        "lookup_runs_ns": [round(t, 1) for t in lookup_runs],
        "loop_overhead_ns": round(loop_ns, 1),
        "hash_lookup_ns": round(hash_lookup_ns - loop_ns, 1),
        "max_mean_load": round(max(loads.values()) / mean, 4),
        "min_mean_load": round(min(loads.get(n.id, 0) for n in nodes) / mean, 4),
        "max_mean_share": round(max(shares.values()) * count, 4),
        "moved_add": round(moved_add, 5),
        "moved_add_ratio": round(moved_add * (count + 1), 3),
        "moved_remove": round(moved_remove, 5),
        "moved_remove_ratio": round(moved_remove * count, 3),
        "removed_share_ratio": round(shares[leaver.id] * count, 3),
        "excess_moved": round(statistics.fmean(excess), 5),
        "excess_moved_ratio": round(statistics.fmean(excess) * count, 3),
        "successor_agreement": round(agree / total, 4) if total else None,
        "successor_agreement_keys": total,
        "memory_bytes": memory,
        "build_ms": round(min(builds) * 1e3, 2),
    }


def maglev_sizes(count: int) -> list[dict[str, Any]]:
    """Maglev's extra movement against its table size, exactly (slot by slot), for ``count`` nodes."""
    rows = []
    nodes = make_nodes(count)
    for size in MAGLEV_TABLE_SIZES[:3]:
        started = time.perf_counter()
        ring = MaglevRing(nodes, size=size)
        build = time.perf_counter() - started
        removes = [
            ring.moved_fraction(MaglevRing([n for n in nodes if n is not gone], size=size)) * count
            for gone in ring.nodes[:: max(1, count // 4)][:4]
        ]
        add = ring.moved_fraction(MaglevRing([*nodes, *make_nodes(1, first=1000)], size=size)) * (count + 1)
        rows.append(
            {
                "nodes": count,
                "size": size,
                "build_ms": round(build * 1e3, 1),
                "moved_remove_ratio": round(statistics.fmean(removes), 3),
                "moved_add_ratio": round(add, 3),
                "memory_bytes": structure_size(ring),
            }
        )
    return rows


COLUMNS = (
    ("algorithm", "algorithm"),
    ("nodes", "nodes"),
    ("lookup ns", "lookup_ns"),
    ("hash+lookup ns", "hash_lookup_ns"),
    ("max/mean load", "max_mean_load"),
    ("max/mean share", "max_mean_share"),
    ("moved add / ideal", "moved_add_ratio"),
    ("moved remove / ideal", "moved_remove_ratio"),
    ("excess moved / ideal", "excess_moved_ratio"),
    ("successor agreement", "successor_agreement"),
    ("memory KB", "memory_kb"),
    ("build ms", "build_ms"),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_KEYS:,} keys instead of {KEYS:,}")
    parser.add_argument("--nodes", default="3,10,50,100", help="comma-separated cluster sizes (3,10,50,100)")
    parser.add_argument("--algorithms", default=",".join(RING_ALGORITHMS), help="comma-separated algorithms")
    args = parser.parse_args(argv)

    count = QUICK_KEYS if args.quick else KEYS
    keys = [f"tenant-{i}" for i in range(count)]
    hashes = [hash_key(k) for k in keys]
    rows = []
    for size in (int(c) for c in args.nodes.split(",")):
        for algorithm in args.algorithms.split(","):
            row = measure(algorithm, size, keys, hashes)
            row["memory_kb"] = round(row["memory_bytes"] / 1024, 1)
            rows.append(row)
            print(f"  measured {algorithm} at {size} nodes", file=sys.stderr, flush=True)
    sizes = maglev_sizes(100) if "maglev" in args.algorithms and not args.quick else []

    print("| " + " | ".join(h for h, _ in COLUMNS) + " |")
    print("|" + "|".join("---" if f == "algorithm" else "---:" for _, f in COLUMNS) + "|")
    for row in rows:
        print("| " + " | ".join(str(row[f]) for _, f in COLUMNS) + " |")
    print(
        f"\n({count:,} keys; lookups the median of {RUNS} runs over {min(count, TIMED_KEYS):,} of them, the "
        f"Python loop's {rows[0]['loop_overhead_ns']} ns per item subtracted; vnodes {DEFAULT_VNODES}; "
        f"{platform.python_implementation()} {platform.python_version()} on {platform.machine()})"
    )
    if sizes:
        print("\n| Maglev at 100 nodes: table size | build ms | moved remove / ideal | moved add / ideal | memory KB |")
        print("|---:|---:|---:|---:|---:|")
        for s in sizes:
            print(
                f"| {s['size']} | {s['build_ms']} | {s['moved_remove_ratio']} | {s['moved_add_ratio']} | "
                f"{round(s['memory_bytes'] / 1024, 1)} |"
            )
    if args.json:
        result = {
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "machine": platform.machine(),
            "keys": count,
            "timed_keys": min(count, TIMED_KEYS),
            "runs": RUNS,
            "vnodes": DEFAULT_VNODES,
            "default_algorithm": DEFAULT_ALGORITHM,
            "results": rows,
            "maglev_table_sizes": sizes,
        }
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
