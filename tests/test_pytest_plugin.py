"""The ``affinity_cluster`` pytest plugin: registered by installing the package, its docs run as written, and
its nodes really are separate (own state, real forwards, real failover) without a socket."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from affinity_mw import ConfigurationError
from affinity_mw.testing import InProcessCluster

ROOT = Path(__file__).resolve().parents[1]
FASTAPI = "examples/fastapi_tenants/app.py:app"


def test_the_plugin_is_registered_by_installing_the_package(tmp_path: Path) -> None:
    """A project with no conftest of ours sees the fixture: the pytest11 entry point in pyproject.toml."""
    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "--fixtures", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "affinity_cluster" in r.stdout and "affinity_mw" in r.stdout


def test_the_examples_in_docs_testing_md_pass_as_written(tmp_path: Path) -> None:
    doc = (ROOT / "docs" / "testing.md").read_text()
    blocks = re.findall(r"```python\n(# (test_\w+\.py)\n.*?)```", doc, re.S)
    names = {name for _, name in blocks}
    assert names == {"test_fastapi_tenants.py", "test_flask_sessions.py", "test_django_regions.py"}
    for code, name in blocks:
        (tmp_path / name).write_text(code)
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "6 passed" in r.stdout, r.stdout[-2000:]


def test_each_node_has_its_own_module_state_and_forwards_for_real(affinity_cluster: Any) -> None:
    cluster: InProcessCluster = affinity_cluster(FASTAPI, key="header:X-Tenant")
    owner = cluster.index(cluster.owner("acme"))
    other = (owner + 1) % 3
    # A GET without the key header has no key and is served where it lands: it reads that node's own counter.
    assert cluster.get(owner, "/tenants/acme/hits").json()["count"] == 0
    assert cluster.post(other, "/tenants/acme/hits", headers={"X-Tenant": "acme"}).json()["count"] == 1
    assert cluster.get(owner, "/tenants/acme/hits").json()["count"] == 1
    assert cluster.get(other, "/tenants/acme/hits").json()["count"] == 0


def test_a_stopped_node_fails_over_and_a_started_one_is_used_again(affinity_cluster: Any) -> None:
    cluster: InProcessCluster = affinity_cluster(FASTAPI, key="header:X-Tenant")
    owner, successor = cluster.successors("acme")[:2]
    caller = next(i for i, url in enumerate(cluster.urls) if url not in (owner, successor))
    cluster.stop(cluster.index(owner))
    assert cluster.post(caller, "/tenants/acme/hits", headers={"X-Tenant": "acme"}).served_by == successor
    cluster.start(cluster.index(owner))
    assert cluster.post(caller, "/tenants/acme/hits", headers={"X-Tenant": "acme"}).served_by == owner


def test_no_socket_is_opened(affinity_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a socket was opened")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket.socket, "bind", refuse)
    cluster: InProcessCluster = affinity_cluster(FASTAPI, key="header:X-Tenant")
    for i in range(3):
        assert cluster.post(i, "/tenants/acme/hits", headers={"X-Tenant": "acme"}).status_code == 200


def test_a_bad_setting_fails_the_cluster_at_start(affinity_cluster: Any) -> None:
    with pytest.raises(ConfigurationError, match="heder"):
        affinity_cluster(FASTAPI, key="heder:X-Tenant")
