"""Replace the generated block between two HTML-comment markers in a markdown file.

The docs generators (``gen_config_docs.py``, ``reliability_report.py``, ``bench/report.py``,
``bench/instructions_bench.py``) each own one block of one file; everything outside the markers is hand-written
and must survive regeneration untouched.
"""

from __future__ import annotations

import sys
from pathlib import Path


def replace_block(text: str, begin: str, end: str, body: str) -> str:
    """``text`` with the lines between ``begin`` and ``end`` replaced by ``body``; ValueError without markers."""
    if begin not in text or end not in text:
        raise ValueError(f"no {begin} ... {end} markers")
    head, _, rest = text.partition(begin)
    _, _, tail = rest.partition(end)
    return f"{head}{begin}\n{body.rstrip(chr(10))}\n{end}{tail}"


def write_block(path: Path, begin: str, end: str, body: str) -> bool:
    """Replace the block in the file at ``path``; False (said on stderr, the file untouched) without markers."""
    try:
        text = replace_block(path.read_text(encoding="utf-8"), begin, end, body)
    except ValueError as exc:
        print(f"{path}: {exc}", file=sys.stderr)
        return False
    path.write_text(text, encoding="utf-8")
    return True
