"""`make demo`: a real 3-node cluster on 127.0.0.1-3, traffic for many tenants, one node killed, then stopped.

Each phase prints, per node: requests it received, requests it served, and how many it forwarded; then the
locality ratio (share of requests served by the tenant's owner), errors, and whether every tenant's requests met
one in-memory counter. Bounded: a fixed number of requests per phase, a timeout on each, every process stopped.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

from affinity_mw import StaticMembership

HERE = Path(__file__).resolve().parent
TENANTS = [f"tenant-{i:03d}" for i in range(100)]
REQUESTS_PER_PHASE = 600


def free_port(hosts: list[str]) -> int:
    for port in range(18000, 19000):
        try:
            for host in hosts:
                with socket.socket() as s:
                    s.bind((host, port))
            return port
        except OSError:
            continue
    raise SystemExit("no free port between 18000 and 19000")


def start(urls: list[str], secret: str) -> list[subprocess.Popen[bytes]]:
    procs = []
    for url in urls:
        host, port = url.removeprefix("http://").split(":")
        env = dict(
            os.environ,
            AFFINITY_PEERS=",".join(urls),
            AFFINITY_SELF=url,
            AFFINITY_SECRET=secret,
            AFFINITY_KEY="header:X-Tenant",
            AFFINITY_DEBUG_HEADERS="1",
        )
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "app:app",
            "--host",
            host,
            "--port",
            port,
            "--log-level",
            "error",
        ]
        procs.append(subprocess.Popen(cmd, cwd=HERE, env=env))
    deadline = time.monotonic() + 20
    for url in urls:
        while True:
            try:
                httpx.get(url + "/healthz", timeout=1, trust_env=False)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{url} did not start") from None
                time.sleep(0.1)
    return procs


def phase(name: str, client: httpx.Client, entry: list[str], members: list[str], rng: random.Random) -> None:
    ring = StaticMembership(members).ring
    received: Counter[str] = Counter()
    served: Counter[str] = Counter()
    forwarded: Counter[str] = Counter()
    served_by_tenant: dict[str, set[str]] = {}
    local = errors = 0
    start_time = time.monotonic()
    for i in range(REQUESTS_PER_PHASE):
        tenant = rng.choice(TENANTS)
        url = rng.choice(entry)
        received[url] += 1
        try:
            r = client.post(f"{url}/tenants/{tenant}/hits", headers={"X-Tenant": tenant})
        except httpx.HTTPError:
            errors += 1
            continue
        if r.status_code != 200:
            errors += 1
            continue
        node = r.headers["x-affinity-served-by"]
        served[node] += 1
        forwarded[url] += node != url
        served_by_tenant.setdefault(tenant, set()).add(node)
        owner = ring.owner_of(tenant)
        local += owner is not None and node == owner.id
        if (i + 1) % 60 == 0:
            bar = "#" * ((i + 1) * 30 // REQUESTS_PER_PHASE)
            print(f"\r  {name:<28} [{bar:<30}] {i + 1}/{REQUESTS_PER_PHASE}", end="", flush=True)
    elapsed = time.monotonic() - start_time
    print()
    print(f"  {'node':<26} {'received':>9} {'served':>7} {'forwarded':>10}")
    for url in sorted(set(received) | set(served)):
        print(f"  {url:<26} {received[url]:>9} {served[url]:>7} {forwarded[url]:>10}")
    ok = REQUESTS_PER_PHASE - errors
    split = sum(1 for nodes in served_by_tenant.values() if len(nodes) > 1)
    print(
        f"  locality {100 * local / max(ok, 1):.1f}%  errors {errors}  tenants split across nodes {split}  "
        f"({REQUESTS_PER_PHASE / elapsed:.0f} req/s, sequential)\n"
    )


def main() -> None:
    # SIGTERM (a CI timeout, `kill`) unwinds through the finally below, so no node is left running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    port = free_port(hosts)
    urls = [f"http://{h}:{port}" for h in hosts]
    procs = start(urls, secrets.token_urlsafe(32))
    rng = random.Random(1)
    try:
        with httpx.Client(trust_env=False, timeout=10) as client:
            print(f"3-node cluster: {', '.join(urls)}\n")
            phase("steady state", client, urls, urls, rng)
            print(f"killing {urls[2]} (SIGKILL)\n")
            procs[2].send_signal(signal.SIGKILL)
            procs[2].wait()
            # Static membership still lists the dead node: its tenants fail over to their ring successors.
            survivors = urls[:2]
            phase("one node down (failover)", client, survivors, survivors, rng)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    print("all nodes stopped")


if __name__ == "__main__":
    main()
