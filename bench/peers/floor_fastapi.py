"""Peer for bench/compare_servers.py: the framework floor. A bare FastAPI endpoint that parses
the same JSON body (the same pydantic shape as the plain FastAPI peer) and answers a constant:
no model, no auth, no noise. Whatever a real server does costs on top of this.

An `async` endpoint (no thread-pool hop), one uvicorn process and event loop, uvloop and
httptools as uvicorn picks them, no access log: the cheapest FastAPI request there is.

    python bench/peers/floor_fastapi.py PORT
"""

from __future__ import annotations

import sys
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel, Field

app = FastAPI(title="framework floor")
ANSWER = {"model": "digits", "predictions": [{"label": "0", "index": 0, "score": 1.0}]}


class PredictBody(BaseModel):
    inputs: list[list[list[float]]] = Field(min_length=1, max_length=64)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/predict")
async def predict(body: PredictBody) -> dict[str, Any]:
    return ANSWER


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8003
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
