"""README's "Other clients" section runs as written: its ```sh and ```python blocks in order, in
a scratch folder, against the servers its own sh blocks start (`--port 8000` becomes a free
port, `http://127.0.0.1:8000` that server's URL, `aim_…` the first key it printed)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SECTION = "## Other clients: Triton, KServe, the OpenAI SDK"
KEY = re.compile(r"aim_[A-Za-z0-9_-]{20,}")


def section_blocks() -> list[tuple[str, str]]:
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    body = text[start : end if end > 0 else None]
    return re.findall(r"^```(sh|python)\n(.*?)^```$", body, flags=re.S | re.M)


class Reader:
    """The README's reader: a scratch folder, the server its last sh block started, its key."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.env = {**os.environ, "AIM_CACHE_DIR": str(work / "cache"), "AIM_DEVICE": "cpu"}
        self.process: subprocess.Popen[bytes] | None = None
        self.url = self.key = ""

    def substitute(self, text: str) -> str:
        return text.replace("http://127.0.0.1:8000", self.url).replace("aim_…", self.key)

    def run_sh(self, script: str) -> str:
        lines = [line for line in script.replace("\\\n", " ").splitlines() if line.strip()]
        if "aim serve" in lines[-1]:
            self.serve(lines)
            return ""
        done = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + self.substitute(script)],
            cwd=self.work,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    def serve(self, lines: list[str]) -> None:
        self.stop()
        port = free_port()
        last = re.sub(r"--port \d+", f"--port {port}", lines[-1])
        log = self.work / f"server-{port}.log"
        script = "set -euo pipefail\n" + "\n".join([*lines[:-1], "exec " + last])
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                ["bash", "-c", script], cwd=self.work, env=self.env, stdout=out, stderr=out
            )
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while True:
            assert self.process.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    break
            time.sleep(0.3)
        keys = KEY.findall(log.read_text(errors="replace"))
        assert keys, log.read_text(errors="replace")
        self.key = keys[0]

    def run_python(self, code: str) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(self.substitute(code), "README.md", "exec"), {"__name__": "readme"})
        return out.getvalue()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=30)


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[Reader]:
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parents[1])
    (tmp_path / "scripts").symlink_to(ROOT / "scripts")
    reader = Reader(tmp_path)
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        yield reader
    finally:
        os.chdir(cwd)
        reader.stop()


def test_other_clients_section_runs_as_written(reader: Reader) -> None:
    blocks = section_blocks()
    assert [lang for lang, _ in blocks].count("python") == 4
    printed, last = [], ""
    for lang, code in blocks:
        last = reader.run_sh(code) if lang == "sh" else reader.run_python(code)
        if lang == "python":
            assert last.strip(), code
            printed.append(last)
    triton, kserve, scenes, chat = printed
    assert "ready: True" in triton and "'tier': 'silver'" in triton
    assert "'label'" in kserve
    assert "pixels changed outside: 0" in scenes
    first, streamed = chat.splitlines()[:2]
    assert first.split(" CompletionUsage")[0] == streamed  # the stream has the same text
    assert last.rstrip().endswith("data: [DONE]")  # the curl stream, the section's last block
