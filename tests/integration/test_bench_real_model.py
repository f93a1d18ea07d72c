"""bench/real_model.py runs end to end on tiny shapes (`--small`): every server answers with 0
errors and the run ends with the contract's line per model. Its figures are not looked at."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(
    r"^(vit|resnet50): ours/litserve req/s ratio: [\d.]+, ours/forward share: [\d.]+$"
)


def test_bench_real_model_runs_on_tiny_shapes(tmp_path: Path) -> None:
    out = tmp_path / "real.json"
    command = [sys.executable, "bench/real_model.py", "--small", "--seconds", "1"]
    command += ["--warmup", "0.5", "--clients", "2", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    last = done.stdout.strip().splitlines()[-2:]
    assert [LINE.match(line) is not None for line in last] == [True, True], last
    results = json.loads(out.read_text())["results"]
    for model in ("vit", "resnet50"):
        rows = results[model]
        servers = {"ours-hf", "ours-json", "ours-export", "litserve", "forward", "forward-eager"}
        assert set(rows) == servers | {"preprocess_ms"}
        assert rows["preprocess_ms"]["ours"] > 0 and rows["preprocess_ms"]["transformers"] > 0
        for server in ("ours-hf", "ours-json", "ours-export", "litserve"):
            assert rows[server]["errors"] == 0 and rows[server]["requests"] > 0, (model, server)
