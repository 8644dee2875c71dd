"""Start a local cluster of the region-cache example on 127.0.0.1-3; Ctrl-C or SIGTERM stops every node.

    python examples/django_regions/run_cluster.py [--server uvicorn|gunicorn] [--port 8000] [--nodes 3]

``uvicorn`` serves Django over ASGI (``asgi.py``: requests another node owns are forwarded with affinity-mw's
built-in asyncio client, in the serving event loop); ``gunicorn`` serves it over WSGI (``wsgi.py``, gthread
workers: requests are forwarded with a urllib3 pool; a sync worker would block while it forwards). Each node gets
``AFFINITY_PEERS``, ``AFFINITY_SELF`` and one ``AFFINITY_SECRET`` made up for the run; ``settings.AFFINITY``
says the rest. If one node exits, the others are stopped too. It writes nothing into the repository: each
gunicorn master gets its own control socket in a temporary folder, removed on exit. Then:
curl -H 'X-Region: eu-west' http://127.0.0.2:8000/prices
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time


def control_socket_options(folder: str, i: int) -> list[str]:
    """gunicorn 25 and later open a control socket, by default at one path for every master on the machine."""
    from gunicorn.config import KNOWN_SETTINGS

    if any(setting.name == "control_socket" for setting in KNOWN_SETTINGS):
        return ["--control-socket", os.path.join(folder, f"node{i}.ctl")]
    return []


def command(server: str, host: str, port: int, folder: str, i: int) -> list[str]:
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", "asgi:application", "--host", host, "--port", str(port)]
    return [
        sys.executable, "-m", "gunicorn", "wsgi:application", "--bind", f"{host}:{port}",
        "--worker-class", "gthread", "--threads", "8", "--workers", "1", "--keep-alive", "5",
        *control_socket_options(folder, i),
    ]  # fmt: skip


def main() -> None:
    # SIGTERM (`kill`, a CI timeout) unwinds through the finally below like Ctrl-C, so no node is left running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", choices=["uvicorn", "gunicorn"], default="uvicorn")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args()
    urls = [f"http://127.0.0.{i + 1}:{args.port}" for i in range(args.nodes)]
    env = dict(os.environ)
    env.setdefault("AFFINITY_SECRET", secrets.token_urlsafe(32))
    env["AFFINITY_PEERS"] = ",".join(urls)
    here = os.path.dirname(os.path.abspath(__file__))
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="affinity-django-") as folder:
        try:
            for i, url in enumerate(urls):
                cmd = command(args.server, f"127.0.0.{i + 1}", args.port, folder, i + 1)
                procs.append(subprocess.Popen(cmd, cwd=here, env=dict(env, AFFINITY_SELF=url)))
                print(f"node {url} pid {procs[-1].pid}", flush=True)
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
