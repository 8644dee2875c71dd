"""What agreement with the edge buys: ``python bench/edge_bench.py [--json PATH]``.

nginx (one worker) in front of three uvicorn nodes (one worker each, 127.0.0.1-3), wrk sending ``GET /t/x`` with
an ``X-Tenant`` header taken in turn from 600 tenants (a Lua table built once, so wrk's per-request cost stays
small and the same everywhere). Three scenarios, interleaved in each round:

* ``edge-bare``   nginx ``hash $affinity_mw_key consistent`` -> three bare apps (no middleware): the reference.
* ``edge-agree``  the same nginx configuration (written by ``affinity_mw.edge.nginx_config``) -> three nodes with
                  the middleware and ``AFFINITY_RING=nginx``: every request lands on its owner, no hop.
* ``edge-rr``     nginx round robin -> the same kind of cluster: two requests in three take a hop.

Reported per scenario: req/s, latency percentiles, errors (must be 0), CPU per request over nginx and the three
nodes, and the forwards the nodes counted (``edge-agree`` must count none). The summary is the median over
rounds of each scenario's req/s over ``edge-bare``'s in the same round. Servers start in their own process
groups and are stopped in a ``finally``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from http_bench import CLK_TCK, SECRET, Server, calibrate, free_port, nginx_binary

from affinity_mw.edge import nginx_config
from affinity_mw.introspect import AUTH_HEADER, sign_request
from affinity_mw.ring import NginxRing, Node

HOSTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
PROXY_HOST = "127.0.0.4"
TENANTS = 600
SCENARIOS = ("edge-bare", "edge-agree", "edge-rr")
RING = os.environ.get("EDGE_BENCH_RING", "nginx")  # for debugging the harness only

WRK_LUA = """
local requests = {}
local n = 0
init = function(args)
  for i = 1, %(tenants)d do
    requests[i] = wrk.format("GET", "/t/x", {["X-Tenant"] = "tenant-" .. i})
  end
  n = math.random(%(tenants)d)
end
request = function()
  n = n %% %(tenants)d + 1
  return requests[n]
