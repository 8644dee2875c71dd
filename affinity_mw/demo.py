"""``affinity-mw demo``: a real local cluster, membership from a real DNS server, one node killed, one added.

Everything runs on loopback: a development DNS server (:mod:`affinity_mw.devdns`) serves the member list, three
uvicorn nodes on 127.0.0.1-3 read it every second, and bounded traffic for many tenants goes to random nodes.
Phase by phase it prints requests per node, the locality ratio (share of requests served by their tenant's
owner), forwards, failovers, errors, and how many keys moved against the ideal. Every process it starts is
stopped when it ends, however it ends. ``--short`` sends fewer requests and checks its own table (exit 1 if
locality < 99% in steady state, any error after the kill, or keys moved beyond 1.1 x the ideal).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .ring import HashRing, Node

__all__ = ["run_demo"]

NAME = "demo.affinity.test"


def _free_port(hosts: list[str], preferred: int = 18000) -> int:
    # A fixed preferred port makes the node ids, and so the ring, the same on every run.
    candidates: list[int] = [preferred, *range(preferred + 1, preferred + 500)]
    for port in candidates:
        try:
            for host in hosts:
                with socket.socket() as s:
                    s.bind((host, port))
            return port
        except OSError:
            continue
    raise SystemExit("affinity-mw demo: no free port found")


def _ring(urls: list[str]) -> HashRing:
    return HashRing([Node(u, u) for u in urls])


class _Cluster:
    def __init__(self, tmp: Path, app: str, app_dir: str | None, port: int, dns: Any) -> None:
        self.tmp, self.app, self.app_dir, self.port, self.dns = tmp, app, app_dir, port, dns
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.secret = secrets.token_urlsafe(32)

    def url(self, i: int) -> str:
        return f"http://127.0.0.{i}:{self.port}"

    def publish(self, members: list[int]) -> None:
        self.dns.write({"ttl": 1, "records": {NAME: {"A": [f"127.0.0.{i}" for i in members]}}})

    def start(self, i: int) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AFFINITY_")}
        env.update(
            AFFINITY_DNS=NAME,
            AFFINITY_DNS_PORT=str(self.port),
            AFFINITY_DNS_NAMESERVER=self.dns.nameserver,
            AFFINITY_DNS_REFRESH="1",
            AFFINITY_SELF=self.url(i),
            AFFINITY_SECRET=self.secret,
            AFFINITY_KEY="header:X-Tenant",
            AFFINITY_DEBUG_HEADERS="1",
            AFFINITY_INTROSPECTION="127.0.0.0/8",
        )
        cmd = [sys.executable, "-m", "uvicorn", self.app, "--host", f"127.0.0.{i}", "--port", str(self.port),
               "--log-level", "error", "--no-access-log"]  # fmt: skip
        if self.app_dir:
            cmd += ["--app-dir", self.app_dir]
        with open(self.tmp / f"node{i}.log", "ab") as log:
            self.procs[self.url(i)] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)

    def kill(self, i: int) -> None:
        proc = self.procs.pop(self.url(i))
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()


def _converge(http: Any, urls: list[str], members: list[str], timeout: float = 20.0) -> None:
    """Wait until every node answers and sees exactly ``members`` (equal ring checksums)."""
    want = _ring(members).checksum
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            seen = {json.loads(http.request("GET", u + "/_affinity/health").data)["ring_checksum"] for u in urls}
            if seen == {want}:
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise SystemExit(f"affinity-mw demo: nodes did not converge on {members} within {timeout}s")


def _phase(title: str, http: Any, entry: list[str], members: list[str], tenants: list[str], n: int,
           rng: random.Random) -> dict[str, Any]:  # fmt: skip
    ring = _ring(members)
    received: Counter[str] = Counter()
    served: Counter[str] = Counter()
    forwarded: Counter[str] = Counter()
    where: dict[str, str] = {}
    on_owner = errors = 0
    tty = sys.stdout.isatty()
    print(f"\n== {title} ==")
    before = _counters(http, entry)
    for i in range(n):
        tenant, url = rng.choice(tenants), rng.choice(entry)
        received[url] += 1
        try:
            r = http.request("POST", f"{url}/tenants/{tenant}/hits", headers={"X-Tenant": tenant})
            ok = r.status == 200
        except Exception:
            ok = False
        if not ok:
            errors += 1
            continue
        node = r.headers["x-affinity-served-by"]
        served[node] += 1
        forwarded[url] += node != url
        where[tenant] = node
        owner = ring.owner_of(tenant)
        on_owner += owner is not None and node == owner.id
        if (tty and (i + 1) % max(1, n // 40) == 0) or i + 1 == n:
            done = (i + 1) * 40 // n
            print(f"\r  [{'#' * done}{'.' * (40 - done)}] {i + 1}/{n}", end="", flush=True)
    print()
    after = _counters(http, entry)
    failovers = {url: after[url]["failover"] - before[url]["failover"] for url in entry}
    print(f"  {'node':<24} {'received':>9} {'served':>7} {'forwarded':>10} {'failovers':>10}")
    for url in sorted(set(entry) | set(served)):
        print(f"  {url:<24} {received[url]:>9} {served[url]:>7} {forwarded[url]:>10} "
              f"{failovers.get(url, 0):>10}")  # fmt: skip
    ok_count = n - errors
    locality = on_owner / ok_count if ok_count else 0.0
    print(f"  locality {100 * locality:.1f}%   errors {errors}")
    return {"locality": locality, "errors": errors, "where": where, "ring": ring}


def _counters(http: Any, urls: list[str]) -> dict[str, Counter[str]]:
    """Each node's decision counters, to report what one phase added to them."""
    out: dict[str, Counter[str]] = {}
    for url in urls:
        try:
            out[url] = Counter(json.loads(http.request("GET", url + "/_affinity/metrics.json").data)["counters"])
        except Exception:
            out[url] = Counter()
    return out


