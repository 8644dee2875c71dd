"""Instructions per request, counted by valgrind: ``python bench/instructions_bench.py [--json PATH]``.

Why this exists: on the shared 2-core VM the wall-clock benchmark (``http_bench.py``) moves by several percent
from one run to the next (bare's own CPU per request varied up to 1.5 x between rounds), which is more than the
3 % the local-path target allows, so no single run can say whether the target is met. The number of
instructions a server executes per request does not depend on what the host's other tenants do. This runs the
same servers, apps and settings as ``http_bench.py`` under ``valgrind --tool=callgrind`` (no cache simulation),
and counts the instructions (Ir) each server executes in its whole life, summed over its processes (gunicorn's
master and worker; A and B for a forward). Each scenario runs twice with the same hash seed, after 200 and after
200 + ``--requests`` GETs; the difference over ``--requests`` is the count per request, start-up and shutdown
cancelled out.

Instructions are not time (cache misses and branch prediction differ), but the middleware's own work is
ordinary interpreter code, like the server's, so the ratio of instructions is a noise-free estimate of the
ratio of CPU. Dict layouts depend on the hash seed and move the count by about 1 % between processes of the
same code, so each scenario runs once per seed (``PYTHONHASHSEED`` 0, 1, 2), is compared with bare under the
same seed, and the median of those ratios is reported. uvicorn's 0.1 s tick and gunicorn's arbiter run while
requests are measured and are counted too; under valgrind they add well under 1 %.

Scenarios: ``asgi-bare``, ``asgi-local`` and ``asgi-forwarded`` (uvicorn, asyncio + h11, the default asyncio
forwarding client; A and B counted), ``wsgi-bare`` and ``wsgi-local`` (Flask under gunicorn gthread). Load:
``--requests`` GETs over 4 keep-alive connections from this process (which is not counted), after a warm-up.
Needs valgrind (Debian's ``valgrind``; ``bash bench/setup.sh --valgrind`` installs it). About 4 minutes.
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from http_bench import HOST_A, HOST_B, ROOT, SECRET, Server, code_version, free_port, tenant_owned_by

sys.path.insert(0, str(ROOT / "scripts"))
from docblock import write_block

START, END = "<!-- instructions-results:start -->", "<!-- instructions-results:end -->"

VALGRIND = ["valgrind", "--tool=callgrind", "--dump-instr=no", "--dump-line=no", "--compress-strings=no", "--vgdb=no"]
SCENARIOS = ("asgi-bare", "asgi-local", "asgi-forwarded", "wsgi-bare", "wsgi-local")
CONNECTIONS = 4
WARMUP = 200


def build(name: str, seed: int, out: Path) -> tuple[list[Server], Server, str, Callable[[dict[str, Any]], bool]]:
    """The servers of one scenario (not started), the one the load goes to, the tenant, and a check of
    ``/_whoami``'s answer that proves the path (served bare, served locally, or forwarded to B)."""
    stack, kind = name.split("-", 1)
    args = SimpleNamespace(log_dir=out, wsgi=stack == "wsgi", loop="asyncio", http="h11")
    module = "bench.wsgi_app" if stack == "wsgi" else "bench.app"
    seed_env = {"PYTHONHASHSEED": str(seed)}
    if kind == "bare":
        server = Server(f"{name}-{seed}", f"{module}:bare", HOST_A, free_port([HOST_A]), seed_env, args)
        servers, tenant = [server], "tenant-0000"

        def check(answer: dict[str, Any]) -> bool:
            return answer["affinity"] is None

    else:
        port = free_port([HOST_A, HOST_B])
        peers = [f"http://{HOST_A}:{port}", f"http://{HOST_B}:{port}"]
        env = dict(seed_env, AFFINITY_PEERS=",".join(peers), AFFINITY_SECRET=SECRET, AFFINITY_KEY="header:X-Tenant")
        a = Server(f"{name}-{seed}-A", f"{module}:wrapped", HOST_A, port, dict(env, AFFINITY_SELF=peers[0]), args)
        servers = [a]
        if kind == "local":
            tenant = tenant_owned_by(peers, peers[0])

            def check(answer: dict[str, Any]) -> bool:
                return answer["affinity"]["action"] == "local" and answer["affinity"]["reason"] == "owner"

        else:
            tenant = tenant_owned_by(peers, peers[1])
            b = Server(f"{name}-{seed}-B", f"{module}:wrapped", HOST_B, port, dict(env, AFFINITY_SELF=peers[1]), args)
            b.env["BENCH_NODE"] = "B"
            servers.append(b)

            def check(answer: dict[str, Any]) -> bool:
                return answer["node"] == "B" and answer["affinity"]["reason"] == "hop"

    for server in servers:
        server.cmd = [*VALGRIND, f"--callgrind-out-file={out}/{server.name}.%p", *server.cmd]
        if stack == "wsgi":
            server.cmd += ["--graceful-timeout", "60"]
    return servers, servers[0], tenant, check