end
"""
REPORT_LUA = Path(__file__).resolve().parent / "wrk_report.lua"

NGINX_HEAD = """
worker_processes 1;
daemon off;
pid {prefix}/{name}.pid;
error_log {prefix}/{name}-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {prefix}/{name}-body;
    proxy_temp_path {prefix}/{name}-proxy;
    fastcgi_temp_path {prefix}/{name}-fastcgi;
    uwsgi_temp_path {prefix}/{name}-uwsgi;
    scgi_temp_path {prefix}/{name}-scgi;
{body}
}}
"""


class Nginx(Server):
    """nginx with the configuration ``affinity_mw.edge`` writes for the given members, optionally without its hash."""

    def __init__(self, name: str, port: int, members: list[str], args: Any, *, hashed: bool) -> None:
        super().__init__(name, "unused:app", PROXY_HOST, port, {}, args)
        ring = NginxRing([Node(u, u) for u in members])
        body = nginx_config(ring, "header:X-Tenant", listen=f"{PROXY_HOST}:{port}", keepalive=64)
        if not hashed:
            body = body.replace("    hash $affinity_mw_key consistent;\n", "")
        user = "user root;\n" if os.geteuid() == 0 else ""
        conf = args.log_dir / f"{name}.conf"
        conf.write_text(user + NGINX_HEAD.format(prefix=args.log_dir, name=name, body=body))
        binary = nginx_binary()
        assert binary is not None
        self.cmd = [binary, "-p", str(args.log_dir), "-c", str(conf)]

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/t/ready", headers={"X-Tenant": "t"}, timeout=1, trust_env=False)
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} not ready")


class Setup:
    """One scenario: nginx and its three upstream servers."""

    def __init__(self, name: str, args: Any) -> None:
        self.name = name
        port = free_port([*HOSTS, PROXY_HOST])
        self.members = [f"http://{h}:{port}" for h in HOSTS]
        wrapped = name != "edge-bare"
        self.nodes = []
        for i, host in enumerate(HOSTS):
            env: dict[str, str] = {"BENCH_NODE": f"{name}-{i + 1}"}
            if wrapped:
                env |= {"AFFINITY_PEERS": ",".join(self.members), "AFFINITY_SELF": self.members[i]}
                env |= {"AFFINITY_SECRET": SECRET, "AFFINITY_KEY": "header:X-Tenant", "AFFINITY_RING": RING}
            app = "bench.app:wrapped" if wrapped else "bench.app:bare"
            self.nodes.append(Server(f"{name}-{i + 1}", app, host, port, env, args))
        self.proxy = Nginx(f"{name}-nginx", port, self.members, args, hashed=name != "edge-rr")
        self.servers: list[Server] = [self.proxy, *self.nodes]
        self.wrapped = wrapped

    def forwards(self) -> int:
        if not self.wrapped:
            return 0
        total = 0
        for url in self.members:
            r = httpx.get(f"{url}/_affinity/metrics.json", headers={AUTH_HEADER: sign_request(SECRET)}, timeout=10)
            total += r.json()["counters"]["forwarded"]
        return total


def run_wrk(url: str, lua: Path, *, threads: int, connections: int, seconds: int) -> dict[str, Any]:
    import re
    import subprocess

    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s", "-s", str(lua), url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False)
    match = re.search(r"^WRK_JSON (\{.*\})$", out.stdout, re.M)
    if out.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stdout}\n{out.stderr}")
    result: dict[str, Any] = json.loads(match.group(1))
    keys = ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    result["errors"] = sum(result[k] for k in keys)
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    return result


def measure(setup: Setup, lua: Path, args: Any) -> dict[str, Any]:
    before_cpu = [s.cpu_ticks() for s in setup.servers]
    before_fwd = setup.forwards()
    res = run_wrk(f"{setup.proxy.url}/t/x", lua, threads=2, connections=args.connections, seconds=args.duration)
    after_cpu = [s.cpu_ticks() for s in setup.servers]
    forwards = setup.forwards() - before_fwd
    cpu_s = sum(sum(a) - sum(b) for a, b in zip(after_cpu, before_cpu, strict=True)) / CLK_TCK
    requests = max(res["requests"], 1)
    return {
        "rps": round(res["rps"], 1),
        "requests": res["requests"],
        "errors": res["errors"],
        "p50_ms": res["lat_p50_us"] / 1000,
        "p99_ms": res["lat_p99_us"] / 1000,
        "cpu_us_per_req": round(cpu_s / requests * 1e6, 1),
        "forwards": forwards,
        "forwarded_share": round(forwards / requests, 3),
        "calibration_us": calibrate(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of unmeasured load per scenario first")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--write", type=Path, help="rewrite the edge block of this file (docs/benchmarks.md)")
    parser.add_argument("--log-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if nginx_binary() is None:
        print("edge_bench: nginx is not installed (bash bench/setup.sh)", file=sys.stderr)
        return 1
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        args.log_dir = args.log_dir or Path(tmp)
        args.loop, args.http = "asyncio", "h11"
        lua = args.log_dir / "edge.lua"
        lua.write_text(WRK_LUA % {"tenants": TENANTS} + REPORT_LUA.read_text())
        setups = [Setup(name, args) for name in SCENARIOS]
        servers = [s for setup in setups for s in setup.servers]
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SCENARIOS}
        try:
            for setup in setups:
                for server in setup.nodes:
                    server.start()
            for setup in setups:
                for server in setup.nodes:
                    server.wait_ready()
                setup.proxy.start()
                setup.proxy.wait_ready()
                run_wrk(f"{setup.proxy.url}/t/x", lua, threads=2, connections=args.connections, seconds=args.warmup)
            for r in range(args.rounds):
                order = SCENARIOS[r % 3 :] + SCENARIOS[: r % 3]
                for name in order:
                    setup = next(s for s in setups if s.name == name)
                    result = measure(setup, lua, args)
                    runs[name].append(result)
                    print(f"round {r + 1} {name:11s} {result['rps']:8.1f} req/s  forwards {result['forwards']}")
        finally:
            for server in servers:
                server.stop()
    summary: dict[str, Any] = {}
    for name in SCENARIOS:
        ratios = [run["rps"] / bare["rps"] for run, bare in zip(runs[name], runs["edge-bare"], strict=True)]
        summary[name] = {
            "rps": statistics.median(run["rps"] for run in runs[name]),
            "ratio_to_bare": round(statistics.median(ratios), 3),
            "cpu_us_per_req": statistics.median(run["cpu_us_per_req"] for run in runs[name]),
            "p50_ms": statistics.median(run["p50_ms"] for run in runs[name]),
            "p99_ms": statistics.median(run["p99_ms"] for run in runs[name]),
            "forwarded_share": statistics.median(run["forwarded_share"] for run in runs[name]),
            "errors": sum(run["errors"] for run in runs[name]),
        }
    for name, s in summary.items():
        print(
            f"{name:11s} {s['rps']:8.1f} req/s  x{s['ratio_to_bare']:.3f} of bare"
            f"  {s['cpu_us_per_req']:7.1f} us CPU/req"
            f"  p50 {s['p50_ms']:.2f} ms  p99 {s['p99_ms']:.2f} ms  forwarded {100 * s['forwarded_share']:.1f}%"
            f"  errors {s['errors']}"
        )
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "runs": runs, "rounds": args.rounds}, indent=2))
    if args.write:
        write_block(args.write, render(summary, args))
    return 0


START, END = "<!-- edge-results:start -->", "<!-- edge-results:end -->"
LABELS = {
    "edge-bare": "nginx `hash ... consistent` -> 3 bare apps",
    "edge-agree": "nginx `hash ... consistent` -> 3 nodes, `AFFINITY_RING=nginx`",
    "edge-rr": "nginx round robin -> 3 nodes",
}


def render(summary: dict[str, Any], args: Any) -> str:
    from http_bench import code_version, machine

    commit, dirty = code_version()
    info = machine()
    lines = [
        f"Measured at `{commit or 'unknown'}`{' (uncommitted changes)' if dirty else ''} on {info.get('nproc')} "
        f"cores ({info.get('cpu_model', 'unknown CPU')}), {args.rounds} interleaved rounds of {args.duration} s, "
        f"wrk -t2 -c{args.connections}, {TENANTS} tenants in turn, load average {' '.join(info['loadavg_at_start'])} "
        "at the start; medians:",
        "",
        "| scenario | req/s | x bare | CPU us/req | bare CPU / CPU | p50 ms | p99 ms | forwarded | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    bare_cpu = summary["edge-bare"]["cpu_us_per_req"]
    for name in SCENARIOS:
        s = summary[name]
        lines.append(
            f"| {LABELS[name]} | {s['rps']:.0f} | {s['ratio_to_bare']:.3f} | {s['cpu_us_per_req']:.0f} | "
            f"{bare_cpu / s['cpu_us_per_req']:.3f} | "
            f"{s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {100 * s['forwarded_share']:.1f}% | {s['errors']} |"
        )
    return "\n".join(lines)


def write_block(path: Path, block: str) -> None:
    text = path.read_text()
    head, start, rest = text.partition(START)
    _, end, tail = rest.partition(END)
    if not start or not end:
        raise SystemExit(f"{path} has no {START} ... {END} block")
    path.write_text(f"{head}{START}\n{block}\n{END}{tail}")


if __name__ == "__main__":
    sys.exit(main())
