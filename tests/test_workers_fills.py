"""Cache fills per tenant with four workers on one host, measured on real processes, both ways users run them.

``uvicorn --workers 4`` (one shared port): the kernel hands each connection to any worker, every worker has its
own memory, so a tenant's cache is filled by every worker that meets it. ``affinity-mw serve --workers 4`` (a
port and a ring member per worker): each tenant has one owning process and is filled once. The same traffic goes
to both: every tenant asked several times, each request on a new connection, from a few threads at once. The
figures are in docs/concepts.md ("Several workers per host").
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from cluster import ROOT, SECRET, free_ports, stop_group

WORKERS = 4
TENANTS = [f"tenant-{i}" for i in range(24)]
ROUNDS = 6  # requests per tenant


def _closed(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


def send_traffic(ports: list[int]) -> None:
    """Every tenant ROUNDS times, in random order, each request on a new connection to a random port."""
    requests = [(tenant, random.choice(ports)) for tenant in TENANTS for _ in range(ROUNDS)]
    random.shuffle(requests)

    def one(item: tuple[str, int]) -> int:
        tenant, port = item
        return httpx.get(f"http://127.0.0.1:{port}/t/{tenant}", trust_env=False, timeout=10).status_code

    with ThreadPoolExecutor(4) as pool:
        assert set(pool.map(one, requests)) == {200}


def fills_by_process(ports: list[int]) -> dict[int, dict[str, int]]:
    """Each worker's fill counts, by pid: asked until every worker has answered (new connections, any worker)."""
    reports: dict[int, dict[str, int]] = {}
    for _ in range(400):
        report = httpx.get(f"http://127.0.0.1:{random.choice(ports)}/fills", trust_env=False, timeout=10).json()
        reports[report["pid"]] = report["fills"]
        if len(reports) == WORKERS:
            return reports
    raise AssertionError(f"only {len(reports)} of {WORKERS} workers answered")


def run(tmp_path: Path, cmd: list[str], env: dict[str, str], ports: list[int]) -> dict[int, dict[str, int]]:
    with open(tmp_path / "server.log", "wb") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        for port in ports:
            while _closed(port):
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
                time.sleep(0.1)
        time.sleep(1.0)  # every worker of a shared port accepting, not only the first one up
        send_traffic(ports)
        return fills_by_process(ports)
    finally:
        stop_group(proc, timeout=15)


@pytest.mark.parametrize("layout", ["shared-port", "workers-as-members"])
def test_cache_fills_per_tenant_with_four_workers(
    tmp_path: Path, layout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFFINITY_")}
    env |= {"AFFINITY_SECRET": SECRET, "AFFINITY_KEY": "path:/t/{key}", "PYTHONPATH": str(ROOT)}
    if layout == "shared-port":
        port = free_ports(["127.0.0.1"])
        ports = [port]
        cmd = [sys.executable, "-m", "uvicorn", "tests.apps.fill_app:app", "--port", str(port)]
        cmd += ["--workers", str(WORKERS), "--log-level", "warning"]
    else:
        port = free_ports(["127.0.0.1"], WORKERS)
        ports = list(range(port, port + WORKERS))
        cmd = [sys.executable, "-m", "affinity_mw.cli", "serve", "--workers", str(WORKERS), "--port", str(port)]
        cmd += ["tests.apps.fill_app:app", "--", "--log-level", "warning"]
    reports = run(tmp_path, cmd, env, ports)
    fills = {tenant: sum(report.get(tenant, 0) for report in reports.values()) for tenant in TENANTS}
    mean = sum(fills.values()) / len(TENANTS)
    with capsys.disabled():
        print(
            f"\n[{layout}] {WORKERS} workers, {len(TENANTS)} tenants x {ROUNDS} requests: cache fills per tenant "
            f"mean {mean:.2f}, min {min(fills.values())}, max {max(fills.values())}"
        )
    if layout == "workers-as-members":
        assert set(fills.values()) == {1}, fills
    else:
        # Every worker that met a tenant filled it: with a shared port, that is most of them.
        assert mean > 2, fills
