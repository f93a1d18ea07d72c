"""A real `aim serve` (uvicorn) on loopback, with keys made by `aim keys create`."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

from service.access.keys import create_key

KEYS_PER_TIER = 6
CONFIG = {
    "model": "digits",
    "tiers": {
        "gold": {"utility": 1.0},
        "silver": {"utility": 0.85},
        "bronze": {"utility": 0.6, "max_items": 64},
    },
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    keys: dict[str, list[str]] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def aim_bin() -> str:
    return str(Path(sys.executable).with_name("aim"))


def start_server(
    tmp: Path, config: dict[str, object], keys_file: Path, extra_env: dict[str, str] | None = None
) -> LiveServer:
    config_path = tmp / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    secret = tmp / "secret"
    secret.write_text("integration-secret")
    port = free_port()
    log_path = tmp / "server.log"
    env = {
        **os.environ,
        "AIM_SECRET_FILE": str(secret),
        "AIM_CACHE_DIR": str(tmp / "cache"),
        "AIM_DEVICE": "cpu",
        **(extra_env or {}),
    }
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                aim_bin(),
                "serve",
                "--config",
                str(config_path),
                "--keys-file",
                str(keys_file),
                "--port",
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    server = LiveServer(f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"aim serve exited with {proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url + "/readyz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError(f"aim serve did not become ready:\n{server.log()}")


@contextmanager
def prometheus_server(servers: list[LiveServer], tmp: Path) -> Iterator[str]:
    """A real Prometheus (Debian's package) scraping `servers` every second; yields its URL."""
    binary = shutil.which("prometheus")
    assert binary, "the Prometheus server is required (.ci/run installs Debian's `prometheus`)"
    targets = [s.url.removeprefix("http://") for s in servers]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "aim",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": targets}],
            }
        ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def stop_server(server: LiveServer) -> int:
    server.process.terminate()
    try:
        return server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        return -9


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    tmp = tmp_path_factory.mktemp("live")
    keys_file = tmp / "keys.yaml"
    config_path = tmp / "config.yaml"
    config_path.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    keys: dict[str, list[str]] = {}
    # The first key goes through the real CLI: the plaintext is alone on the last line.
    out = subprocess.run(
        [
            aim_bin(),
            "keys",
            "create",
            "--keys-file",
            str(keys_file),
            "--tier",
            "gold",
            "--id",
            "cli-gold",
            "--config",
            str(config_path),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    keys["gold"] = [out.stdout.strip().splitlines()[-1]]
    for tier in CONFIG["tiers"]:  # type: ignore[attr-defined]
        while len(keys.setdefault(tier, [])) < KEYS_PER_TIER:
            _, plaintext = create_key(keys_file, tier, f"{tier}-{len(keys[tier])}")
            keys[tier].append(plaintext)
    server = start_server(tmp, CONFIG, keys_file)
    server.keys = keys
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def lm_server(tiny_lm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A real `aim serve` of the tiny causal LM (generation): gold, silver and a focus-less
    bronze tier, two keys each."""
    tmp = tmp_path_factory.mktemp("live-lm")
    config = {
        "model": {"task": "generation", "loader": "huggingface", "path": str(tiny_lm_dir)},
        "tiers": {
            "gold": {"utility": 1.0},
            "silver": {"sigma": 1.0},
            "bronze": {"sigma": 3.0, "focus": False},
        },
    }
    keys_file = tmp / "keys.yaml"
    keys = {
        t: [create_key(keys_file, t, f"lm-{t}-{i}")[1] for i in range(2)]
        for t in ("gold", "silver", "bronze")
    }
    server = start_server(tmp, config, keys_file)
    server.keys = keys
    yield server
    stop_server(server)
