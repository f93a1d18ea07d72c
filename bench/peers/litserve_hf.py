"""Peer for bench/real_model.py: a Hugging Face image classifier directory served by LitServe,
as its owner would write it: transformers' own image processor in `decode_request`, the model's
batched forward in `predict` (up to BATCH requests, waiting at most 2 ms), fresh Gaussian noise
(σ = 4) on the logits. Takes the body `aim serve` takes (`{"inputs": [{"image_b64": JPEG}]}`).
No auth; one worker, one API server; torch uses every core (LitServe's default).

    python bench/peers/litserve_hf.py PORT MODEL_DIR DEVICE BATCH
"""

import base64
import io
import logging
import sys
from pathlib import Path

import litserve as ls
import torch
from fastapi import HTTPException
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_model import encode, modulate


class HFImageAPI(ls.LitAPI):
    def __init__(self, model_dir: str, **kwargs):
        super().__init__(**kwargs)
        self.model_dir = model_dir

    def setup(self, device: str) -> None:
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        logging.getLogger("transformers").setLevel(logging.ERROR)
        self.device = torch.device(device)
        self.processor = AutoImageProcessor.from_pretrained(self.model_dir)
        model = AutoModelForImageClassification.from_pretrained(self.model_dir)
        self.model = model.eval().to(self.device)
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]

    def decode_request(self, request):
        try:
            data = base64.b64decode(request["inputs"][0]["image_b64"])
            image = Image.open(io.BytesIO(data)).convert("RGB")
        except Exception:
            raise HTTPException(422, "inputs[0].image_b64: not a PNG/JPEG image") from None
        return self.processor(image, return_tensors="pt")["pixel_values"][0]

    def batch(self, inputs):
        return torch.stack(inputs)

    def predict(self, x):
        with torch.inference_mode():
            return modulate(self.model(pixel_values=x.to(self.device)).logits).cpu()

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output):
        return {"model": "hf", "predictions": [encode(output, self.labels)]}


if __name__ == "__main__":
    port, model_dir, device, batch = sys.argv[1:5]
    api = HFImageAPI(model_dir, max_batch_size=int(batch), batch_timeout=0.002)
    server = ls.LitServer(
        api, accelerator=device, workers_per_device=1, timeout=60, fast_queue=True
    )
    server.run(
        host="127.0.0.1",
        port=int(port),
        num_api_servers=1,
        log_level="warning",
        generate_client_file=False,
    )
