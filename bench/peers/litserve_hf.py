"""Peer for bench/real_model.py: a Hugging Face image classifier directory served by LitServe,
as its owner would write it: transformers' own image processor in `decode_request`, the model's
batched forward in `predict` (up to BATCH requests, waiting at most 2 ms), fresh Gaussian noise
(σ = 4) on the logits. Takes the body `aim serve` takes (`{"inputs": [{"image_b64": JPEG}]}`).
No auth; one worker, one API server; torch uses every core (LitServe's default).

    python bench/peers/litserve_hf.py PORT MODEL_DIR DEVICE BATCH
"""

import logging
import sys
from pathlib import Path

import litserve as ls
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_model import encode, image_from_body, modulate, run_litserve


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
        image = image_from_body(request)
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
    run_litserve(api, int(port), device)
