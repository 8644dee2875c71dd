"""Rewrite the options table in docs/configuration.md from affinity_mw.config.OPTIONS (the single source).

python scripts/gen_config_docs.py          # rewrite
python scripts/gen_config_docs.py --check  # exit 1 if the docs are stale (the test suite runs this check)
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from docblock import replace_block

from affinity_mw.config import OPTIONS

DOC = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
BEGIN, END = "<!-- options:begin -->", "<!-- options:end -->"


def fmt(value: Any) -> str:
    if value in ((), None):
        return "(none)"
    if isinstance(value, bool):
        return "`1`" if value else "`0`"
    return f"`{value}`"


def table() -> str:
    rows = ["| keyword | environment variable | default | meaning |", "|---|---|---|---|"]
    rows += [f"| `{o.name}` | `{o.env}` | {fmt(o.default)} | {o.doc} |" for o in OPTIONS]
    return "\n".join(rows)


def render(text: str) -> str:
    return replace_block(text, BEGIN, END, table())


def main() -> int:
    text = DOC.read_text()
    new = render(text)
    if "--check" in sys.argv:
        return 0 if new == text else 1
    DOC.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
