"""The ``affinity-mw`` command: answer an operator's questions in seconds.

    affinity-mw owner KEY...            who owns these keys, and the failover order
    affinity-mw ring                    share of the keyspace per node, balance, checksum
    affinity-mw simulate --add 1        how many keys move when nodes join or leave, against the ideal
    affinity-mw simulate --zipf 1.1     a skewed tenant mix: per-node load with and without bounded loads
    affinity-mw check URL...            do all nodes agree on the ring? (asks each node's introspection path)
    affinity-mw drain [URL] [--undo]    make a node drain before it stops (a Kubernetes preStop hook)
    affinity-mw demo                    a real local cluster: traffic, a node killed, a node added
    affinity-mw edge nginx              an nginx upstream and location that send each request to its owner
    affinity-mw serve --workers 4 APP   N server processes on consecutive ports, each its own ring member

Membership comes from ``--peers`` or ``AFFINITY_PEERS`` (and ``--vnodes``/``AFFINITY_VNODES``), exactly as the
middleware reads it, so the answers are the ones the cluster computes. Tables by default, ``--json`` for scripts;
the exit status is non-zero when something is wrong (unreachable nodes, disagreeing rings, bad arguments).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from .balance import DEFAULT_FLOOR
from .membership import StaticMembership, normalize_url
from .ring import DEFAULT_ALGORITHM, Node, Ring, build_ring

__all__ = ["main"]


def _ring(args: argparse.Namespace) -> Ring:
    peers = args.peers if args.peers is not None else os.environ.get("AFFINITY_PEERS", "")
    urls = [p for p in (part.strip() for part in peers.split(",")) if p]
    if not urls:
        raise SystemExit("affinity-mw: no members: pass --peers URL,URL,... or set AFFINITY_PEERS")
    algorithm = os.environ.get("AFFINITY_RING", "").strip().lower() or DEFAULT_ALGORITHM
    return StaticMembership(urls, vnodes=args.vnodes, algorithm=algorithm).ring


def _print(args: argparse.Namespace, data: Any, table: list[list[str]] | None = None, footer: str = "") -> None:
    if args.json:
        print(json.dumps(data, indent=2))
        return
    if table:
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        for n, row in enumerate(table):
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
            if n == 0:
                print("  ".join("-" * w for w in widths))
    if footer:
        print(footer)


def cmd_owner(args: argparse.Namespace) -> int:
    ring = _ring(args)
    rows = []
    for key in args.keys:
        order = [n.id for n in ring.successors(ring.key_hash(key))]
        rows.append({"key": key, "owner": order[0], "failover_order": order})
    table = [["key", "owner", "then"]] + [[r["key"], r["owner"], ", ".join(r["failover_order"][1:])] for r in rows]
    _print(args, rows if len(rows) > 1 else rows[0], table)
    return 0


def _balance(shares: dict[str, float]) -> float:
    mean = 1 / len(shares)
    return max(shares.values()) / mean


def cmd_ring(args: argparse.Namespace) -> int:
    ring = _ring(args)
    shares = ring.shares()
    data = {
        "checksum": ring.checksum,
        "vnodes": ring.vnodes,
        "members": [{"id": n.id, "weight": n.weight, "share": round(shares[n.id], 6)} for n in ring.nodes],
        "max_over_mean": round(_balance(shares), 4),
    }
    table = [["node", "weight", "share"]] + [[n.id, str(n.weight), f"{100 * shares[n.id]:.2f}%"] for n in ring.nodes]
    _print(args, data, table, f"\nchecksum {ring.checksum}  vnodes {ring.vnodes}  max/mean {_balance(shares):.3f}")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    if args.zipf is not None or args.mix is not None:
        return _simulate_skew(args)
    before = _ring(args)
    nodes = {n.id: n for n in before.nodes}
    for raw in args.remove:
        url = normalize_url(raw)
        if url not in nodes:
            raise SystemExit(f"affinity-mw: --remove {raw}: not a member ({', '.join(nodes)})")
        del nodes[url]
    added = [normalize_url(u) for u in args.add_node]
    added += [f"http://new-{i + 1}.invalid:80" for i in range(args.add)]
    for url in added:
        nodes[url] = Node(url, url)
    if not nodes:
        raise SystemExit("affinity-mw: simulate: no member left")
    after = build_ring(nodes.values(), before.algorithm, vnodes=args.vnodes)
    moved = before.moved_fraction(after)
    common = len({n.id for n in before.nodes} & set(nodes))
    # The least any scheme can move with balanced shares before and after.
    ideal = 1 - common / max(len(before), len(after))
    s_before, s_after = before.shares(), after.shares()
    ids = sorted(set(s_before) | set(s_after))
    data = {
        "moved_fraction": round(moved, 6),
        "ideal_fraction": round(ideal, 6),
        "moved_over_ideal": round(moved / ideal, 4) if ideal else None,
        "nodes": [{"id": i, "before": round(s_before.get(i, 0), 6), "after": round(s_after.get(i, 0), 6)} for i in ids],
    }
    table = [["node", "before", "after"]] + [
        [i, f"{100 * s_before.get(i, 0):.2f}%", f"{100 * s_after.get(i, 0):.2f}%"] for i in ids
    ]
    footer = f"\nkeys moved {100 * moved:.2f}% (ideal {100 * ideal:.2f}%"
    footer += f", {moved / ideal:.3f} x ideal)" if ideal else ")"
    _print(args, data, table, footer)
    return 0


def _simulate_skew(args: argparse.Namespace) -> int:
    """The skewed-load simulation (:mod:`affinity_mw.loadsim`): the same requests routed to their owners, then
    with bounded loads at ``--factor``."""
    from .loadsim import load_mix, simulate, zipf_mix

    if args.add or args.add_node or args.remove:
        raise SystemExit("affinity-mw simulate: --zipf/--mix simulate load on the current members; drop --add/--remove")
    if args.zipf is not None and args.mix is not None:
        raise SystemExit("affinity-mw simulate: give either --zipf or --mix, not both")
    ring = _ring(args)
    mix = load_mix(args.mix) if args.mix is not None else zipf_mix(args.tenants, args.zipf, args.hot_share)
    heaviest = max(mix, key=lambda item: item[1])[0]
    options = {
        "requests": args.requests, "load": args.load, "slots": args.slots, "service": args.service_ms / 1000,
        "hop": args.hop_ms / 1000, "floor": args.floor, "seed": args.seed,
    }  # fmt: skip
    runs = [simulate(ring, mix, factor=factor, **options).summary([heaviest]) for factor in (None, args.factor)]
    data = {"heaviest_key": heaviest, "without": runs[0], "with": runs[1]}
    table = [["node", "owner only", f"factor {args.factor:g}"]]
    for node in runs[0]["nodes"]:  # type: ignore[attr-defined]
        shares = [f"{100 * run['nodes'][node]['share']:.1f}%" for run in runs]  # type: ignore[index]
        table.append([node, *shares])
    rows = [
        ("busiest / mean", "max_over_mean", "{:.3f}"), ("p50 latency", "p50_ms", "{:.1f} ms"),
        ("p99 latency", "p99_ms", "{:.1f} ms"), ("requests moved off their owner", "spilled", "{}"),
        (f"locality of all but {heaviest!r}", "locality_others", "{:.2%}"),
    ]  # fmt: skip
    footer = "\n" + "\n".join(
        f"{label:<34}{fmt.format(runs[0][field]):>14}{fmt.format(runs[1][field]):>14}" for label, field, fmt in rows
    )
    _print(args, data, table, footer)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    import urllib3

    from .introspect import AUTH_HEADER, sign_request

    secret = args.secret or os.environ.get("AFFINITY_SECRET", "")
    headers = {"Accept": "application/json"}
    if secret:
        headers[AUTH_HEADER] = sign_request([s.strip() for s in secret.split(",") if s.strip()])
    path = args.path.rstrip("/") + "/status.json"
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=5), retries=False)
    # A node shows its status only to signed requests; anything else gets the app's own answer for the path (often
    # 404), so an answer other than 200 means "reachable, but would not tell", never "unreachable".
    refused = (
        "reachable; unsigned request not answered: set AFFINITY_SECRET or pass --secret"
        if not secret
        else "reachable; did not accept the signed request: another secret, AFFINITY_INTROSPECTION=off, or "
        "another AFFINITY_INTROSPECTION_PATH (--path)"
    )
    results: list[dict[str, Any]] = []
    for url in args.urls:
        base = url.rstrip("/")
        try:
            r = http.request("GET", base + path, headers=headers)
        except urllib3.exceptions.HTTPError as exc:
            results.append({"url": base, "ok": False, "reachable": False, "error": str(exc)})
            continue
        try:
            if r.status != 200:
                raise ValueError(f"HTTP {r.status}")
            info = json.loads(r.data)
            ring = info["ring"]
            results.append({"url": base, "ok": True, "reachable": True, "node": info["node"], "status": info["status"],
                            "checksum": ring["checksum"], "members": len(ring["members"]),
                            "locality_ratio": info["locality_ratio"]})  # fmt: skip
        except (ValueError, KeyError, TypeError) as exc:
            results.append({"url": base, "ok": False, "reachable": True, "error": f"{refused} ({exc})"})
    checksums = {row["checksum"] for row in results if row["ok"]}
    agree = len(checksums) == 1 and all(row["ok"] for row in results)
    table = [["url", "status", "checksum", "members", "locality"]]
    for row in results:
        if row["ok"]:
            ratio = "n/a" if row["locality_ratio"] is None else f"{100 * row['locality_ratio']:.1f}%"
            table.append([row["url"], row["status"], row["checksum"], str(row["members"]), ratio])
        else:
            table.append([row["url"], "REACHABLE" if row["reachable"] else "UNREACHABLE", "-", "-", "-"])
    if agree:
        verdict = "all nodes agree on the ring"
    elif len(checksums) > 1:
        verdict = "NODES DISAGREE on the ring"
    else:
        verdict = "CANNOT COMPARE the rings"
    notes = "".join(f"\n{row['url']}: {row['error']}" for row in results if not row["ok"])
    _print(args, {"agree": agree, "nodes": results}, table, f"\n{verdict}{notes}")
    return 0 if agree else 1


def cmd_drain(args: argparse.Namespace) -> int:
    """Start (or with --undo stop) draining a node: what a Kubernetes preStop hook runs inside the pod."""
    import urllib3

    from .introspect import AUTH_HEADER, sign_request

    secret = args.secret or os.environ.get("AFFINITY_SECRET", "")
    if not secret:
        raise SystemExit("affinity-mw drain: the request must be signed: set AFFINITY_SECRET or pass --secret")
    auth = sign_request([s.strip() for s in secret.split(",") if s.strip()])
    path = os.environ.get("AFFINITY_HEALTH_PATH", "/_affinity/health").rstrip("/") + "/drain"
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=5), retries=False)
    r = http.request("DELETE" if args.undo else "POST", args.url.rstrip("/") + path, headers={AUTH_HEADER: auth})
    print(r.data.decode("utf-8", "replace").strip())
    return 0 if r.status == 200 else 1


def cmd_demo(args: argparse.Namespace) -> int:
    import importlib

    missing = []
    for module, package in (("dns", "dnspython"), ("uvicorn", "uvicorn")):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(package)
    if missing:
        raise SystemExit(
            "affinity-mw demo runs a real local cluster: uvicorn nodes whose members come from a local DNS server. "
            f"It needs {' and '.join(missing)}, which the core package does not install: "
            "pip install 'affinity-mw[demo]' (in a clone: pip install '.[demo]')"
        )
    from .demo import run_demo

    return run_demo(short=args.short, app=args.app, app_dir=args.app_dir)


def cmd_edge(args: argparse.Namespace) -> int:
    """Print the front proxy's configuration for the members and key source the nodes are configured with."""
    from .edge import nginx_config, routing_settings
    from .membership import membership_from_settings

    settings = routing_settings({"peers": args.peers} if args.peers is not None else {})
    membership = membership_from_settings(settings)
    try:
        ring = membership.ring
    finally:
        close = getattr(membership, "close", None)
        if close is not None:
            close()
    notes: list[str] = []
    if settings.dns:
        source = f"DNS {settings.dns}, as resolved when this was generated"
        notes.append(
            "nginx resolves server names only when it loads its configuration: regenerate this file and run "
            "`nginx -s reload` when the members change (docs/deploy.md shows a loop that does it)"
        )
    else:
        source = "AFFINITY_PEERS"
    print(
        nginx_config(
            ring,
            settings.key,
            upstream=args.upstream,
            trusted_proxies=settings.trusted_proxies,
            listen=args.listen,
            keepalive_timeout=settings.keepalive,
            source=source,
            notes=notes,
        ),
        end="",
    )
    if not ring.nodes:
        print("affinity-mw: no members (an empty DNS answer or a failed lookup)", file=sys.stderr)
        return 1
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import serve

    extra = list(args.server_args)
    if extra[:1] == ["--"]:
        extra = extra[1:]
    return serve(
        args.app,
        workers=args.workers,
        host=args.host,
        port=args.port,
        advertise=args.advertise,
        server=args.server,
        grace=args.grace,
        extra=extra,
    )


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="affinity-mw", description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--peers", help="comma-separated member URLs (default: AFFINITY_PEERS)")
    common.add_argument("--vnodes", type=int, default=int(os.environ.get("AFFINITY_VNODES", 160)))
    common.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("owner", parents=[common], help="owner and failover order of keys")
    p.add_argument("keys", nargs="+")
    p.set_defaults(func=cmd_owner)
    p = sub.add_parser("ring", parents=[common], help="share of keys per node, balance, checksum")
    p.set_defaults(func=cmd_ring)
    p = sub.add_parser("simulate", parents=[common], help="keys moved by a membership change, or a skewed load")
    p.add_argument("--add", type=int, default=0, help="number of new nodes to add")
    p.add_argument("--add-node", action="append", default=[], metavar="URL", help="a new node to add (repeatable)")
    p.add_argument("--remove", action="append", default=[], metavar="URL", help="a node to remove (repeatable)")
    skew = p.add_argument_group("skewed load (with --zipf or --mix): per-node load with and without bounded loads")
    skew.add_argument("--zipf", type=float, metavar="S", help="tenants' request weights in proportion to 1/rank**S")
    skew.add_argument("--tenants", type=_positive_int, default=200, help="Zipf tenants (default: %(default)s)")
    skew.add_argument("--hot-share", type=float, default=0.0, help="share of one extra tenant 'hot' (e.g. 0.35)")
    skew.add_argument("--mix", metavar="FILE", help="tenant mix: one 'KEY WEIGHT' per line")
    skew.add_argument("--load", type=float, default=0.65, help="arrivals as a share of capacity (%(default)s)")
    skew.add_argument("--slots", type=_positive_int, default=2, help="requests a node serves at once (%(default)s)")
    skew.add_argument("--service-ms", type=float, default=20.0, help="time to serve one (%(default)s)")
    skew.add_argument("--hop-ms", type=float, default=0.5, help="one way of a forward (%(default)s)")
    skew.add_argument("--factor", type=float, default=1.25, help="AFFINITY_BALANCE_FACTOR to compare (%(default)s)")
    skew.add_argument("--floor", type=int, default=DEFAULT_FLOOR, help="AFFINITY_BALANCE_FLOOR (%(default)s)")
    skew.add_argument("--requests", type=_positive_int, default=50_000, help="requests simulated (%(default)s)")
    skew.add_argument("--seed", type=int, default=1, help="random seed: the same seed, the same run")
    p.set_defaults(func=cmd_simulate)
    p = sub.add_parser("check", help="ask nodes whether they agree on the ring")
    p.add_argument("urls", nargs="+", metavar="URL")
    p.add_argument("--secret", help="cluster secret to sign the request (default: AFFINITY_SECRET)")
    p.add_argument("--path", default=os.environ.get("AFFINITY_INTROSPECTION_PATH", "/_affinity"))
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("drain", help="make a node drain (a preStop hook), or stop draining with --undo")
    p.add_argument("url", nargs="?", default="http://127.0.0.1:8000", help="the node (default: %(default)s)")
    p.add_argument("--undo", action="store_true", help="stop draining")
    p.add_argument("--secret", help="cluster secret to sign the request (default: AFFINITY_SECRET)")
    p.set_defaults(func=cmd_drain)
    p = sub.add_parser("demo", help="run a local cluster, kill a node, add a node (bounded, stops everything)")
    p.add_argument("--short", action="store_true", help="fewer requests, assert the results (for CI)")
    p.add_argument("--app", default=None, help="ASGI app to run (default: a built-in tenant counter)")
    p.add_argument("--app-dir", default=None, help="directory to import --app from")
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("edge", help="front-proxy configuration that sends each request to its owner (no hop)")
    p.add_argument("proxy", choices=["nginx"], help="the proxy to configure")
    p.add_argument("--peers", help="comma-separated member URLs (default: AFFINITY_PEERS, or AFFINITY_DNS)")
    p.add_argument("--listen", help="also write a whole server block listening here (e.g. 80, or 0.0.0.0:8080)")
    p.add_argument("--upstream", default="affinity_mw", help="the upstream block's name (default: %(default)s)")
    p.set_defaults(func=cmd_edge)
    p = sub.add_parser("serve", help="run N worker processes, each a ring member on its own port")
    p.add_argument("app", help="the application, module:attribute (ASGI for uvicorn, WSGI for gunicorn)")
    p.add_argument("--workers", type=_positive_int, default=1, help="worker processes (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="the first worker's port; the others follow (%(default)s)")
    p.add_argument("--advertise", help="the host peers reach the workers at (default: POD_IP, else --host)")
    p.add_argument("--server", choices=["uvicorn", "gunicorn"], default="uvicorn", help="(default: %(default)s)")
    p.add_argument("--grace", type=float, default=30.0, help="seconds for workers to stop (default: %(default)s)")
    p.add_argument("server_args", nargs=argparse.REMAINDER, help="after --: more arguments for each server")
    p.set_defaults(func=cmd_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ValueError as exc:  # bad URLs and the like: a clear message, not a traceback
        print(f"affinity-mw: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
