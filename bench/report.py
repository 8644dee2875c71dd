"""Render the raw benchmark results into the tables of docs/benchmarks.md.

    python bench/report.py [--results bench/results] [--write docs/benchmarks.md]

Reads ``http.json`` (ASGI passes: asyncio+h11 and, with ``--uvloop``, uvloop+httptools), ``http-wsgi.json``
(gunicorn gthread) and ``ring.json``, all written by ``make bench``, and prints one markdown block; ``--write``
replaces the block between ``<!-- bench-results:start -->`` and ``<!-- bench-results:end -->``, so the numbers
in the docs are always those of the last ``make bench``, never typed by hand.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # run from a checkout: bench/ and scripts/ are not packages

from docblock import write_block  # noqa: E402

START, END = "<!-- bench-results:start -->", "<!-- bench-results:end -->"
NAMES = {
    "bare": "bare app",
    "local": "local path",
    "forwarded-asyncio": "forwarded, built-in asyncio client (default)",
    "forwarded-aiohttp": "forwarded, aiohttp",
    "forwarded-httpx": "forwarded, httpx",
    "forwarded-httpx-aiohttp": "forwarded, httpx over aiohttp (httpx-aiohttp)",
    "forwarded-pyreqwest": "forwarded, pyreqwest (not proxy-safe)",
    "forwarded-urllib3": "forwarded, urllib3 (default)",
    "nginx": "nginx hop (`hash $http_x_tenant consistent`)",
}


def http_table(p: dict[str, Any]) -> list[str]:
    lines = [
        "| scenario | req/s | x bare | CPU us/req | by server | x bare | p50 ms | p99 ms | p50 at c1 ms "
        "| added at c1 ms | errors |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in p["summary"].items():
        by = " + ".join(f"{v:.0f}" for v in s["cpu_us_per_req_by_server"].values())
        added = "-" if name == "bare" else f"{s['added_c1_p50_ms']:.3f}"
        lines.append(
            f"| {NAMES.get(name, name)} | {s['rps']:,.0f} | {s['rps_ratio']:.3f} | {s['cpu_us_per_req']:.0f} | {by} | "
            f"{s['cpu_ratio']:.2f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['c1_p50_ms']:.3f} | {added} | "
            f"{s['errors']} |"
        )
    return lines


def hop_ratio(p: dict[str, Any], forward: str) -> str | None:
    s = p["summary"]
    if "nginx" not in s or forward not in s:
        return None
    bare = s["bare"]["cpu_us_per_req"]
    ours, theirs = s[forward]["cpu_us_per_req"] - bare, s["nginx"]["cpu_us_per_req"] - bare
    return f"{ours:.0f} us / {theirs:.0f} us = **{ours / theirs:.2f} x**" if theirs > 0 else None


def pass_block(result: dict[str, Any], p: dict[str, Any], title: str) -> list[str]:
    cfg, m = result["config"], result["machine"]
    commit = (m.get("git_commit") or "?")[:7]
    dirty = " (with uncommitted changes in affinity_mw/)" if m.get("affinity_mw_uncommitted_changes") else ""
    spread = p.get("bare_cpu_spread", 0)
    lines = [
        f"**{title}**: medians of {cfg['rounds']} rounds, wrk -t{cfg['threads']} -c{cfg['connections']} "
        f"-d{cfg['duration']}s, commit `{commit}`{dirty}; bare's CPU per request varied {spread:.2f}x between rounds.",
        "",
        *http_table(p),
    ]
    default = "forwarded-urllib3" if cfg.get("wsgi") else "forwarded-asyncio"
    ratio = hop_ratio(p, default)
    if ratio:
        lines += ["", f"Forward-hop CPU (forwarded minus bare) / nginx-hop CPU (nginx minus bare): {ratio}."]
    return lines


def ring_block(ring: dict[str, Any]) -> list[str]:
    lines = [
        f"**Ring algorithms** ({ring['keys']:,} keys, lookup median of {ring['runs']} runs over "
        f"{ring['timed_keys']:,} keys; moved = fraction of keys that changed owner / ideal 1/n):",
        "",
        "| algorithm | nodes | lookup ns | max/mean load | moved on add / ideal | moved on remove / ideal "
        "| successor agreement | memory KiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in ring["results"]:
        lines.append(
            f"| {r['algorithm']} | {r['nodes']} | {r['lookup_ns']:.0f} | {r['max_mean_load']:.3f} | "
            f"{r['moved_add_ratio']:.3f} | {r['moved_remove_ratio']:.3f} | {r['successor_agreement']:.4f} | "
            f"{r['memory_kb']:.0f} |"
        )
    return lines


def targets_block(result: dict[str, Any]) -> list[str]:
    lines = ["| target | measured | met? |", "|---|---|---|"]
    for name, t in result.get("targets", {}).items():
        met = "report" if t["target"] == "report" else ("yes" if t["met"] else "**no**")
        lines.append(f"| {name} | {t['value']} | {met} |")
    return lines


def render(results: Path) -> str:
    out: list[str] = []
    http = results / "http.json"
    if http.exists():
        result = json.loads(http.read_text())
        m = result["machine"]
        out += [
            f"Machine: {m['nproc']} x {m['cpu_model']}, Python {m['python']}, {m['wrk'].split(' Copyright')[0]}; "
            f"load average at start {' '.join(m['loadavg_at_start'])}.",
            "",
        ]
        for p in result["passes"]:
            title = f"ASGI, uvicorn {p['loop']} + {p['http']}"
            out += [*pass_block(result, p, title), ""]
        out += ["Targets (asyncio + h11 pass):", "", *targets_block(result), ""]
    wsgi = results / "http-wsgi.json"
    if wsgi.exists():
        result = json.loads(wsgi.read_text())
        out += [*pass_block(result, result["passes"][0], "WSGI, Flask under gunicorn gthread (8 threads)"), ""]
        out += ["Targets (WSGI):", "", *targets_block(result), ""]
    ring = results / "ring.json"
    if ring.exists():
        out += ring_block(json.loads(ring.read_text()))
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--write", type=Path, help="markdown file whose results block to replace")
    args = parser.parse_args(argv)
    text = render(args.results)
    print(text)
    if args.write and not write_block(args.write, START, END, text):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
