"""Health that tells the truth (issue 23): a model that cannot load stops `aim serve` with a
non-zero exit and one line naming the file and the problem; a runtime that fails to start fails
`/healthz` (so a liveness probe restarts the pod) and is logged in one line."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from service.access.keys import KeyStore, create_key
from service.api.app import create_app
from service.config import ServiceConfig
from service.runtime import Runtime
from service.settings import Settings
from tests.conftest import TEST_SECRET

from .conftest import aim_bin, free_port

pytestmark = pytest.mark.integration

BROKEN_FILE = {
    "task": "classification",
    "loader": "torchscript",
    "path": "broken.pt",
    "input": {"shape": [1, 8, 8]},
    "labels": ["a", "b"],
}


@pytest.mark.parametrize(
    ("model", "named"),
    [("nosuch", "'nosuch'"), (BROKEN_FILE, "broken.pt': not a zip archive")],
    ids=["unknown-model", "broken-file"],
)
def test_a_model_that_cannot_load_stops_aim_serve_with_one_line(
    tmp_path: Path, model: object, named: str
) -> None:
    (tmp_path / "broken.pt").write_bytes(b"not a model")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"model": model, "tiers": {"gold": {"utility": 1.0}}}))
    keys = tmp_path / "keys.yaml"
    create_key(keys, "gold", "g")
    (tmp_path / "secret").write_text("s")
    env = {**os.environ, "AIM_SECRET_FILE": str(tmp_path / "secret"), "AIM_DEVICE": "cpu"}
    command = [aim_bin(), "serve", "--config", str(config), "--keys-file", str(keys)]
    started = time.monotonic()
    done = subprocess.run(
        [*command, "--port", str(free_port())],
        capture_output=True,
        text=True,
        env={**env, "AIM_CACHE_DIR": str(tmp_path / "cache")},
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()  # the JSON log lines, then the verdict
    assert "Traceback" not in done.stdout + done.stderr
    assert lines[-1].startswith("aim serve: model failed to load: ") and named in lines[-1]
    assert str(config) in lines[-1]
    logged = [line for line in lines if '"level": "error"' in line]
    assert len(logged) == 1 and named in logged[0]
    assert time.monotonic() - started < 60


def test_a_runtime_that_fails_to_start_fails_health_and_says_why_in_one_line(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_start(self: Runtime, *_: object) -> None:
        raise OSError("cannot open the shared memory file /dev/shm/aim-x")

    monkeypatch.setattr(Runtime, "start", broken_start)
    settings = Settings(cache_dir=cache_dir, device="cpu")
    config = ServiceConfig.from_dict({"model": "digits", "tiers": {"gold": {"utility": 1.0}}})
    app = create_app(settings, config, KeyStore([]), secret=TEST_SECRET)
    failures: list[str] = []
    app.state.aim.on_load_failure = failures.append
    with caplog.at_level(logging.INFO), TestClient(app) as client:
        assert client.get("/healthz").status_code in (200, 503)  # alive while loading
        deadline = time.monotonic() + 120
        while client.get("/readyz").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        health = client.get("/healthz")
        ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "failed"
    assert health.status_code == 503
    assert "shared memory file" in health.json()["error"]
    assert failures == [health.json()["error"]]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info is None
    assert "shared memory file" in str(errors[0].__dict__.get("error"))
