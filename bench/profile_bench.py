"""Where a request's CPU goes on each path: ``python bench/profile_bench.py [--scenario local] [--duration 10]``.

Starts the same servers as ``bench/http_bench.py`` (one uvicorn worker each, loopback), loads one scenario with
wrk, and samples every server process involved with py-spy (``--nonblocking``, so the sampled process is not
paused). From the stacks it reports, per process:

* the share of samples by package of the innermost frame (where the CPU actually is: uvicorn, h11, asyncio,
  aiohttp, affinity_mw, ...);
* **middleware overhead**: samples inside an ``affinity_mw`` frame with no application frame below it, i.e.
  the routing and proxy work, apart from the app it wraps;
* the top functions by self time and by inclusive time.

Sampling stops the process for each sample and inflates its CPU per request, so the scenario is first run
unprofiled, and the shares are turned into microseconds per request with that run's CPU per request (utime +
stime over wrk's completed requests, as in ``http_bench.py``). The kernel's part (stime) is reported too:
py-spy charges a system call to the Python function that made it. These numbers locate the time; the headline
numbers are ``http_bench.py``'s.

Needs py-spy in the virtualenv (``.venv/bin/pip install py-spy``). Every server is stopped when it ends.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import http_bench as hb

# Frames every sample passes through (process start-up, the event loop itself): useless in the inclusive table.
ROOT_FRAMES = (
    "(<frozen runpy>)",
    "(click/core.py)",
    "(uvicorn/main.py)",
    "(uvicorn/server.py)",
    "(uvicorn/_compat.py)",
    "(uvicorn/__main__.py)",
    "(asyncio/runners.py)",
    "BaseEventLoop.run_until_complete (asyncio/base_events.py)",
    "BaseEventLoop.run_forever (asyncio/base_events.py)",
    "BaseEventLoop._run_once (asyncio/base_events.py)",
    "Handle._run (asyncio/events.py)",
)
# Leaves where a sample is really a system call (send, recv, epoll_wait). In this VM py-spy catches a thread in
# a system call far more often than the time it spends there (perf trace: sendto ~8 us; /proc: stime ~5-8% of
# the CPU), so these samples are set apart and the rest is scaled to the process's user time only.
SYSCALL_LEAVES = (
    "_SelectorSocketTransport.write (asyncio/selector_events.py)",
    "_SelectorSocketTransport._read_ready__data_received (asyncio/selector_events.py)",
    "_SelectorSocketTransport._read_ready__get_buffer (asyncio/selector_events.py)",
    "EpollSelector.select (selectors.py)",
)
APP_FRAMES = ("starlette/applications.py",)  # the wrapped app's entry: what lies below it is the app's cost


def frame_file(frame: str) -> str:
    # py-spy raw frames look like "function (path/file.py)" with --nolineno.
    return frame[frame.rfind("(") + 1 : -1] if frame.endswith(")") else ""


def package(frame: str) -> str:
    path = frame_file(frame)
    if not path:
        return "native/other"
    parts = path.replace("\\", "/").split("/")
    if "site-packages" in parts:
        parts = parts[parts.index("site-packages") + 1 :]
    if parts[0] in ("<frozen importlib._bootstrap>",):
        return "importlib"
    if len(parts) == 1 or parts[0].startswith("python3"):
        name = parts[-1]
        return "stdlib:" + name.removesuffix(".py")
    return parts[0]


def analyse(folded: Path) -> dict[str, Any]:
    total = 0
    syscall = 0
    by_package: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    middleware = 0
    middleware_self: Counter[str] = Counter()
    for line in folded.read_text(encoding="utf-8", errors="replace").splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        if not stack_text:
            continue
        count = int(count_text)
        frames = stack_text.split(";")
        # The first frame is the thread/process label when py-spy adds one; drop non-code frames.
        frames = [f for f in frames if f.endswith(")")]
        if not frames:
            continue
        leaf = frames[-1]
        if leaf in SYSCALL_LEAVES:
            syscall += count
            continue
        total += count
        by_package[package(leaf)] += count
        self_time[leaf] += count
        for f in set(frames):
            inclusive[f] += count
        first_mw = next((i for i, f in enumerate(frames) if frame_file(f).startswith("affinity_mw/")), None)
        if first_mw is not None and not any(frame_file(f) in APP_FRAMES for f in frames[first_mw:]):
            middleware += count
            middleware_self[f"{package(leaf)}: {leaf}"] += count
    return {
        "samples": total,
        "syscall_samples": syscall,
        "by_package": by_package,
        "self": self_time,
        "inclusive": inclusive,
        "middleware": middleware,
        "middleware_self": middleware_self,
    }


def table(counter: Counter[str], total: int, us_per_sample: float, top: int) -> list[dict[str, Any]]:
    return [
        {"share": round(n / total, 4), "us_per_req": round(n * us_per_sample, 1), "what": name}
        for name, n in counter.most_common(top)
    ]


def report(name: str, a: dict[str, Any], cpu_us_per_req: float, sys_us_per_req: float, top: int) -> dict[str, Any]:
    """Shares of the Python samples (system calls set apart), scaled to the process's user time per request."""
    total = max(a["samples"], 1)
    user_us = cpu_us_per_req - sys_us_per_req
    us = user_us / total
    out = {
        "process": name,
        "samples": a["samples"],
        "syscall_samples": a["syscall_samples"],
        "cpu_us_per_req": cpu_us_per_req,
        "sys_us_per_req": sys_us_per_req,
        "user_us_per_req": round(user_us, 1),
        "middleware_share": round(a["middleware"] / total, 4),
        "middleware_us_per_req": round(a["middleware"] * us, 1),
        "by_package": table(a["by_package"], total, us, 25),
        "top_self": table(a["self"], total, us, top),
        "top_inclusive": table(
            Counter({f: n for f, n in a["inclusive"].items() if not f.endswith(ROOT_FRAMES)}), total, us, top
        ),
        "middleware_top_self": table(a["middleware_self"], total, us, top),
    }
    return out


