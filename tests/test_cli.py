"""The ``affinity-mw`` command, run through its installed console entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cluster import SECRET, Cluster, free_port

from affinity_mw import StaticMembership, hash_key

PEERS = "http://127.0.0.1:8001,http://127.0.0.2:8001,http://127.0.0.3:8001"
ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("affinity-mw", path=str(Path(sys.executable).parent))
    assert exe is not None, "the affinity-mw console script is not installed (pip install -e .)"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AFFINITY_")}
    full_env.update(env or {})
    return subprocess.run([exe, *args], capture_output=True, text=True, env=full_env, timeout=timeout, cwd=ROOT)


def test_owner_matches_the_ring_and_reads_the_environment() -> None:
    r = cli("owner", "acme", "--json", env={"AFFINITY_PEERS": PEERS})
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    order = [n.id for n in StaticMembership(PEERS.split(",")).ring.successors(hash_key("acme"))]
    assert data == {"key": "acme", "owner": order[0], "failover_order": order}
    table = cli("owner", "acme", "globex", "--peers", PEERS)
    assert table.returncode == 0 and "acme" in table.stdout and "globex" in table.stdout


def test_ring_shares_and_balance() -> None:
    r = cli("ring", "--peers", PEERS, "--json")
    data = json.loads(r.stdout)
    ring = StaticMembership(PEERS.split(",")).ring
    assert data["checksum"] == ring.checksum
    assert abs(sum(m["share"] for m in data["members"]) - 1) < 1e-4
    assert data["max_over_mean"] >= 1.0
    human = cli("ring", "--peers", PEERS)
    assert "max/mean" in human.stdout and ring.checksum in human.stdout


def test_simulate_add_and_remove() -> None:
    r = cli("simulate", "--peers", PEERS, "--add", "1", "--json")
    data = json.loads(r.stdout)
    assert data["ideal_fraction"] == 0.25
    assert 0.15 < data["moved_fraction"] < 0.35
    r = cli("simulate", "--peers", PEERS, "--remove", "http://127.0.0.3:8001", "--json")
    data = json.loads(r.stdout)
    shares = StaticMembership(PEERS.split(",")).ring.shares()
    # Removing a node moves exactly its keys.
    assert data["moved_fraction"] == pytest.approx(shares["http://127.0.0.3:8001"], abs=1e-6)


def test_bad_arguments_fail_clearly() -> None:
    r = cli("owner", "k")
    assert r.returncode != 0 and "AFFINITY_PEERS" in r.stderr
    r = cli("owner", "k", "--peers", "not-a-url")
    assert r.returncode == 2 and "http://" in r.stderr
    r = cli("simulate", "--peers", PEERS, "--remove", "http://10.9.9.9:1")
    assert r.returncode != 0 and "not a member" in r.stderr


def test_check_agreeing_and_disagreeing_clusters(tmp_path: Path) -> None:
    with Cluster(tmp_path, n=3) as c:
        r = cli("check", *c.urls, "--json", env={"AFFINITY_SECRET": SECRET})
        assert r.returncode == 0, r.stdout + r.stderr
        data = json.loads(r.stdout)
        assert data["agree"] is True and len({n["checksum"] for n in data["nodes"]}) == 1
        # Signed with another secret, or not signed: the nodes do not reveal their status, and the command says
        # that they answered (reachable) and why they would not tell, never "unreachable".
        r = cli("check", *c.urls, env={"AFFINITY_SECRET": "wrong-secret-0123456789"})
        assert r.returncode == 1 and "UNREACHABLE" not in r.stdout and r.stdout.count("REACHABLE") == 3, r.stdout
        assert "did not accept the signed request" in r.stdout and "CANNOT COMPARE" in r.stdout
        r = cli("check", *c.urls)
        assert r.returncode == 1 and "UNREACHABLE" not in r.stdout and r.stdout.count("REACHABLE") == 3, r.stdout
        assert r.stdout.count("unsigned request not answered: set AFFINITY_SECRET or pass --secret") == 3
        # A node that is down is unreachable.
        r = cli("check", c.urls[0], f"http://127.0.0.1:{free_port(['127.0.0.1'])}", env={"AFFINITY_SECRET": SECRET})
        assert r.returncode == 1 and r.stdout.count("UNREACHABLE") == 1, r.stdout
        # Node 3 restarted with a member list that lacks node 1: its checksum differs.
        c.nodes[2].stop()
        c.nodes[2].env["AFFINITY_PEERS"] = ",".join(c.urls[1:])
        c.nodes[2].start()
        c.nodes[2].wait_ready()
        r = cli("check", *c.urls, env={"AFFINITY_SECRET": SECRET})
        assert r.returncode == 1 and "DISAGREE" in r.stdout


def test_demo_short_mode_checks_its_own_table() -> None:
    r = cli("demo", "--short", timeout=170)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "demo checks: passed" in r.stdout
    assert r.stdout.count("errors 0") == 3
    assert "all processes stopped" in r.stdout


def test_demo_without_its_dependencies_says_what_to_install() -> None:
    """The core package does not install dnspython or uvicorn: the demo names them and the extra, no traceback."""
    code = "import sys; sys.modules['dns'] = None; from affinity_mw.cli import main; sys.exit(main(['demo']))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "needs dnspython" in r.stderr and "pip install 'affinity-mw[demo]'" in r.stderr, r.stderr
