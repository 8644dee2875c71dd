"""The package's shape: line counts of every module, and every import cycle among them.

    python scripts/check_structure.py [--max-lines 500] [--strict-lines]

Every import counts, wherever it is written: at the top of a module, inside a function, or under
``if TYPE_CHECKING:`` (a cycle a type checker sees is still a cycle for whoever reads the code). Imports are read
from the syntax tree, not by importing anything. ``from . import x`` counts as an import of the module ``x`` when
``x`` is one, else of the package. Exits 1 when there is a cycle (or, with ``--strict-lines``, a module over the
limit); prints what it found either way.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "affinity_mw"


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of the package (a package is its ``__init__``)."""
    found: dict[str, Path] = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules that module ``name`` imports, anywhere in its source."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.add(_owner(alias.name, known))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else _owner(target, known))
    out.discard(name)
    return {m for m in out if m in known}


def _owner(dotted: str, known: set[str]) -> str:
    """The longest known module that ``dotted`` names or lies in."""
    parts = dotted.split(".")
    while parts and ".".join(parts) not in known:
        parts.pop()
    return ".".join(parts)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each as a list that starts at its
    smallest name; a module importing itself is not counted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-lines", type=int, default=500, help="flag modules longer than this (500)")
    parser.add_argument("--strict-lines", action="store_true", help="exit 1 when a module is over --max-lines")
    args = parser.parse_args(argv)
    found = modules(ROOT)
    known = set(found)
    graph = {name: imports(name, path, known) for name, path in found.items()}
    lengths = {name: len(path.read_text().splitlines()) for name, path in found.items()}
    over = [name for name, n in lengths.items() if n > args.max_lines]
    print(f"{'lines':>6}  module")
    for name, n in sorted(lengths.items(), key=lambda item: (-item[1], item[0])):
        print(f"{n:>6}  {name}{'  (over ' + str(args.max_lines) + ')' if name in over else ''}")
    found_cycles = cycles(graph)
    print()
    if found_cycles:
        for component in found_cycles:
            edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a]) if b in component]
            print(f"import cycle among {', '.join(component)}: {'; '.join(edges)}")
    else:
        print(f"no import cycles among the {len(found)} modules (every import counted)")
    if over:
        print(f"{len(over)} module(s) over {args.max_lines} lines: {', '.join(sorted(over))}")
    return 1 if found_cycles or (args.strict_lines and over) else 0


if __name__ == "__main__":
    sys.exit(main())
