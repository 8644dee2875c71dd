"""``affinity-mw serve --workers 4``: four server processes on one host, each its own ring member, so a
per-process cache is filled once per tenant however the requests arrive; SIGTERM stops every worker."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from cluster import ROOT, SECRET, free_ports, stop_group

from affinity_mw.membership import StaticMembership
from affinity_mw.serve import worker_commands, worker_environ, worker_urls

WORKERS = 4
TENANTS = [f"tenant-{i}" for i in range(24)]


def wait_up(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/fills", timeout=1, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"worker on port {port} not up")


def closed(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return False
    except OSError:
        return True


@pytest.mark.parametrize("server,app", [("uvicorn", "app"), ("gunicorn", "wsgi_app")])
def test_four_workers_fill_each_tenant_once(tmp_path: Path, server: str, app: str) -> None:
    port = free_ports(["127.0.0.1"], WORKERS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFFINITY_")}
    env |= {"AFFINITY_SECRET": SECRET, "AFFINITY_KEY": "path:/t/{key}", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "affinity_mw.cli", "serve", "--workers", str(WORKERS), "--port", str(port)]
    cmd += ["--server", server, "--grace", "10", f"tests.apps.fill_app:{app}"]
    with open(tmp_path / "serve.log", "wb") as log:
        launcher = subprocess.Popen(
            cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        for p in range(port, port + WORKERS):
            wait_up(p)
        ports = range(port, port + WORKERS)
        # Every tenant is asked of every worker, so without workers as members each would be filled 4 times.
        with httpx.Client(trust_env=False, timeout=10) as client:
            for tenant in TENANTS:
                for p in ports:
                    assert client.get(f"http://127.0.0.1:{p}/t/{tenant}").status_code == 200
            reports = [client.get(f"http://127.0.0.1:{p}/fills").json() for p in ports]
        ring = StaticMembership(worker_urls(f"http://127.0.0.1:{port}", WORKERS)).ring
        total: dict[str, int] = {}
        for report in reports:
            for tenant, count in report["fills"].items():
                total[tenant] = total.get(tenant, 0) + count
                assert report["self"] == ring.owner_of(tenant).id  # type: ignore[union-attr]
        assert total == dict.fromkeys(TENANTS, 1)
        assert len({r["pid"] for r in reports}) == WORKERS and sum(1 for r in reports if r["fills"]) >= 3
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=20) == 0
        deadline = time.monotonic() + 10
        while not all(closed(p) for p in ports) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert all(closed(p) for p in ports)
    finally:
        stop_group(launcher)


def test_worker_membership_from_peers_dns_and_none() -> None:
    assert worker_urls("http://10.0.0.1:8000", 3) == [f"http://10.0.0.1:{p}" for p in (8000, 8001, 8002)]
    assert worker_urls("https://[::1]", 2) == ["https://[::1]:443", "https://[::1]:444"]
    with pytest.raises(ValueError, match="beyond 65535"):
        worker_urls("http://h:65535", 2)
    alone = worker_environ({}, workers=2, advertise="10.0.0.5", port=9000)
    assert [e["AFFINITY_SELF"] for e in alone] == ["http://10.0.0.5:9000", "http://10.0.0.5:9001"]
    assert alone[0]["AFFINITY_PEERS"] == "http://10.0.0.5:9000" and alone[0]["AFFINITY_WORKERS"] == "2"
    cluster = worker_environ({"AFFINITY_PEERS": "http://a:9000,http://b:9000"}, workers=2, advertise="a", port=9000)
    assert cluster[1]["AFFINITY_PEERS"] == "http://a:9000,http://b:9000"
    from affinity_mw.config import Settings
    from affinity_mw.membership import membership_from_settings

    settings = Settings.load({}, {**cluster[1], "AFFINITY_SECRET": SECRET, "AFFINITY_KEY": "header:X"})
    members = membership_from_settings(settings)
    assert [n.id for n in members.ring.nodes] == ["http://a:9000", "http://a:9001", "http://b:9000", "http://b:9001"]
    assert members.self_id == "http://a:9001"
    assert json.dumps(settings.workers) == "2"
    # With nginx in front, each worker is its own upstream server.
    from affinity_mw.edge import nginx_config

    assert "server a:9000;\n    server a:9001;\n    server b:9000;" in nginx_config(members.ring, "header:X")


def test_each_gunicorn_master_gets_its_own_control_socket() -> None:
    commands = worker_commands("m:app", workers=3, host="127.0.0.1", port=9000, server="gunicorn", control_folder="/c")
    sockets = [cmd[cmd.index("--control-socket") + 1] for cmd in commands]
    assert sockets == [f"/c/worker-{p}.ctl" for p in (9000, 9001, 9002)]
    uvicorn = worker_commands("m:app", workers=2, host="127.0.0.1", port=9000, server="uvicorn", control_folder="/c")
    assert not any("--control-socket" in cmd for cmd in uvicorn)