def print_report(r: dict[str, Any]) -> None:
    syscall_share = r["syscall_samples"] / max(r["samples"] + r["syscall_samples"], 1)
    print(
        f"\n### {r['process']}: {r['cpu_us_per_req']} us CPU/request = {r['user_us_per_req']} user + "
        f"{r['sys_us_per_req']} kernel (from /proc). py-spy: {r['samples']} Python samples, shares below are of "
        f"these and scaled to the user time; {r['syscall_samples']} more samples ({syscall_share:.0%}) were in "
        f"send/recv/epoll_wait and are left out (the kernel column is the measured cost of those).\n"
        f"affinity_mw outside the app: {r['middleware_share']:.1%} = {r['middleware_us_per_req']} us/request (user)"
    )
    for title, key in (
        ("by package (innermost frame)", "by_package"),
        ("top self time", "top_self"),
        ("top inclusive time", "top_inclusive"),
        ("inside affinity_mw, outside the app: self time", "middleware_top_self"),
    ):
        print(f"\n{title}:\n  share   us/req  function")
        for row in r[key]:
            print(f"  {row['share']:>5.1%}  {row['us_per_req']:>7.1f}  {row['what']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scenario", choices=hb.SCENARIOS, default="forwarded-aiohttp")
    parser.add_argument("--duration", type=int, default=10, help="seconds of profiled load (10)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second (200)")
    parser.add_argument("--top", type=int, default=20, help="rows in each function table (20)")
    parser.add_argument("--uvloop", action="store_true", help="profile uvloop+httptools servers")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the report as JSON")
    parser.add_argument("--keep-stacks", type=Path, metavar="DIR", help="keep py-spy's folded stacks here")
    args = parser.parse_args(argv)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists() or shutil.which("wrk") is None:
        print("needs wrk (bench/setup.sh) and py-spy (.venv/bin/pip install py-spy)", file=sys.stderr)
        return 2
    loop, http_impl = ("uvloop", "httptools") if args.uvloop else ("asyncio", "h11")
    with tempfile.TemporaryDirectory(prefix="affinity-profile-") as tmp:
        ns = SimpleNamespace(loop=loop, http=http_impl, log_dir=Path(tmp), threads=1, connections=args.connections)
        scenarios, servers = hb.build_scenarios(ns)
        sc = next(s for s in scenarios if s.name == args.scenario)
        # Only the servers this scenario needs.
        servers = sc.servers
        spies: list[tuple[hb.Server, subprocess.Popen[bytes], Path]] = []
        try:
            for s in servers:
                s.start()
            for s in servers:
                s.wait_ready()
            hb.run_wrk(sc.url, sc.tenant, threads=1, connections=args.connections, seconds=2)
            plain = hb.measure(sc, ns, connections=args.connections, threads=1, seconds=args.duration)
            for s in servers:
                assert s.proc is not None
                out = Path(tmp) / f"{s.name}.folded"
                cmd = [
                    pyspy,
                    "record",
                    "--pid",
                    str(s.proc.pid),
                    "--format",
                    "raw",
                    "--nolineno",
                    "--rate",
                    str(args.rate),
                    "--duration",
                    str(args.duration + 1),
                    "--output",
                    str(out),
                ]
                spies.append((s, subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), out))
            time.sleep(0.5)
            load = hb.measure(sc, ns, connections=args.connections, threads=1, seconds=args.duration)
            for _, spy, _ in spies:
                _, err = spy.communicate(timeout=60)
                if spy.returncode != 0:
                    raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')}")
        finally:
            for _, spy, _ in spies:
                if spy.poll() is None:
                    spy.kill()
                    spy.wait()
            for s in servers:
                s.stop()
        print(
            f"{args.scenario} ({loop}+{http_impl}, wrk -c{args.connections}, {args.duration} s): unprofiled "
            f"{plain['rps']:.0f} req/s, {plain['cpu_us_per_req']} us CPU/request "
            f"({plain['server_sys_share']:.0%} in the kernel), errors {plain['errors']}; while profiled "
            f"{load['rps']:.0f} req/s, {load['cpu_us_per_req']} us CPU/request"
        )
        reports = []
        for s, _, out in spies:
            cpu = plain["cpu_us_per_req_by_server"][s.name]
            r = report(s.name, analyse(out), cpu, plain["sys_us_per_req_by_server"][s.name], args.top)
            reports.append(r)
            print_report(r)
            if args.keep_stacks:
                args.keep_stacks.mkdir(parents=True, exist_ok=True)
                shutil.copy(out, args.keep_stacks / out.name)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        commit, dirty = hb.code_version()
        payload = {
            "git_commit": commit,
            "affinity_mw_uncommitted_changes": dirty,
            "scenario": args.scenario,
            "loop": loop,
            "http": http_impl,
            "unprofiled": plain,
            "profiled": load,
            "processes": reports,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
