"""`aim digest train` on a user's model: the file it writes is loaded by the server, named by
`GET /model`, and keys the replay memory, so augmented copies reuse a remembered cell."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from fastapi.testclient import TestClient
from torch import nn

from service.access.keys import KeyRecord, KeyStore, generate_key, hash_key
from service.api.app import create_app
from service.cli.main import main
from service.config import ServiceConfig
from service.models.data import digits_splits
from service.settings import Settings
from tests.conftest import TEST_SECRET, wait_ready

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from augment import augment

pytestmark = pytest.mark.integration

KEY = generate_key()


def _user_model(tmp: Path, digest: Path | None = None) -> dict[str, Any]:
    """A small CNN of the user's, as a TorchScript file and its spec."""
    path = tmp / "user.pt"
    if not path.exists():
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)
        ).eval()
        torch.jit.save(torch.jit.script(net), str(path))
    spec: dict[str, Any] = {
        "task": "classification",
        "path": str(path),
        "labels": [str(d) for d in range(10)],
        "input": {"shape": [1, 8, 8], "low": 0.0, "high": 16.0, "scale": 16.0},
    }
    if digest is not None:
        spec["digest"] = str(digest)
    return spec


def _client(tmp: Path, spec: dict[str, Any]) -> TestClient:
    config = {"model": spec, "tiers": {"gold": {"sigma": 0.0}, "bronze": {"sigma": 2.0}}}
    store = KeyStore([KeyRecord("b", "bronze", hash_key(KEY))])
    settings = Settings(cache_dir=tmp / "cache", device="cpu", max_wait_ms=2.0)
    app = create_app(settings, ServiceConfig.from_dict(config), store, secret=TEST_SECRET)
    return TestClient(app, raise_server_exceptions=False)


def _matched(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("aim_replay_rows_total{") and 'result="matched"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_digest_train_writes_a_digest_the_server_loads_and_keys_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "inputs.npy"
    np.save(inputs, np.asarray(digits_splits().train[0][:200]))
    config = tmp_path / "user.yaml"
    config.write_text(yaml.safe_dump({"model": _user_model(tmp_path)}))
    out = tmp_path / "user-digest.safetensors"
    argv = ["digest", "train", "--model", str(config), "--inputs", str(inputs)]
    assert main([*argv, "--out", str(out), "--steps", "20"]) == 0
    printed = capsys.readouterr()
    assert out.is_file() and "threshold" in printed.out and "digest: 20/20" in printed.err

    held = digits_splits().heldout[0][:16]
    with _client(tmp_path, _user_model(tmp_path, out)) as client:
        wait_ready(client)
        info = client.get("/model", headers={"X-API-Key": KEY}).json()
        assert info["digest"]["kind"] == "encoder" and info["digest"]["source"] == out.name
        # The per-family vote: copies of one family after another; the memory reuses cells.
        gen = torch.Generator().manual_seed(0)
        for family in ("brightness", "contrast", "drop2"):
            for _ in range(4):
                copies = augment(torch.tensor(held), family, gen).tolist()
                r = client.post("/predict", json={"inputs": copies}, headers={"X-API-Key": KEY})
                assert r.status_code == 200, r.text
        assert _matched(client) > 16, "augmented copies did not reuse a remembered cell"


def test_without_a_digest_the_server_says_it_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING"), _client(tmp_path, _user_model(tmp_path)) as client:
        wait_ready(client)
        info = client.get("/model", headers={"X-API-Key": KEY}).json()
    assert info["digest"] == {"kind": "fallback", "source": "the centred logits"}
    lines = [r.getMessage() for r in caplog.records if "weaker digest" in r.getMessage()]
    assert len(lines) == 1, lines


def test_digest_train_refuses_a_missing_inputs_path(tmp_path: Path) -> None:
    config = tmp_path / "user.yaml"
    config.write_text(yaml.safe_dump({"model": _user_model(tmp_path)}))
    with pytest.raises(ValueError, match="--inputs"):
        main(["digest", "train", "--model", str(config), "--inputs", str(tmp_path / "none")])
