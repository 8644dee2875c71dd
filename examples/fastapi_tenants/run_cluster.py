"""Start a local 3-node cluster of the tenant-counter app on 127.0.0.1-3 (Ctrl-C stops every node).

    python examples/fastapi_tenants/run_cluster.py [--port 8000] [--nodes 3]

Requests are routed by the ``tenant`` claim of a verified JWT (HS256, a secret made up for this run), or by an
``X-Tenant`` header when there is no valid token. The script prints a token and curl commands to try.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time

import jwt


def main() -> None:
    # SIGTERM (a CI timeout, `kill`) unwinds through the finally below, so no node is left running.
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
    procs = []
    for i, url in enumerate(urls):
        node_env = dict(env, AFFINITY_SELF=url)
        cmd = [
            sys.executable,
            "-m",
            "uvicorn",
            "app:app",
            "--host",
            f"127.0.0.{i + 1}",
            "--port",
            str(args.port),
        ]
        procs.append(subprocess.Popen(cmd, cwd=here, env=node_env))
        print(f"node {url} pid {procs[-1].pid}")
    token = jwt.encode({"tenant": "acme", "exp": int(time.time()) + 3600}, env["AFFINITY_JWT_KEY"], algorithm="HS256")
    print(f"\ntry (any node, same counter):\n  TOKEN={token}")
    for url in urls:
        print(f'  curl -s -X POST -H "Authorization: Bearer $TOKEN" {url}/tenants/acme/hits')
    try:
        for proc in procs:
            proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
