"""Peer for bench/gpu.py: a TorchScript image classifier (ResNet-50) served by LitServe.

`decode_request` decodes the same body `aim serve` takes (`{"inputs": [{"image_b64": PNG}]}`),
resizes to the model's side and normalises with the ImageNet mean/std; LitServe batches up to
BATCH requests (waiting at most 2 ms), `predict` runs one forward pass per batch on DEVICE and
adds fresh Gaussian noise (σ = 4) to the logits. No auth; one worker, one API server.

    python bench/peers/litserve_image.py PORT MODEL_PATH DEVICE SIDE BATCH
"""

import sys
from pathlib import Path

import litserve as ls
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer_model import encode, image_from_body, modulate, run_litserve

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


class ImageAPI(ls.LitAPI):
    def __init__(self, model_path: str, side: int, **kwargs):
        super().__init__(**kwargs)
        self.model_path, self.side = model_path, side

    def setup(self, device: str) -> None:
        self.device = torch.device(device)
        self.model = torch.jit.load(self.model_path, map_location=self.device).eval()
        self.labels = [f"class-{i}" for i in range(1000)]

    def decode_request(self, request):
        image = image_from_body(request).resize((self.side, self.side))
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - MEAN) / STD

    def batch(self, inputs):
        return torch.stack(inputs)

    def predict(self, x):
        with torch.inference_mode():
            return modulate(self.model(x.to(self.device))).cpu()

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output):
        return {"model": "resnet50", "predictions": [encode(output, self.labels)]}


if __name__ == "__main__":
    port, model_path, device, side, batch = sys.argv[1:6]
    api = ImageAPI(model_path, int(side), max_batch_size=int(batch), batch_timeout=0.002)
    run_litserve(api, int(port), device)
