"""The skewed-load simulation (affinity_mw.loadsim) and ``affinity-mw simulate --zipf/--mix``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from affinity_mw.loadsim import load_mix, simulate, zipf_mix
from affinity_mw.membership import StaticMembership

PEERS = ["http://127.0.0.1:38000", "http://127.0.0.2:38000", "http://127.0.0.3:38000"]
MIX = zipf_mix(200, 1.1, 0.35)


def test_zipf_mix_weights() -> None:
    assert MIX[0] == ("hot", 0.35)
    assert sum(weight for _, weight in MIX) == pytest.approx(1.0)
    assert MIX[1][1] / MIX[2][1] == pytest.approx(2**1.1)
    assert zipf_mix(3, 0)[0] == ("t1", pytest.approx(1 / 3))
    for bad in ((0, 1.1, 0.0), (5, 1.1, 1.0), (5, -1, 0.0)):
        with pytest.raises(ValueError):
            zipf_mix(*bad)


def test_bounded_loads_hold_the_bound_where_owners_alone_overload_a_node() -> None:
    ring = StaticMembership(PEERS).ring
    without = simulate(ring, MIX, requests=20_000, seed=7)
    with_bound = simulate(ring, MIX, requests=20_000, factor=1.25, seed=7)
    assert without.max_over_mean > 1.5 and without.spilled == 0 and without.locality() == 1.0
    assert with_bound.max_over_mean <= 1.26
    assert with_bound.locality(["hot"]) >= 0.97
    assert with_bound.percentile(0.99) < without.percentile(0.99) / 10  # the owner's queue no longer grows
    # The same seed is the same run.
    assert simulate(ring, MIX, requests=20_000, factor=1.25, seed=7).served == with_bound.served


def test_light_traffic_does_not_spill() -> None:
    ring = StaticMembership(PEERS).ring
    light = simulate(ring, MIX, requests=5_000, load=0.02, factor=1.25, floor=2, seed=3)
    assert light.spilled <= 10


def test_mix_files(tmp_path: Path) -> None:
    path = tmp_path / "mix.txt"
    path.write_text("# tenant, requests per second\nacme 120\nglobex,30\n\ninitech 0  # idle\n")
    assert load_mix(path) == [("acme", 120.0), ("globex", 30.0), ("initech", 0.0)]
    for text, message in (("acme\n", ":1:"), ("acme -3\n", ":1:"), ("a 1\nb x\n", ":2:"), ("a 0\n", "positive")):
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_mix(path)
    with pytest.raises(ValueError, match="cannot read"):
        load_mix(tmp_path / "missing.txt")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFFINITY_")}
    exe = Path(sys.executable).parent / "affinity-mw"
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, timeout=60)


def test_cli_prints_both_runs(tmp_path: Path) -> None:
    r = cli("simulate", "--peers", ",".join(PEERS), "--zipf", "1.1", "--hot-share", "0.35", "--requests", "20000",
            "--json")  # fmt: skip
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["heaviest_key"] == "hot"
    assert data["without"]["max_over_mean"] > 1.5 and data["with"]["max_over_mean"] <= 1.26
    assert data["with"]["locality_others"] >= 0.97
    table = cli("simulate", "--peers", ",".join(PEERS), "--zipf", "1.1", "--hot-share", "0.35", "--requests", "5000")
    assert "busiest / mean" in table.stdout and "factor 1.25" in table.stdout
    mix = tmp_path / "mix.txt"
    mix.write_text("big 50\n" + "".join(f"small{i} 1\n" for i in range(50)))
    r = cli("simulate", "--peers", ",".join(PEERS), "--mix", str(mix), "--requests", "5000", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["heaviest_key"] == "big"


@pytest.mark.parametrize(
    "args",
    [
        ("--zipf", "1.1", "--mix", "x.txt"),
        ("--zipf", "1.1", "--add", "1"),
        ("--mix", "/nonexistent/mix.txt"),
        ("--zipf", "1.1", "--factor", "1"),
        ("--zipf", "1.1", "--load", "0"),
        ("--zipf", "1.1", "--hot-share", "1.5"),
        ("--zipf", "1.1", "--tenants", "0"),
    ],
)
def test_cli_bad_arguments_get_a_message_not_a_traceback(args: tuple[str, ...]) -> None:
    r = cli("simulate", "--peers", ",".join(PEERS), *args)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr and (r.stderr or r.stdout).strip()
