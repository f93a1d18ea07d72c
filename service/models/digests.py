"""Which replay digest a model's tiers key their memory on: the encoder shipped beside a shipped
model (``assets/<name>-digest.safetensors``), the file a model spec names (``digest:``), or none
(the engine then falls back to the network's penultimate layer or its centred logits)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ..modulation import DigestEncoder, load_digest
from .shipped import ASSETS
from .spec import SHIPPED, ModelSpec

log = logging.getLogger(__name__)


def digest_path(model: str | ModelSpec) -> Path | None:
    """The digest file of ``model`` (a shipped name or a spec), None if it has none."""
    if isinstance(model, ModelSpec):
        return model.digest
    if model in SHIPPED:
        path = ASSETS / f"{model}-digest.safetensors"
        return path if path.is_file() else None
    return None


def model_digest(
    model: str | ModelSpec, adapter: Any, device: torch.device
) -> tuple[DigestEncoder | None, dict[str, str] | None]:
    """The digest encoder to use and what ``GET /model`` says about it (None for models whose
    noise has no replay memory: segmentation, generation). Logs one line either way."""
    if getattr(adapter, "task", None) != "classification":
        return None, None
    path = digest_path(model)
    if path is None:
        weaker = (
            "the network's penultimate layer"
            if hasattr(getattr(adapter, "module", None), "forward_with_embedding")
            else "the centred logits"
        )
        log.warning(
            "no replay digest for this model (digest: in the model spec, made by `aim digest "
            "train`): the tiers' replay memory falls back to a weaker digest, %s",
            weaker,
        )
        return None, {"kind": "fallback", "source": weaker}
    encoder = load_digest(path, device)
    shape = tuple(getattr(getattr(adapter, "input_spec", None), "shape", ()) or ())
    if shape and tuple(encoder.shape) != shape:
        raise ValueError(
            f"model.digest: {path} was trained for inputs {list(encoder.shape)}, "
            f"the model takes {list(shape)}"
        )
    fingerprint = encoder.fingerprint()
    log.info("replay digest: %s (%s, threshold %.3f)", path.name, fingerprint, encoder.threshold)
    return encoder, {
        "kind": "encoder",
        "source": path.name,
        "fingerprint": fingerprint,
        "threshold": f"{encoder.threshold:.3f}",
    }
