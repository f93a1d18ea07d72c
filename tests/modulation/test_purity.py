"""The modulation core stays pure torch: importing it loads no web framework."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit


def test_modulation_imports_no_web_code() -> None:
    code = (
        "import sys, service.modulation; "
        "bad = sorted(m for m in sys.modules "
        "if m.split('.')[0] in {'fastapi', 'starlette', 'uvicorn', 'pydantic', 'httpx'} "
        "or m.startswith('service.api')); print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"service.modulation pulled in: {out}"
