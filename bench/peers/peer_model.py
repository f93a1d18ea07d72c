"""What both peers share with each other (and nothing with `service` but the model): the noise
they add and the response they give, so only the serving stack differs between them."""

from __future__ import annotations

from typing import Any

import torch

SIGMA = 4.0
"""Fresh Gaussian noise on the logits, as `noise: fresh` would add at this σ."""
TOP_K = 3


def load_digits_model() -> Any:
    """The shipped digits CNN, the same adapter `aim serve` uses (CPU)."""
    from service.models import load_model

    return load_model("digits")


def modulate(logits: torch.Tensor, sigma: float = SIGMA) -> torch.Tensor:
    """Fresh noise on every call: z' = z + σ·ε, ε ~ N(0, I)."""
    return logits + sigma * torch.randn_like(logits)


def encode(row: torch.Tensor, labels: list[str], top_k: int = TOP_K) -> dict[str, Any]:
    """One prediction like `aim serve` answers it: label, index, score and the top k."""
    probs = torch.softmax(row.float(), dim=-1)
    scores, indices = probs.topk(min(top_k, probs.shape[-1]))
    top = [
        {"label": labels[i], "index": i, "score": round(s, 6)}
        for s, i in zip(scores.tolist(), indices.tolist(), strict=True)
    ]
    return {**top[0], "top_k": top}


def image_from_body(request: Any) -> Any:
    """The PIL RGB image of `{"inputs": [{"image_b64": ...}]}` (the body `aim serve` takes);
    a 422 naming the field when it is not one."""
    import base64
    import io

    from fastapi import HTTPException
    from PIL import Image

    try:
        data = base64.b64decode(request["inputs"][0]["image_b64"])
        return Image.open(io.BytesIO(data)).convert("RGB")
    except Exception:
        raise HTTPException(422, "inputs[0].image_b64: not a PNG/JPEG image") from None


def run_litserve(
    api: Any, port: int, device: str, timeout: float = 60, fast_queue: bool = True
) -> None:
    """A peer as LitServe runs it: one worker on ``device``, one API server, `fast_queue`."""
    import litserve as ls

    server = ls.LitServer(
        api, accelerator=device, workers_per_device=1, timeout=timeout, fast_queue=fast_queue
    )
    server.run(
        host="127.0.0.1",
        port=port,
        num_api_servers=1,
        log_level="warning",
        generate_client_file=False,
    )