def _moved(before: dict[str, Any], after: dict[str, Any], label: str) -> float:
    exact = before["ring"].moved_fraction(after["ring"])
    n_before, n_after = len(before["ring"]), len(after["ring"])
    common = len({n.id for n in before["ring"].nodes} & {n.id for n in after["ring"].nodes})
    ideal = 1 - common / max(n_before, n_after)
    seen = [t for t in before["where"] if t in after["where"]]
    sample = sum(before["where"][t] != after["where"][t] for t in seen) / max(1, len(seen))
    print(f"  keys moved ({label}): {100 * exact:.1f}% of the keyspace ({100 * sample:.1f}% of the tenants seen), "
          f"ideal 1/n = {100 * ideal:.1f}%  ->  {exact / ideal:.2f} x ideal")  # fmt: skip
    return float(exact / ideal)


def run_demo(*, short: bool = False, app: str | None = None, app_dir: str | None = None) -> int:
    import urllib3

    from .devdns import DnsServer

    n = 300 if short else 1200
    tenants = [f"tenant-{i:03d}" for i in range(120 if short else 300)]
    rng = random.Random(7)
    hosts = [f"127.0.0.{i}" for i in (1, 2, 3, 4)]
    port = _free_port(hosts)
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=10), retries=False)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix="affinity-demo-") as tmp, DnsServer(Path(tmp)) as dns:
        cluster = _Cluster(Path(tmp), app or "affinity_mw._demoapp:app", app_dir, port, dns)
        try:
            cluster.publish([1, 2, 3])
            for i in (1, 2, 3):
                cluster.start(i)
            u = cluster.url
            print(f"3 nodes on 127.0.0.1-3:{port}, members from DNS ({NAME} at {dns.nameserver}, refreshed every 1 s)")
            _converge(http, [u(1), u(2), u(3)], [u(1), u(2), u(3)])
            steady = _phase("steady state: 3 nodes", http, [u(1), u(2), u(3)], [u(1), u(2), u(3)], tenants, n, rng)

            print(f"\nkilling {u(3)} with SIGKILL and removing it from DNS")
            cluster.kill(3)
            cluster.publish([1, 2])
            killed = _phase("node 3 killed (failover, then DNS)", http, [u(1), u(2)], [u(1), u(2)], tenants, n, rng)
            moved_kill = _moved(steady, killed, "node 3 removed")

            print(f"\nadding {u(4)} to DNS")
            cluster.start(4)
            cluster.publish([1, 2, 4])
            _converge(http, [u(1), u(2), u(4)], [u(1), u(2), u(4)])
            added = _phase("node 4 added", http, [u(1), u(2), u(4)], [u(1), u(2), u(4)], tenants, n, rng)
            moved_add = _moved(killed, added, "node 4 added")
        finally:
            cluster.stop()
    print("\nall processes stopped")
    if not short:
        return 0
    problems = []
    if steady["locality"] < 0.99:
        problems.append(f"steady-state locality {100 * steady['locality']:.1f}% < 99%")
    if killed["errors"] or added["errors"]:
        problems.append(f"errors after the kill: {killed['errors'] + added['errors']}")
    for label, ratio in (("removal", moved_kill), ("addition", moved_add)):
        if ratio > 1.1:
            problems.append(f"keys moved on {label}: {ratio:.2f} x ideal > 1.1")
    for problem in problems:
        print(f"FAILED: {problem}")
    print("demo checks: " + ("FAILED" if problems else "passed"))
    return 1 if problems else 0
