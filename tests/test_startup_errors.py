"""A misconfigured app stops the server at start-up with the configuration error, under uvicorn's defaults.

Starlette (and so FastAPI) builds its middleware stack lazily, in the first call: the lifespan's. uvicorn's
default ``--lifespan auto`` takes an exception raised there for an app that does not speak lifespan, logs
"ASGI 'lifespan' protocol appears unsupported" and serves on, every request then a 500. The middleware must
instead fail the lifespan start-up with the message, which uvicorn treats as a start-up failure and exits.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from cluster import ROOT, SECRET, free_port

PEERS = "http://127.0.0.1:{port},http://127.0.0.2:{port}"
GOOD = {"AFFINITY_SECRET": SECRET, "AFFINITY_KEY": "header:X-Tenant", "AFFINITY_SELF": "http://127.0.0.1:{port}"}
CASES = {
    "key typo": ({"AFFINITY_KEY": "heder:X-Tenant"}, "AFFINITY_KEY source 'heder:X-Tenant' is not valid"),
    "self not a peer": ({"AFFINITY_SELF": "http://127.0.0.9:{port}"}, "is not one of the peers"),
    "no secret": ({"AFFINITY_SECRET": ""}, "a secret (AFFINITY_SECRET) is required"),
    "short secret": ({"AFFINITY_SECRET": "too-short"}, "at least 16 characters"),
}


@pytest.mark.parametrize("app", ["fastapi_app", "starlette_app"])
@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_setting_stops_uvicorn_at_start_up_with_the_message(app: str, case: str) -> None:
    port = free_port(["127.0.0.1"])
    bad, message = CASES[case]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFFINITY_")}
    env["PYTHONPATH"] = str(ROOT)
    env["AFFINITY_PEERS"] = PEERS.format(port=port)
    for name, value in {**GOOD, **bad}.items():
        env[name] = value.format(port=port)
    # uvicorn as users start it: no --lifespan, so its default "auto".
    cmd = [sys.executable, "-m", "uvicorn", f"tests.apps.configured_by_env:{app}", "--port", str(port)]
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired as exc:
        output = (exc.stdout or b"").decode() + (exc.stderr or b"").decode()  # type: ignore[union-attr]
        raise AssertionError(f"uvicorn kept serving a misconfigured app:\n{output}") from None
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert message in output, output
    assert "Traceback" not in output, "the message, not a traceback"
