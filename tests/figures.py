"""The figures a reliability scenario measured: one row of the table `make reliability` prints."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass


@dataclass
class Figure:
    """One row of the reliability table (docs/reliability.md says what each column means)."""

    scenario: str
    stack: str = ""
    sent: int = 0  # requests the test's clients sent
    failed: int = 0  # client-visible failures that the scenario counts as failures (its own definition, in notes)
    retried: int = 0  # upstream attempts beyond the first, from the forwarding nodes' counters
    duplicated: int = 0  # non-idempotent requests executed by more than one app
    bytes_checked: int = 0  # body bytes whose sha256 (or exact content) the test verified
    peak_rss_mb: float | None = None  # peak growth of the forwarding node's RSS during the scenario, MiB
    notes: str = ""


class Figures:
    """Records what a reliability scenario measured; `make reliability` turns the records into the table.

    Only writes when ``AFFINITY_RELIABILITY_OUT`` names a file (JSON lines), so `make test` runs the same assertions
    without the bookkeeping.
    """

    def __init__(self, nodeid: str) -> None:
        self.nodeid = nodeid
        self.path = os.environ.get("AFFINITY_RELIABILITY_OUT")

    def record(self, scenario: str, **values: object) -> Figure:
        figure = Figure(scenario, **values)  # type: ignore[arg-type]
        if self.path:
            row = {"test": self.nodeid, "time": time.time(), **asdict(figure)}
            with open(self.path, "a", encoding="utf-8") as out:
                out.write(json.dumps(row) + "\n")
        return figure


def rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB (Linux /proc), for the peak-growth column."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    """Open file descriptors of a process (Linux /proc)."""
    return len(os.listdir(f"/proc/{pid}/fd"))
