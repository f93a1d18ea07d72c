"""The prepared GPU benchmark runs end to end on the CPU with small shapes (`--small
--stand-in`), so the script is known to work before a GPU is lent: the API it drives had
drifted once (it still passed per-key seeds) and nothing noticed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_bench_gpu_runs_on_cpu_with_small_shapes(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    done = subprocess.run(
        [sys.executable, "bench/gpu.py", "--small", "--stand-in", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("gpu: ours ") and "litserve" in last and "keyed/floor" in last, last
    assert out.exists()
