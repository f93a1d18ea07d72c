"""The README's Python example runs as written against a live server (URL and key substituted)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from .conftest import LiveServer

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("readme", ["README.md", "clients/python/README.md"])
def test_readme_python_example_runs(
    live_server: LiveServer, readme: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Examples take the key inline ("aim_…") or from $AIM_API_KEY, as the client does.
    monkeypatch.setenv("AIM_API_KEY", live_server.keys["gold"][0])
    text = (ROOT / readme).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, f"{readme} has no python example"
    code = blocks[0]
    assert "http://127.0.0.1:8000" in code
    code = code.replace("http://127.0.0.1:8000", live_server.url)
    code = re.sub(r'"aim_[^"]*"', repr(live_server.keys["gold"][0]), code)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, readme, "exec"), {"__name__": "readme_example"})
    assert out.getvalue().strip(), "the example printed nothing"
