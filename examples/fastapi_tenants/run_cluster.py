"""Start a local 3-node cluster of the tenant-counter app on 127.0.0.1-3; Ctrl-C or SIGTERM stops every node.

    python examples/fastapi_tenants/run_cluster.py [--port 8000] [--nodes 3]

Requests are routed by the ``tenant`` claim of a verified JWT (HS256, a secret made up for this run), or by an
``X-Tenant`` header when there is no valid token. Once every node answers, the script sends one request for
tenant ``acme`` to each node and prints the answers (one counter, whichever node was called), then a token and
the curl commands to try from another terminal. If a node exits, the others are stopped too.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request

import jwt


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


def hit(url: str, token: str) -> dict[str, object]:
    request = urllib.request.Request(
        url + "/tenants/acme/hits", method="POST", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)  # type: ignore[no-any-return]


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
    env.setdefault("AFFINITY_KEY", "jwt:tenant,header:X-Tenant")
    env.setdefault("AFFINITY_JWT_KEY", secrets.token_urlsafe(32))
    env.setdefault("AFFINITY_JWT_ALGORITHMS", "HS256")
    env.setdefault("AFFINITY_DEBUG_HEADERS", "1")
    env["AFFINITY_PEERS"] = ",".join(urls)
    here = os.path.dirname(os.path.abspath(__file__))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i, url in enumerate(urls):
            host = f"127.0.0.{i + 1}"
            cmd = [sys.executable, "-m", "uvicorn", "app:app", "--host", host, "--port", str(args.port)]
            cmd += ["--log-level", "warning"]  # start-up errors and warnings, not one line per request
            procs.append(subprocess.Popen(cmd, cwd=here, env=dict(env, AFFINITY_SELF=url)))
            print(f"node {url} pid {procs[-1].pid}", flush=True)
        wait_ready(procs, urls)
        token = jwt.encode({"tenant": "acme", "exp": int(time.time()) + 3600}, env["AFFINITY_JWT_KEY"], "HS256")
        print("\none request for tenant acme to each node (one counter, whichever node was called):")
        for url in urls:
            print(f"  POST {url}/tenants/acme/hits -> {json.dumps(hit(url, token))}")
        print(f"\nready; from another terminal:\n  TOKEN={token}")
        print(f'  curl -s -X POST -H "Authorization: Bearer $TOKEN" {urls[-1]}/tenants/acme/hits')
        print("Ctrl-C stops every node.", flush=True)
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
