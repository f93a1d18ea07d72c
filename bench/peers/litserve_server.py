"""Peer for bench/compare_servers.py: the shipped digits CNN served by LitServe.

`decode_request` turns the same JSON body (`{"inputs": [8×8]}`, one digit per request) into a
tensor with the model's own `prepare`; LitServe batches up to 32 requests (waiting at most 2 ms),
`predict` runs one forward pass per batch and adds fresh Gaussian noise (σ = 4) to the logits.
No auth. One inference worker on CPU, one API server process, 127.0.0.1 only, and
`fast_queue=True` (ZeroMQ between the API server and the worker), which LitServe's own docs ask
for above 100 requests/s; `BENCH_LITSERVE_FAST_QUEUE=0` turns it off (multiprocessing queues).

    python bench/peers/litserve_server.py PORT
"""

import os
import sys
from pathlib import Path

import litserve as ls
import torch
from fastapi import HTTPException

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_model import encode, load_digits_model, modulate, run_litserve

MAX_BATCH_SIZE = 32
BATCH_TIMEOUT_S = 0.002


class DigitsAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.model = load_digits_model()
        self.labels = [str(label) for label in self.model.labels]

    # LitServe reads the annotations of `decode_request`'s `request` and of `encode_response`'s
    # return as the endpoint's body and response types: left out, the body is the parsed JSON.
    def decode_request(self, request):
        inputs = request.get("inputs") if isinstance(request, dict) else None
        if not isinstance(inputs, list) or len(inputs) != 1:
            raise HTTPException(422, "inputs: give exactly one 8×8 digit per request")
        prepared: torch.Tensor = self.model.prepare(inputs[0])
        return prepared

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return modulate(self.model.forward(x))

    def unbatch(self, output: torch.Tensor) -> list[torch.Tensor]:
        return list(output)

    def encode_response(self, output: torch.Tensor):
        return {"model": "digits", "predictions": [encode(output, self.labels)]}


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8002
    api = DigitsAPI(max_batch_size=MAX_BATCH_SIZE, batch_timeout=BATCH_TIMEOUT_S)
    fast_queue = os.environ.get("BENCH_LITSERVE_FAST_QUEUE", "1") != "0"
    run_litserve(api, port, "cpu", timeout=30, fast_queue=fast_queue)
