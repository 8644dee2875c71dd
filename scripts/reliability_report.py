"""Turn the figures the reliability scenarios recorded (JSON lines) into the table of docs/reliability.md.

    python scripts/reliability_report.py bench/results/reliability.jsonl [--write docs/reliability.md]

Rows with the same scenario and stack (parametrised cases, several runs) are summed; peak RSS growth is the
maximum. With ``--write``, the table between the ``<!-- reliability-table -->`` markers is replaced, so the docs
always show the last full run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from docblock import write_block

START, END = "<!-- reliability-table:start -->", "<!-- reliability-table:end -->"
COLUMNS = ("scenario", "stack", "sent", "failed", "retried", "duplicated", "bytes checked", "peak RSS +MiB", "notes")


def load(path: Path) -> list[dict[str, object]]:
    rows: dict[tuple[str, str], dict[str, object]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        key = (str(rec["scenario"]), str(rec["stack"]))
        row = rows.setdefault(
            key,
            {
                "scenario": key[0],
                "stack": key[1],
                "sent": 0,
                "failed": 0,
                "retried": 0,
                "duplicated": 0,
                "bytes_checked": 0,
                "peak_rss_mb": None,
                "notes": [],
            },
        )
        for name in ("sent", "failed", "retried", "duplicated", "bytes_checked"):
            row[name] = int(row[name]) + int(rec.get(name) or 0)  # type: ignore[call-overload]
        if rec.get("peak_rss_mb") is not None:
            row["peak_rss_mb"] = max(float(row["peak_rss_mb"] or 0.0), float(rec["peak_rss_mb"]))  # type: ignore[arg-type]
        notes = row["notes"]
        assert isinstance(notes, list)
        if rec.get("notes") and rec["notes"] not in notes:
            notes.append(rec["notes"])
    return list(rows.values())


def human_bytes(n: int) -> str:
    if not n:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    raise AssertionError


def table(rows: list[dict[str, object]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        rss = r["peak_rss_mb"]
        notes = "; ".join(str(n) for n in r["notes"])  # type: ignore[attr-defined]
        cells = [
            str(r["scenario"]),
            str(r["stack"]),
            str(r["sent"]),
            str(r["failed"]),
            str(r["retried"]),
            str(r["duplicated"]),
            human_bytes(int(r["bytes_checked"])),  # type: ignore[call-overload]
            "-" if rss is None else f"{rss:.1f}",
            notes.replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    total_sent = sum(int(r["sent"]) for r in rows)  # type: ignore[call-overload]
    total_failed = sum(int(r["failed"]) for r in rows)  # type: ignore[call-overload]
    total_dup = sum(int(r["duplicated"]) for r in rows)  # type: ignore[call-overload]
    total_bytes = sum(int(r["bytes_checked"]) for r in rows)  # type: ignore[call-overload]
    lines.append(
        f"| **all {len(rows)} rows** | | **{total_sent}** | **{total_failed}** | | **{total_dup}** | "
        f"**{human_bytes(total_bytes)}** | | |"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--write", type=Path, help="markdown file whose table to replace")
    args = parser.parse_args(argv)
    if not args.results.exists():
        print(f"no results in {args.results}: run `make reliability`", file=sys.stderr)
        return 1
    rows = load(args.results)
    text = table(rows)
    print(text)
    if args.write and not write_block(args.write, START, END, text):
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
