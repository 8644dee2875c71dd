from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from figures import Figures


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "reliability: a scenario of the reliability suite; its figures go in the table")
    config.addinivalue_line("markers", "slow: too long for `make test`; runs under `make reliability`")


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    return Figures(request.node.nodeid)