def send(server: Server, path: str, tenant: str, count: int) -> None:
    """``count`` GETs over CONNECTIONS keep-alive connections; every answer must be a 200."""
    failures: list[str] = []

    def worker(n: int) -> None:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
        try:
            for _ in range(n):
                conn.request("GET", path, headers={"X-Tenant": tenant})
                resp = conn.getresponse()
                resp.read()
                if resp.status != 200:
                    failures.append(f"{resp.status} from {server.url}{path}")
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(count // CONNECTIONS,)) for _ in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. {failures[0]}")


def total_ir(out: Path, servers: list[Server]) -> dict[str, int]:
    """Each server's instruction count: the sum over the files callgrind wrote as its processes exited (named
    ``<server>.<pid>``; gunicorn's master and forked worker each write one)."""
    totals = {}
    for server in servers:
        total = 0
        files = list(out.glob(f"{server.name}.*[0-9]"))
        for path in files:
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith(("summary:", "totals:")):
                    total += int(line.split()[1])
                    break
        if not files or not total:
            raise RuntimeError(f"callgrind wrote no count for {server.name} in {out}")
        totals[server.name] = total
    return totals


def lifetime_ir(name: str, seed: int, requests: int, out: Path) -> tuple[dict[str, int], float]:
    """Start the scenario's servers under callgrind, check the path, send ``requests`` GETs, stop them: the
    instructions each server executed in its whole life, and the seconds the requests took."""
    run_dir = out / f"{name}-{seed}-{requests}"
    run_dir.mkdir()
    servers, target, tenant, check = build(name, seed, run_dir)
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready(timeout=180)
        conn = http.client.HTTPConnection(target.host, target.port, timeout=120)
        conn.request("GET", "/_whoami", headers={"X-Tenant": tenant})
        answer = json.loads(conn.getresponse().read())
        conn.close()
        if not check(answer):
            raise RuntimeError(f"{name}: /_whoami does not show the expected path: {answer}")
        started = time.monotonic()
        send(target, f"/t/{tenant}", tenant, requests)
        seconds = time.monotonic() - started
    finally:
        for server in servers:
            server.stop(grace=120)  # under valgrind a process takes seconds to exit and write its counts
    return total_ir(run_dir, servers), seconds


def run(name: str, seed: int, requests: int, out: Path) -> dict[str, Any]:
    """Instructions per request as the difference of two lives of the same servers (same seed, so the same
    start-up and shutdown) that differ only in ``requests`` more GETs."""
    base, _ = lifetime_ir(name, seed, WARMUP, out)
    full, seconds = lifetime_ir(name, seed, WARMUP + requests, out)
    by_server = {k: full[k] - base[k] for k in full}
    return {
        "scenario": name,
        "seed": seed,
        "requests": requests,
        "seconds": round(seconds, 1),
        "ir_per_request": round(sum(by_server.values()) / requests),
        "ir_per_request_by_server": {k: round(v / requests) for k, v in by_server.items()},
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by = {(r["scenario"], r["seed"]): r["ir_per_request"] for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    summary: dict[str, Any] = {}
    for name in dict.fromkeys(r["scenario"] for r in runs):
        bare = f"{name.split('-')[0]}-bare"
        ratios = [by[(name, s)] / by[(bare, s)] for s in seeds if (name, s) in by and (bare, s) in by]
        summary[name] = {
            "ir_per_request": round(statistics.median(by[(name, s)] for s in seeds if (name, s) in by)),
            "ratio_to_bare": round(statistics.median(ratios), 4) if ratios else None,
            "ratios": [round(r, 4) for r in ratios],
            # What a req/s ratio would be if time followed instructions (bare / scenario).
            "implied_rps_ratio": round(1 / statistics.median(ratios), 4) if ratios else None,
        }
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--json", metavar="PATH", help="write the raw runs and the summary as JSON to PATH")
    parser.add_argument("--write", metavar="MD", help="replace the instructions-results block of this markdown file")
    parser.add_argument("--seeds", type=int, default=3, help="hash seeds per scenario (3)")
    parser.add_argument("--requests", type=int, default=1000, help="measured requests per run (1000)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated: " + ", ".join(SCENARIOS))
    args = parser.parse_args(argv)
    args.requests -= args.requests % CONNECTIONS
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: bash bench/setup.sh --valgrind", file=sys.stderr)
        return 2
    names = [n for n in args.scenarios.split(",") if n]
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    jobs = [(name, seed) for seed in range(args.seeds) for name in names]
    runs: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="affinity-ir-") as tmp:

        def worker() -> None:
            while True:
                with lock:
                    if not jobs or errors:
                        return
                    name, seed = jobs.pop(0)
                try:
                    result = run(name, seed, args.requests, Path(tmp))
                except BaseException as exc:  # reported below; the other worker stops at its next job
                    with lock:
                        errors.append(exc)
                    return
                with lock:
                    runs.append(result)
                print(f"  {name} seed {seed}: {result['ir_per_request']:,} Ir/request", file=sys.stderr, flush=True)

        # Two at a time on a 2-core machine: instruction counts do not depend on sharing the cores.
        threads = [threading.Thread(target=worker) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if errors:
        raise errors[0]
    runs.sort(key=lambda r: (r["seed"], SCENARIOS.index(r["scenario"])))
    commit, dirty = code_version()
    valgrind = subprocess.run(["valgrind", "--version"], capture_output=True, text=True, check=False).stdout.strip()
    payload = {
        "commit": commit,
        "affinity_mw_uncommitted_changes": dirty,
        "python": platform.python_version(),
        "valgrind": valgrind,
        "requests": args.requests,
        "seeds": args.seeds,
        "seconds": round(time.monotonic() - started),
        "runs": runs,
        "summary": summarize(runs),
    }
    text = render(payload)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    if args.write and not write_block(Path(args.write), START, END, text):
        return 1
    return 0


def render(payload: dict[str, Any]) -> str:
    """The markdown block of docs/benchmarks.md: the summary, and A/B for the forward."""
    commit = (payload.get("commit") or "?")[:7]
    dirty = " (with uncommitted changes in affinity_mw/)" if payload.get("affinity_mw_uncommitted_changes") else ""
    lines = [
        f"Commit `{commit}`{dirty}, Python {payload['python']}, {payload['valgrind']}: {payload['requests']:,} "
        f"measured requests per run, hash seeds 0-{payload['seeds'] - 1}, {payload['seconds']} s.",
        "",
        "| scenario | instructions per request | x bare | per seed | 1 / (x bare) |",
        "|---|---:|---:|---|---:|",
    ]
    for name, s in payload["summary"].items():
        if name.endswith("-bare"):
            lines.append(f"| {name} | {s['ir_per_request']:,} | 1 | - | - |")
            continue
        if s["ratio_to_bare"] is None:  # --scenarios without this stack's bare: nothing to compare with
            lines.append(f"| {name} | {s['ir_per_request']:,} | - | - | - |")
            continue
        per_seed = ", ".join(f"{r:.3f}" for r in s["ratios"])
        lines.append(
            f"| {name} | {s['ir_per_request']:,} | **{s['ratio_to_bare']:.3f}** | {per_seed} | "
            f"{s['implied_rps_ratio']:.3f} |"
        )
    forwards = [r for r in payload["runs"] if r["scenario"] == "asgi-forwarded"]
    if forwards:
        split = ", ".join(
            " + ".join(f"{v:,}" for v in r["ir_per_request_by_server"].values()) + f" (seed {r['seed']})"
            for r in forwards
        )
        lines += ["", f"asgi-forwarded by server, A + B: {split}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
