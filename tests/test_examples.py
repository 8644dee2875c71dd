"""Every example's launcher, run as its README says: a real 3-node cluster, a few requests, SIGTERM, nothing left.

Each launcher must bring its nodes up, route a key's requests to one node whichever node was called, stop every
process it started when it is sent SIGTERM (as a CI timeout or `kill` does), and leave no file behind in the
repository. The README's install lines are checked against pyproject.toml's extras.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from cluster import free_port

ROOT = Path(__file__).resolve().parents[1]
HOSTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]


def fastapi_requests(urls: list[str]) -> list[dict[str, object]]:
    return [
        httpx.post(f"{url}/tenants/acme/hits", headers={"X-Tenant": "acme"}, trust_env=False, timeout=10).json()
        for url in urls
    ]


def flask_requests(urls: list[str]) -> list[dict[str, object]]:
    login = httpx.post(f"{urls[0]}/login", params={"tenant": "acme"}, trust_env=False, timeout=10)
    cookie = {"Cookie": f"session={login.cookies['session']}"}
    return [httpx.post(f"{url}/hits", headers=cookie, trust_env=False, timeout=10).json() for url in urls]


def django_requests(urls: list[str]) -> list[dict[str, object]]:
    answers = []
    for url in urls:
        answer = httpx.get(f"{url}/prices", headers={"X-Region": "eu-west"}, trust_env=False, timeout=10).json()
        answers.append({"node": answer["node"], "count": answer["hits"], "hops": answer["hops"]})
    return answers


# launcher, the test's requests, and the line the launcher prints once its own demonstration requests are done
# (the test's requests must not interleave with them: both count the same tenant); None when it sends none.
EXAMPLES: dict[str, tuple[str, Callable[[list[str]], list[dict[str, object]]], str | None]] = {
    "fastapi": ("examples/fastapi_tenants/run_cluster.py", fastapi_requests, "ready;"),
    "flask": ("examples/flask_sessions/run_cluster.py", flask_requests, "ready;"),
    "django": ("examples/django_regions/run_cluster.py", django_requests, None),
}


def session_pids(sid: int) -> list[int]:
    """Every live process of session ``sid`` (the launcher runs in a session of its own)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid and fields[0] != "Z":  # fields after the name: state, ppid, pgrp, session
            pids.append(int(entry.name))
    return pids


def unix_listeners(pid: int) -> set[str]:
    """Paths of the Unix sockets process ``pid`` holds (gunicorn's control socket among them)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    paths = set()
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 8 and parts[6] in inodes:
            paths.add(parts[7])
    return paths


def repository_files() -> set[str]:
    out = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", "--ignored", "examples"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return {line for line in out.splitlines() if "__pycache__" not in line}


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_example_launcher_serves_one_key_on_one_node_and_stops_everything(tmp_path: Path, example: str) -> None:
    launcher, send, ready_line = EXAMPLES[example]
    port = free_port(HOSTS)
    urls = [f"http://{host}:{port}" for host in HOSTS]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AFFINITY_", "FLASK_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # as with the venv activated
    files_before = repository_files()
    log = tmp_path / "launcher.log"
    with open(log, "wb") as out:
        launcher_proc = subprocess.Popen(
            [sys.executable, launcher, "--port", str(port)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        for url in urls:
            while True:
                assert launcher_proc.poll() is None, log.read_text()
                try:
                    if httpx.get(f"{url}/healthz", trust_env=False, timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"{url} not up after 60 s:\n{log.read_text()}"
                time.sleep(0.1)
        while ready_line is not None and ready_line not in log.read_text():
            assert launcher_proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"the launcher never printed {ready_line!r}:\n{log.read_text()}"
            time.sleep(0.1)
        answers = send(urls)
        assert len({a["node"] for a in answers}) == 1, answers  # one node served every request for the key
        counts = [int(a["count"]) for a in answers]  # type: ignore[call-overload]
        assert counts == list(range(counts[0], counts[0] + 3)), answers  # one counter, whichever node was called
        assert sorted(a["hops"] for a in answers) == [0, 1, 1], answers  # type: ignore[type-var]
        # No two nodes share a Unix socket path (gunicorn's control socket is one path per machine by default).
        sockets: dict[str, set[str]] = {}
        for pid in session_pids(launcher_proc.pid):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"gunicorn" in cmdline:
                host = next(arg for arg in cmdline if arg.endswith(f":{port}".encode())).decode()
                sockets.setdefault(host, set()).update(unix_listeners(pid))
        paths = [path for node in sockets.values() for path in node]
        assert len(paths) == len(set(paths)), sockets
        if example == "flask":
            assert len(sockets) == 3 and all(sockets.values()), sockets
        launcher_proc.send_signal(signal.SIGTERM)
        launcher_proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while session_pids(launcher_proc.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = session_pids(launcher_proc.pid)
        assert not left, f"processes left after SIGTERM: {left}\n{log.read_text()}"
        assert repository_files() == files_before, "the example left files in the repository"
    finally:
        if launcher_proc.poll() is None:
            launcher_proc.kill()
            launcher_proc.wait()
        for pid in session_pids(launcher_proc.pid):
            os.kill(pid, signal.SIGKILL)


def test_readme_install_section_names_every_extra() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()  # no tomllib before Python 3.11
    section = pyproject[pyproject.index("[project.optional-dependencies]") :].split("\n[", 1)[0]
    extras = set(re.findall(r"^([a-z]+) = \[", section, re.M))
    readme = (ROOT / "README.md").read_text()
    install = readme[readme.index("## Install") :]
    listed = set(re.findall(r"^\| `([a-z]+)` \|", install, re.M))
    assert listed == extras, f"in pyproject.toml, not in the README: {extras - listed}; the reverse: {listed - extras}"
