"""schemathesis against the live server's /openapi.json: whatever it sends, no 5xx.

Runs the schemathesis CLI (its pytest plugin does not load under pytest 9), bounded by
`--max-examples` and a fixed seed so the run is reproducible.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import LiveServer

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("server", ["live_server", "lm_server"])
def test_no_server_errors(server: str, request: pytest.FixtureRequest) -> None:
    live_server: LiveServer = request.getfixturevalue(server)
    st = str(Path(sys.executable).with_name("st"))
    proc = subprocess.run(
        [
            st,
            "run",
            f"{live_server.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "30",
            "--seed",
            "1",
            "--header",
            f"X-API-Key: {live_server.keys['gold'][0]}",
            "--request-timeout",
            "30",
            "--workers",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    # It really sent requests: a summary like "676 generated, 676 passed".
    import re

    m = re.search(r"(\d+) generated, (\d+) passed", proc.stdout)
    assert m and int(m.group(1)) > 100 and m.group(1) == m.group(2), proc.stdout[-3000:]
