"""Regenerate docs/status-page.png: a 3-node cluster on loopback, some traffic, one node set aside, then a
headless Chromium screenshot of node 1's status page. Every process it starts is stopped.

    .venv/bin/python scripts/screenshot_status_page.py
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from cluster import Cluster  # noqa: E402


def main() -> None:
    out = ROOT / "docs" / "status-page.png"
    with tempfile.TemporaryDirectory() as tmp, Cluster(Path(tmp), env={"AFFINITY_INTROSPECTION": "127.0.0.0/8"}) as c:
        rng = random.Random(3)
        with httpx.Client(trust_env=False) as client:
            for _ in range(400):
                tenant = f"tenant-{rng.randrange(60)}"
                client.get(f"{rng.choice(c.urls)}/probe/{tenant}/echo", headers={"X-Tenant": tenant})
        chromium = shutil.which("chromium")
        assert chromium, "apt-get install chromium"
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp}/profile", "--window-size=1100,560", "--virtual-time-budget=3000",
             f"--screenshot={out}", f"{c.urls[0]}/_affinity"],
            check=True, capture_output=True, timeout=90,
        )  # fmt: skip
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
