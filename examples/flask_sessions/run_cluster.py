"""Start a local 3-node cluster of the Flask session example on 127.0.0.1-3; Ctrl-C or SIGTERM stops every node.

    python examples/flask_sessions/run_cluster.py [--port 8000] [--nodes 3]

Each node is gunicorn with gthread workers (a sync worker would block while it forwards), routing by the
verified ``tenant`` field of Flask's session cookie. Once every node answers, the script logs in as tenant
``acme`` and sends the session cookie to each node in turn, printing the answers (one counter, whichever node
was called). If a node exits, the others are stopped too. It writes nothing into the repository: each gunicorn
master gets its own control socket in a temporary folder, removed on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from http.cookies import SimpleCookie


def wait_ready(procs: list[subprocess.Popen[bytes]], urls: list[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for url in urls:
        while True:
            if any(proc.poll() is not None for proc in procs):
                raise SystemExit("a node exited while starting; see its output above")
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{url} did not answer within {timeout:.0f} s") from None
                time.sleep(0.1)


def post(url: str, cookie: str = "") -> tuple[dict[str, object], str]:
    request = urllib.request.Request(url, method="POST", headers={"Cookie": cookie} if cookie else {})
    with urllib.request.urlopen(request, timeout=10) as response:
        jar = SimpleCookie(response.headers.get("Set-Cookie", ""))
        return json.load(response), jar["session"].value if "session" in jar else ""


def control_socket_options(folder: str, i: int) -> list[str]:
    """gunicorn 25 and later open a control socket, by default at one path for every master on the machine."""
    from gunicorn.config import KNOWN_SETTINGS

    if any(setting.name == "control_socket" for setting in KNOWN_SETTINGS):
        return ["--control-socket", os.path.join(folder, f"node{i}.ctl")]
    return []


def main() -> None:
    # SIGTERM (`kill`, a CI timeout) unwinds through the finally below like Ctrl-C, so no node is left running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args()
    urls = [f"http://127.0.0.{i + 1}:{args.port}" for i in range(args.nodes)]
    env = dict(os.environ)
    env.setdefault("AFFINITY_SECRET", secrets.token_urlsafe(32))
    env.setdefault("FLASK_SECRET_KEY", secrets.token_urlsafe(32))
    env.setdefault("AFFINITY_DEBUG_HEADERS", "1")
    env["AFFINITY_PEERS"] = ",".join(urls)
    here = os.path.dirname(os.path.abspath(__file__))
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="affinity-flask-") as folder:
        try:
            for i, url in enumerate(urls):
                cmd = [
                    sys.executable, "-m", "gunicorn", "app:app", "--bind", f"127.0.0.{i + 1}:{args.port}",
                    "--worker-class", "gthread", "--threads", "8", "--workers", "1", "--keep-alive", "5",
                    "--log-level", "warning", *control_socket_options(folder, i + 1),
                ]  # fmt: skip
                procs.append(subprocess.Popen(cmd, cwd=here, env=dict(env, AFFINITY_SELF=url)))
                print(f"node {url} pid {procs[-1].pid}", flush=True)
            wait_ready(procs, urls)
            answer, session = post(urls[0] + "/login?tenant=acme")
            print(f"\nPOST {urls[0]}/login?tenant=acme -> {json.dumps(answer)}")
            print("the session cookie to each node (one counter, whichever node was called):")
            for url in urls:
                print(f"  POST {url}/hits -> {json.dumps(post(url + '/hits', f'session={session}')[0])}")
            print("\nready; Ctrl-C stops every node.", flush=True)
            while all(proc.poll() is None for proc in procs):
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal must not cut the clean-up short
                signal.signal(sig, signal.SIG_IGN)
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


if __name__ == "__main__":
    main()
