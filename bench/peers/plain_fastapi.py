"""Peer for bench/compare_servers.py: the shipped digits CNN behind a plain FastAPI endpoint.

A pydantic body model, one forward pass per request (no batching, no auth), fresh Gaussian noise
(σ = 4) on the logits, served by uvicorn on 127.0.0.1.

    python bench/peers/plain_fastapi.py PORT
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, Field

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_model import encode, load_digits_model, modulate

model = load_digits_model()
labels = [str(label) for label in model.labels]
app = FastAPI(title="digits, plain FastAPI peer")


class PredictBody(BaseModel):
    inputs: list[list[list[float]]] = Field(min_length=1, max_length=64)


@app.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/predict")
def predict(body: PredictBody) -> dict[str, Any]:
    # A sync endpoint: FastAPI runs it in its thread pool, the usual way to serve blocking work.
    x = torch.stack([model.prepare(item) for item in body.inputs])
    with torch.inference_mode():
        logits = modulate(model.forward(x))
    return {"model": "digits", "predictions": [encode(row, labels) for row in logits]}


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8001
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
